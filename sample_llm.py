"""
Block-diffusion decoding of Fast-dLLM v2 with a KV cache and the relay (SPEC 7), and offline
HumanEval(+)/MBPP(+) pass@1 with NFE.

    python sample_llm.py --model R --prompt "Write a function that adds two numbers."
    python sample_llm.py --model R --eval humaneval --limit 3 --json
    python sample_llm.py --model R --bench            # cached vs recompute-the-prefix decoding

Decoding: the prompt's whole 32-blocks are prefilled into the KV cache; each next block starts
as the prompt's tail (first block only) followed by [MASK]s and is decoded as four 8-token
sub-blocks in order. A pass runs the whole block against the cache without writing to it and
reveals, in the current sub-block, masked tokens with confidence > tau plus its single most
confident one (relay.unmask_threshold). A full block gets one more pass that writes its K/V.
The relay: h resets at each block; each pass adds R(h) from the previous pass at [MASK]s.
NFE = denoising passes per example (prefill and cache-writing passes not counted).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from llm import LLMError, load_relay_lm, shift_states
from relay import unmask_threshold

SUB_BLOCK = 8
TAU = 0.85


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
def generate(lm, prompts, max_new_tokens=512, tau=TAU, sub_block=SUB_BLOCK, use_cache=True,
             use_relay=True):
    """Decode a batch of token-id prompts (lists). Returns, per example, the generated ids (up
    to and excluding the stop token) and its NFE. Rows are independent: each row's passes are
    counted only while its block has a [MASK], so batched NFE equals NFE alone."""
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
        hid = lm.run(lm.embed(ids[:, :C0]), block_mask(valid, 0, C0, C0, bs), pos[:, :C0], cache)
        last = hid[:, -1:]                                            # predicts column C0
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
        while True:
            masked = z == lm.mask_id
            active = masked.any(1)
            if not active.any():
                break
            sub = (masked.float().argmax(1) // sub_block)             # current sub-block per row
            in_sub = (torch.arange(bs, device=dev)[None] // sub_block) == sub[:, None]
            emb = lm.embed(z, h if use_relay else None, masked if use_relay else None)
            hid = _block_pass(lm, emb, ids, valid, pos, s, e, cache, write=False)
            hs = shift_states(hid, last if last is not None else hid[:, :1] * 0, bs)
            conf, pred = lm.logits(hs).float().softmax(-1).max(-1)
            reveal = unmask_threshold(conf, masked & in_sub, tau, group=bs) & active[:, None]
            z = torch.where(reveal, pred, z)
            h = hs if h is None else torch.where(active[:, None, None], hs, h)
            nfe += active.long()
        ids[:, s:e] = z
        hit_stop = ((z == lm.stop_id) & is_resp).any(1)
        if use_cache:                                                 # write the finished block
            hid = _block_pass(lm, lm.embed(z), ids, valid, pos, s, e, cache, write=True)
            last = hid[:, -1:]
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
        hid = lm.run(full, block_mask(valid, 0, e, e, bs), pos[:, :e])
        return hid[:, s:e]
    hid = lm.run(emb, block_mask(valid, s, e - s, e, bs), pos[:, s:e], cache)
    if not write:
        cache.crop(-(cache.get_seq_length() - s))   # negative: drop that many (all versions)
    return hid


def _prefix_last_hidden(lm, ids, valid, pos, s):
    hid = lm.run(lm.embed(ids[:, :s]), block_mask(valid, 0, s, s, lm.block_size), pos[:, :s])
    return hid[:, -1:]


# -----------------------------------------------------------------------------
# evaluation and the command line

def encode_prompt(tok, lm, text, max_context):
    ids = tok(text, add_special_tokens=False).input_ids
    if len(ids) > max_context:
        raise LLMError(f"prompt of {len(ids)} tokens is longer than the model's context "
                       f"({max_context} tokens, max_new_tokens included)")
    return ids


def run_eval(lm, tok, args):
    import code_eval as E
    problems = E.load_tasks(args.eval, args.data_dir, args.eval_file)[:args.limit]
    ctx = lm.qwen.config.max_position_embeddings - args.max_new_tokens
    prompts = [encode_prompt(tok, lm, E.chat_prompt(tok, p["prompt"]), ctx) for p in problems]
    t0 = time.time()
    completions, nfes, ntoks = [], [], []
    from tqdm import tqdm
    for s in tqdm(range(0, len(prompts), args.batch_size), desc=f"decoding {args.eval}",
                  disable=args.json):
        gen, nfe = generate(lm, prompts[s:s + args.batch_size], args.max_new_tokens, args.tau,
                            use_relay=not args.no_relay)
        completions += [tok.decode(g, skip_special_tokens=True) for g in gen]
        nfes += nfe.tolist()
        ntoks += [max(len(g), 1) for g in gen]
    decode_s = time.time() - t0
    codes = [E.extract_code(c) for c in completions]
    results = E.evaluate_solutions(problems, codes, workers=args.workers)
    plus = [r["plus"] for r in results if r["plus"] is not None]
    summary = dict(task=args.eval, model=args.model, n=len(problems),
                   pass1_base=100.0 * float(np.mean([r["base"] for r in results])),
                   pass1_plus=100.0 * float(np.mean(plus)) if plus else None,
                   nfe=float(np.mean(nfes)), nfe_per_token=float(np.mean(np.array(nfes) / ntoks)),
                   wall_s=time.time() - t0, decode_s=decode_s, tau=args.tau,
                   max_new_tokens=args.max_new_tokens)
    out = args.out or os.path.join(args.model if os.path.isdir(args.model) else ".",
                                   f"eval_{args.eval}.jsonl")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        for r, c, n in zip(results, completions, nfes):
            f.write(json.dumps(dict(r, nfe=n, completion=c)) + "\n")
    os.replace(tmp, out)
    summary["per_problem_file"] = out
    return summary


def bench(lm, tok, args):
    """Cached vs uncached (recompute the prefix every pass) decoding: same tokens, wall time."""
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures",
                           "llm_mix.jsonl")
    text = " ".join(json.loads(l)["response"] for l in open(fixture) if l.strip())
    ids = tok(text, add_special_tokens=False).input_ids
    prompt = (ids * (args.bench_prompt_tokens // len(ids) + 1))[:args.bench_prompt_tokens]
    times, outs = {}, {}
    for cached in (True, False):
        t = time.time()
        outs[cached], _ = generate(lm, [prompt], args.max_new_tokens, args.tau, use_cache=cached,
                                   use_relay=not args.no_relay)
        times[cached] = time.time() - t
    same = outs[True] == outs[False]
    r = dict(prompt_tokens=len(prompt), new_tokens=args.max_new_tokens, cached_s=times[True],
             uncached_s=times[False], speedup=times[False] / times[True], identical_tokens=same)
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (patched or not) or hub id")
    p.add_argument("--prompt", default=None, help="a user message to answer")
    p.add_argument("--eval", default=None, help="humaneval | humaneval_plus | mbpp | mbpp_plus")
    p.add_argument("--eval-file", default=None, help="the task's data file (overrides --data-dir)")
    p.add_argument("--data-dir", default=None, help="folder with HumanEvalPlus/MBPP files "
                   "(default: $RELAY_CODE_EVAL_DIR)")
    p.add_argument("--limit", type=int, default=None, help="first N problems")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--tau", type=float, default=TAU, help="reveal threshold")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxed test processes")
    p.add_argument("--no-relay", action="store_true", help="decode without carrying h")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", default=None, help="per-problem outcomes (jsonl)")
    p.add_argument("--bench", action="store_true", help="cached vs uncached decoding speed")
    p.add_argument("--bench-prompt-tokens", type=int, default=1024)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.eval is not None:
        import code_eval as E
        if args.eval not in E.TASKS:
            raise LLMError(f"unknown task {args.eval!r}: choose from {', '.join(E.TASKS)}")
    lm, tok, _ = load_relay_lm(args.model, device=device,
                               dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    lm.eval()
    if args.bench:
        r = bench(lm, tok, args)
        print(json.dumps(r) if args.json else
              f"prompt {r['prompt_tokens']} tokens, {r['new_tokens']} new: cached {r['cached_s']:.2f} s, "
              f"uncached {r['uncached_s']:.2f} s -> {r['speedup']:.1f}x, identical tokens: "
              f"{r['identical_tokens']}")
        return r
    if args.eval is not None:
        r = run_eval(lm, tok, args)
        if args.json:
            print(json.dumps(r))
        else:
            plus = f", plus {r['pass1_plus']:.1f}%" if r["pass1_plus"] is not None else ""
            print(f"{r['task']}: n {r['n']} | pass@1 base {r['pass1_base']:.1f}%{plus} | NFE "
                  f"{r['nfe']:.1f} ({r['nfe_per_token']:.3f}/token) | {r['wall_s']:.0f} s | "
                  f"{r['per_problem_file']}")
        return r
    if args.prompt is None:
        raise LLMError("give --prompt TEXT, --eval TASK or --bench")
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = encode_prompt(tok, lm, text, lm.qwen.config.max_position_embeddings - args.max_new_tokens)
    gen, nfe = generate(lm, [ids], args.max_new_tokens, args.tau, use_relay=not args.no_relay)
    completion = tok.decode(gen[0], skip_special_tokens=True)
    r = dict(completion=completion, nfe=int(nfe[0]), tokens=len(gen[0]))
    print(json.dumps(r) if args.json else f"{completion}\n--- NFE {r['nfe']} for {r['tokens']} tokens")
    return r


if __name__ == "__main__":
    from code_eval import EvalError
    try:
        main()
    except (LLMError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
