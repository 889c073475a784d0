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
is that pass's (or the prefill's) argmax, and a row stops once it has revealed a stop token
with nothing masked before it, mid-block (--no-first-from-cache, --no-stop-mid-block: not).
The relay: h resets at each block; each pass adds R(h) from the previous pass at [MASK]s.
NFE = denoising passes per example (prefill and cache-writing passes not counted).
"""
import argparse
import json

import torch

from common import resolve_device, run_main
from llm import LLMError, THRESHOLD, load_relay_lm, shift_states, user_turn
from relay import unmask_threshold

SUB_BLOCK = 8     # Fast-dLLM v2's sub-block: a 32-token block is decoded as four of these


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
             use_relay=True, first_from_cache=True, stop_mid_block=True, sub_block_cache=False,
             relay_at_revealed=False):
    """Decode a batch of token-id prompts (lists). Returns, per example, the generated ids (up
    to and excluding the stop token) and its NFE. Rows are independent: each row's passes are
    counted only while its block has a [MASK], so batched NFE equals NFE alone.

    Two choices the paper leaves open follow Fast-dLLM v2's official generation by default:
    first_from_cache: a block's first token is the argmax of the pass that wrote the previous
    block into the cache (or of the prefill), not a [MASK] to denoise; stop_mid_block: a row is
    finished as soon as it has revealed a stop token with nothing masked before it (the [MASK]s
    after it are never decoded). False, False: every response token is denoised and every
    block completed.

    sub_block_cache: Fast-dLLM v2's intra-block cache (approximate). A sub-block's first pass
    runs the whole block and keeps its K/V; its later passes run only the sub-block's 8 tokens
    against the prefix and those (stale) K/V of the rest of the block, so the relay state
    changes only where the pass ran: the sub-block, where the still-masked tokens are.

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
    done = torch.zeros(B, dtype=torch.bool, device=dev)
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
        col = torch.arange(bs, device=dev)[None]
        full_sub = torch.full((B,), -1, device=dev)   # sub-block of the last whole-block pass
        block_hidden = None
        while True:
            is_mask = z == lm.mask_id
            masked = is_mask.clone()                # still to decode
            if stop_mid_block:                      # [MASK]s after a revealed stop are moot
                stops = (z == lm.stop_id) & is_resp
                first_stop = torch.where(stops.any(1), stops.float().argmax(1), bs)
                masked &= col < first_stop[:, None]
            active = masked.any(1)
            if not active.any():
                break
            sub = (masked.float().argmax(1) // sub_block)             # current sub-block per row
            in_sub = col // sub_block == sub[:, None]
            where = is_resp if relay_at_revealed else is_mask
            emb = lm.embed(z, h if use_relay else None, where=where)
            if not sub_block_cache:
                hidden = _block_pass(lm, emb, ids, valid, pos, s, e, cache, write=False)
            elif (active & (sub != full_sub)).any():    # a sub-block starts: the whole block
                _crop_to(cache, s)
                hidden = lm.run(emb, block_mask(valid, s, bs, e, bs), pos[:, s:e], cache)
                full_sub = torch.where(active, sub, full_sub)
            else:                                       # its 8 tokens against the block's K/V
                hidden = _sub_block_pass(lm, emb, valid, pos, s, sub, sub_block, cache, block_hidden)
            block_hidden = hidden
            hs = shift_states(hidden, last if last is not None else hidden[:, :1] * 0, bs)
            conf, pred = lm.logits(hs).float().softmax(-1).max(-1)
            reveal = unmask_threshold(conf, masked & in_sub, tau, group=bs) & active[:, None]
            z = torch.where(reveal, pred, z)
            h = hs if h is None else torch.where(active[:, None, None], hs, h)
            nfe += active.long()
        z = torch.where(z == lm.mask_id, lm.pad_id, z)             # only after a stop
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
    return out, nfe.cpu().numpy()


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
    p.add_argument("--no-stop-mid-block", action="store_true",
                   help="finish the block a stop token was revealed in (official: stop there)")
    p.add_argument("--sub-block-cache", action="store_true",
                   help="Fast-dLLM v2's intra-block KV cache (approximate; off: exact)")


def decoding_kwargs(args):
    return dict(tau=args.tau, use_relay=not args.no_relay,
                first_from_cache=not args.no_first_from_cache,
                stop_mid_block=not args.no_stop_mid_block, sub_block_cache=args.sub_block_cache)


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
    gen, nfe = generate(lm, [ids], args.max_new_tokens, **decoding_kwargs(args))
    completion = tok.decode(gen[0], skip_special_tokens=True)
    r = dict(completion=completion, nfe=int(nfe[0]), tokens=len(gen[0]))
    print(json.dumps(r) if args.json else f"{completion}\n--- NFE {r['nfe']} for {r['tokens']} tokens")
    return r


if __name__ == "__main__":
    run_main(main)
