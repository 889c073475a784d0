"""
Block-diffusion decoding of Fast-dLLM v2 with a KV cache and the relay (METHOD.md section 7).
Benchmarks (HumanEval/MBPP pass@1 with NFE) are eval_llm.py; decoding speed is bench.py.

    python sample_llm.py --model R --prompt "Write a function that adds two numbers."

Decoding: the prompt's whole 32-blocks are prefilled into the KV cache; each next block starts
as the prompt's tail (first block only) followed by [MASK]s and is decoded as four 8-token
sub-blocks in order. A pass runs the whole block against the cache without writing to it and
reveals, in the current sub-block, masked tokens with confidence > tau plus its single most
confident one (relay.unmask_threshold). A full block gets one more pass that writes its K/V.
As in Fast-dLLM v2's official generation (where the paper is silent): a block's first token
is that pass's (or the prefill's) argmax (--no-first-from-cache: not), and the block a stop
token is revealed in is completed. The relay: h resets at each block; each pass adds R(h)
from the previous pass at [MASK]s.
NFE, two counts (METHOD.md 7): ours = denoising passes until the answer is final (the stop
revealed with nothing masked before it); official = passes until the stop's block is complete,
within the official decoder's block budget. Prefill and cache-writing passes count in neither.
"""
import argparse
import json

import torch

from common import resolve_device, run_main
from llm import LLMError, SUB_BLOCK, THRESHOLD, load_relay_lm, shift_states, user_turn
from relay import unmask_threshold



# -----------------------------------------------------------------------------
# the decoder

def block_mask(valid, q_start, q_len, k_len, block_size):
    """(B, 1, q_len, k_len) bool over columns: a query in column c attends to valid key columns
    whose block is <= c's block (block-causal, bidirectional inside a block; the cache holds
    only earlier blocks). Every column may attend to itself, so pad rows stay finite."""
    q = torch.arange(q_start, q_start + q_len, device=valid.device)
    k = torch.arange(k_len, device=valid.device)
    allowed = (k[None, :] // block_size) <= (q[:, None] // block_size)       # (q, k)
    m = allowed[None] & valid[:, None, :k_len]
    m |= (k[None, :] == q[:, None])[None]
    return m[:, None]


@torch.no_grad()
def generate(lm, prompts, max_new_tokens=512, tau=THRESHOLD, sub_block=SUB_BLOCK, use_cache=True,
             use_relay=True, first_from_cache=True, sub_block_cache=False,
             relay_at_revealed=False):
    """Decode a batch of token-id prompts (lists). Returns, per example, the generated ids (up
    to and excluding the stop token) and its NFE counted two ways (numpy arrays):
      nfe: ours, the denoising passes until the answer is final, i.e. until the row has
        revealed a stop token with nothing masked before it (the [MASK]s after it are moot),
        or its max_new_tokens are covered (whole blocks, the last one cut);
      nfe_official: Fast-dLLM v2's evaluation decoder (batch_sample): passes until the stop
        token's block is complete, over at most max_new_tokens // 32 blocks (the first holds
        the prompt's tail, so its budget is max_new_tokens - 31 to max_new_tokens tokens).
    As both official decoders (the model's generate and batch_sample), a pass may reveal any
    [MASK] of the current sub-block, those after a revealed stop too, and the answer is final
    once nothing is masked before the stop; the stop's block is then completed, as batch_sample
    does, so both counts come from one decode. Rows are independent: each row's passes are
    counted only while it has a [MASK], and every choice is made per row, so batched equals
    alone.

    first_from_cache (the official generation's choice, where the paper is silent): a block's
    first token is the argmax of the pass that wrote the previous block into the cache (or of
    the prefill), not a [MASK] to denoise.

    sub_block_cache: Fast-dLLM v2's intra-block cache (approximate), with its rule: a row runs
    the whole block on the block's first pass and on every pass while its current sub-block's
    first token is still [MASK], keeping the block's K/V; its other passes run only the
    sub-block's 8 tokens against the prefix and those (stale) K/V, so the relay state changes
    only where the pass ran: the sub-block, where the still-masked tokens are.

    relay_at_revealed: an ablation of the paper's rule (Section 5) that R(h) is added at
    still-masked positions only: add it at every response position of the block, revealed
    tokens too, so their inputs change from pass to pass (and cached K/V of them go stale)."""
    if sub_block_cache and not use_cache:
        raise LLMError("sub_block_cache needs the KV cache (use_cache=True)")
    bs, dev = lm.block_size, next(lm.parameters()).device
    B = len(prompts)
    whole = [len(p) // bs * bs for p in prompts]                     # prefilled per row
    C0 = max(whole)                                                   # first decoded column
    pad = [C0 - w for w in whole]                                     # a multiple of bs
    n_blocks = -(-(max(len(p) - w for p, w in zip(prompts, whole)) + max_new_tokens) // bs)
    official_blocks = max_new_tokens // bs                            # batch_sample's budget
    total = C0 + n_blocks * bs
    ids = torch.full((B, total), lm.pad_id, dtype=torch.long, device=dev)
    valid = torch.zeros(B, total, dtype=torch.bool, device=dev)       # real (non-pad) columns
    for b, p in enumerate(prompts):
        ids[b, pad[b]:pad[b] + len(p)] = torch.tensor(p, device=dev)
        valid[b, pad[b]:] = True
    pos = (torch.arange(total, device=dev)[None] - torch.tensor(pad, device=dev)[:, None]).clamp(min=0)
    prompt_end = torch.tensor([pad[b] + len(p) for b, p in enumerate(prompts)], device=dev)

    cache = _new_cache(lm) if use_cache else None
    if C0 and use_cache:                                              # prefill whole blocks
        hidden = lm.run(lm.embed(ids[:, :C0]), block_mask(valid, 0, C0, C0, bs), pos[:, :C0], cache)
        last = hidden[:, -1:]                                            # predicts column C0
    else:
        last = None
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    nfe_official = torch.zeros(B, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    rows = torch.arange(B, device=dev)
    col = torch.arange(bs, device=dev)[None]
    for blk in range(n_blocks):
        s, e = C0 + blk * bs, C0 + (blk + 1) * bs
        cols = torch.arange(s, e, device=dev)
        is_resp = cols[None] >= prompt_end[:, None]                   # (B, bs) response slots
        z = torch.where(is_resp & ~done[:, None], lm.mask_id, ids[:, s:e])
        h = None                                                      # h resets at each block
        if not use_cache and s > 0:                                   # the uncached reference
            last = _prefix_last_hidden(lm, ids, valid, pos, s)
        if first_from_cache and last is not None:   # the shifted head already predicts column s
            first = lm.logits(last[:, 0]).argmax(-1)
            z[:, 0] = torch.where(z[:, 0] == lm.mask_id, first, z[:, 0])
        block_hidden = None
        while True:
            is_mask = z == lm.mask_id
            active = is_mask.any(1)                 # the block is decoded to the end
            if not active.any():
                break
            stops = (z == lm.stop_id) & is_resp     # ours stops counting at the first stop
            first_stop = torch.where(stops.any(1), stops.float().argmax(1), bs)
            pending = (is_mask & (col < first_stop[:, None])).any(1)
            sub = is_mask.float().argmax(1) // sub_block                  # current sub-block per row
            where = is_resp if relay_at_revealed else is_mask
            emb = lm.embed(z, h if use_relay else None, where=where)
            if not sub_block_cache:
                hidden = _block_pass(lm, emb, ids, valid, pos, s, e, cache, write=False)
            else:   # the official rule, per row: the whole block while the sub-block's first
                    # token is [MASK] (and on the block's first pass), else the sub-block alone
                run_whole = (z[rows, sub * sub_block] == lm.mask_id) | (block_hidden is None)
                hidden = _sub_block_cache_pass(lm, emb, valid, pos, s, sub, sub_block, cache,
                                               block_hidden, run_whole, active)
            block_hidden = hidden
            hs = shift_states(hidden, last if last is not None else hidden[:, :1] * 0, bs)
            conf, pred = lm.logits(hs).float().softmax(-1).max(-1)
            # the current sub-block only (the earliest with a [MASK]): its confident tokens and best
            reveal = unmask_threshold(conf, is_mask, tau, group=bs, sub_group=sub_block) & active[:, None]
            z = torch.where(reveal, pred, z)
            h = hs if h is None else torch.where(active[:, None, None], hs, h)
            nfe += pending.long()
            nfe_official += (active & (blk < official_blocks)).long()
        ids[:, s:e] = z
        hit_stop = ((z == lm.stop_id) & is_resp).any(1)
        if use_cache:                                                 # write the finished block
            _crop_to(cache, s)
            hidden = _block_pass(lm, lm.embed(z), ids, valid, pos, s, e, cache, write=True)
            last = hidden[:, -1:]
        done |= hit_stop | (e - prompt_end >= max_new_tokens)        # per-row budget
        if done.all():
            break
    out = []
    for b in range(B):
        gen = ids[b, prompt_end[b]:].tolist()
        if lm.stop_id in gen:
            gen = gen[:gen.index(lm.stop_id)]
        out.append(gen[:max_new_tokens])
    return out, nfe.cpu().numpy(), nfe_official.cpu().numpy()


def _new_cache(lm):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=lm.qwen.config)
    except TypeError:
        return DynamicCache()


def _block_pass(lm, emb, ids, valid, pos, s, e, cache, write):
    """The block's columns s..e against the cache (or, uncached, with the whole prefix recomputed).
    write=False leaves the cache as it was (the appended K/V are cropped off again)."""
    bs = lm.block_size
    if cache is None:
        prefix = lm.embed(ids[:, :s])
        full = torch.cat([prefix, emb], 1)
        hidden = lm.run(full, block_mask(valid, 0, e, e, bs), pos[:, :e])
        return hidden[:, s:e]
    hidden = lm.run(emb, block_mask(valid, s, e - s, e, bs), pos[:, s:e], cache)
    if not write:
        _crop_to(cache, s)
    return hidden


def _crop_to(cache, n):
    """Keep the first n cached positions (negative crop: drop that many, in every version)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


def _sub_block_pass(lm, emb, valid, pos, s, sub, sub_block, cache, block_hidden):
    """The block's hidden states when only each row's current sub-block is recomputed: its
    tokens attend to the prefix, to the cached K/V of the block's other columns from the
    sub-block's first pass, and to each other; the other columns keep that pass's states.
    The cache holds prefix + block (s + bs); the 8 fresh entries are dropped again."""
    bs = lm.block_size
    B = emb.shape[0]
    rows = torch.arange(B, device=emb.device)[:, None]
    cols = sub[:, None] * sub_block + torch.arange(sub_block, device=emb.device)[None]   # (B, 8)
    stale = (torch.arange(bs, device=emb.device)[None] // sub_block) != sub[:, None]     # (B, bs)
    mask = torch.cat([valid[:, None, :s].expand(B, sub_block, s),
                      stale[:, None].expand(B, sub_block, bs),
                      torch.ones(B, sub_block, sub_block, dtype=torch.bool, device=emb.device)], -1)
    fresh = lm.run(emb[rows, cols], mask[:, None], pos[:, s:s + bs][rows, cols], cache)
    _crop_to(cache, s + bs)
    hidden = block_hidden.clone()
    hidden[rows, cols] = fresh
    return hidden


def _sub_block_cache_pass(lm, emb, valid, pos, s, sub, sub_block, cache, block_hidden, whole,
                          active):
    """One pass under the intra-block cache: rows in `whole` run the whole block (and keep its
    K/V for their later sub-block passes), the other active rows only their current sub-block.
    A batch that mixes the two runs both and keeps, per row, its own states and its own block
    K/V, so every row decodes as it would alone (inactive rows: either, unused)."""
    bs = lm.block_size
    e = s + bs
    need_whole, need_sub = (whole & active).any(), (~whole & active).any()
    if need_sub:
        part = _sub_block_pass(lm, emb, valid, pos, s, sub, sub_block, cache, block_hidden)
        if not need_whole:
            return part
        kept = [(layer.keys[:, :, s:e].clone(), layer.values[:, :, s:e].clone())
                for layer in cache.layers]
    _crop_to(cache, s)
    full = lm.run(emb, block_mask(valid, s, bs, e, bs), pos[:, s:e], cache)
    if not need_sub:
        return full
    stay = ~whole                  # these rows keep the K/V of their own last whole-block pass
    for layer, (k, v) in zip(cache.layers, kept):
        layer.keys[stay, :, s:e] = k[stay]
        layer.values[stay, :, s:e] = v[stay]
    return torch.where(whole[:, None, None], full, part)


def _prefix_last_hidden(lm, ids, valid, pos, s):
    hidden = lm.run(lm.embed(ids[:, :s]), block_mask(valid, 0, s, s, lm.block_size), pos[:, :s])
    return hidden[:, -1:]


# -----------------------------------------------------------------------------
# the command line: answer one prompt

def add_decoding_flags(p):
    p.add_argument("--tau", type=float, default=THRESHOLD,
                   help=f"reveal threshold (the paper's {THRESHOLD}; Fast-dLLM v2's eval uses 0.9)")
    p.add_argument("--no-relay", action="store_true", help="decode without carrying h")
    p.add_argument("--no-first-from-cache", action="store_true",
                   help="denoise each block's first token too (official: the argmax of the\n"
                        "pass that cached the previous block)")
    p.add_argument("--sub-block-cache", action="store_true",
                   help="Fast-dLLM v2's intra-block KV cache (approximate; off: exact)")


def decoding_kwargs(args):
    return dict(tau=args.tau, use_relay=not args.no_relay,
                first_from_cache=not args.no_first_from_cache, sub_block_cache=args.sub_block_cache)


def encode_prompt(tok, text, max_context):
    """Token ids of `text`; a prompt that leaves no room for the new tokens is an error."""
    ids = tok(text, add_special_tokens=False).input_ids
    if len(ids) > max_context:
        raise LLMError(f"prompt of {len(ids)} tokens is longer than the model's context "
                       f"({max_context} tokens, max_new_tokens included)")
    return ids


def load_for_decoding(model, device):
    """A checkpoint for decoding: bf16 on a GPU, fp32 on a CPU, eval mode."""
    device = resolve_device(device)
    lm, tok, _ = load_relay_lm(model, device=device,
                               dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return lm.eval(), tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (patched or not) or hub id")
    p.add_argument("--prompt", required=True, help="a user message to answer")
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens to generate at most")
    add_decoding_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    lm, tok = load_for_decoding(args.model, args.device)
    ids = encode_prompt(tok, user_turn(tok, args.prompt),
                        lm.qwen.config.max_position_embeddings - args.max_new_tokens)
    gen, nfe, nfe_official = generate(lm, [ids], args.max_new_tokens, **decoding_kwargs(args))
    completion = tok.decode(gen[0], skip_special_tokens=True)
    r = dict(completion=completion, nfe=int(nfe[0]), nfe_official=int(nfe_official[0]),
             tokens=len(gen[0]))
    print(json.dumps(r) if args.json else
          f"{completion}\n--- NFE {r['nfe']} (official count {r['nfe_official']}) for {r['tokens']} tokens")
    return r


if __name__ == "__main__":
    run_main(main)
