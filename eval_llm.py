"""
HumanEval(+) / MBPP(+) pass@1 and NFE of a block-diffusion checkpoint (METHOD.md section 7):
decode each problem's EvalPlus chat prompt with sample_llm.generate, then run the programs in
code_eval.py's sandbox.

    python eval_llm.py --model R --task humaneval --limit 3 --json
    python eval_llm.py --model R --task mbpp_plus --data-dir DIR      # DIR holds the MBPP+ file
"""
import argparse
import json
import os
import time

import numpy as np
from tqdm import tqdm

import code_eval
from common import atomic_write, run_main
from sample_llm import add_decoding_flags, decoding_kwargs, encode_prompt, generate, load_for_decoding


# the authors' evaluation length for Table 2 (their README: --max_new_tokens 2048, batch 32);
# their 512-token rerun of the released checkpoints counts fewer passes (Relay 79.3, not 88.3)
MAX_NEW_TOKENS = 2048


def evaluate_model(lm, tok, problems, max_new_tokens=MAX_NEW_TOKENS, batch_size=8, workers=2, progress=True,
                   sandbox="auto", unsafe=False, **decoding):
    """Decode every problem (decoding: sample_llm.generate's options), score it in the sandbox.
    Returns (per-problem rows, summary without file names)."""
    code_eval.choose_backend(sandbox, unsafe)      # refuse before decoding, not after
    ctx = lm.qwen.config.max_position_embeddings - max_new_tokens
    prompts = [encode_prompt(tok, code_eval.chat_prompt(tok, q["prompt"]), ctx) for q in problems]
    t0 = time.time()
    completions, nfes, nfes_official, n_tokens = [], [], [], []
    for s in tqdm(range(0, len(prompts), batch_size), desc="decoding", disable=not progress):
        gen, nfe, nfe_official = generate(lm, prompts[s:s + batch_size], max_new_tokens, **decoding)
        completions += [tok.decode(g, skip_special_tokens=True) for g in gen]
        nfes += nfe.tolist()
        nfes_official += nfe_official.tolist()
        n_tokens += [max(len(g), 1) for g in gen]
    decode_s = time.time() - t0
    results = code_eval.evaluate_solutions(problems, [code_eval.extract_code(c) for c in completions],
                                           workers=workers, backend=sandbox, unsafe=unsafe)
    plus = [r["plus"] for r in results if r["plus"] is not None]
    summary = dict(n=len(problems), pass1_base=100.0 * float(np.mean([r["base"] for r in results])),
                   pass1_plus=100.0 * float(np.mean(plus)) if plus else None,
                   nfe=float(np.mean(nfes)), nfe_official=float(np.mean(nfes_official)),
                   nfe_per_token=float(np.mean(np.array(nfes) / n_tokens)),
                   wall_s=time.time() - t0, decode_s=decode_s, max_new_tokens=max_new_tokens,
                   **decoding)
    rows = [dict(r, nfe=n, nfe_official=o, completion=c)
            for r, c, n, o in zip(results, completions, nfes, nfes_official)]
    return rows, summary


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (patched or not) or hub id")
    p.add_argument("--task", required=True, choices=code_eval.TASKS, help="the benchmark")
    p.add_argument("--eval-file", default=None, help="the task's data file (overrides --data-dir)")
    p.add_argument("--data-dir", default=None, help="folder with HumanEvalPlus/MBPP files "
                   "(default: $RELAY_CODE_EVAL_DIR)")
    p.add_argument("--limit", type=int, default=None, help="first N problems")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                   help=f"tokens per completion at most (default {MAX_NEW_TOKENS}, the authors' "
                        "Table 2 length;\n512 is their shorter rerun's)")
    add_decoding_flags(p)
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxed test processes")
    p.add_argument("--sandbox", default="auto", choices=("auto",) + code_eval.BACKENDS,
                   help="isolation of the programs (auto: bwrap if it works here, else unshare)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run the generated programs without isolation (only for code you trust)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--out", default=None,
                   help="per-problem outcomes, jsonl (default: <model>/eval_<task>.jsonl)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    problems = code_eval.load_tasks(args.task, args.data_dir, args.eval_file)[:args.limit]
    lm, tok = load_for_decoding(args.model, args.device)
    rows, summary = evaluate_model(lm, tok, problems, args.max_new_tokens, args.batch_size,
                                   args.workers, progress=not args.json, sandbox=args.sandbox,
                                   unsafe=args.unsafe_no_sandbox, **decoding_kwargs(args))
    out = args.out or os.path.join(args.model if os.path.isdir(args.model) else ".",
                                   f"eval_{args.task}.jsonl")
    atomic_write(out, "".join(json.dumps(r) + "\n" for r in rows))
    summary = dict(task=args.task, model=args.model, **summary, per_problem_file=out)
    if args.json:
        print(json.dumps(summary))
    else:
        plus = f", plus {summary['pass1_plus']:.1f}%" if summary["pass1_plus"] is not None else ""
        print(f"{args.task}: n {summary['n']} | pass@1 base {summary['pass1_base']:.1f}%{plus} | "
              f"NFE {summary['nfe']:.1f} ({summary['nfe_per_token']:.3f}/token; official count "
              f"{summary['nfe_official']:.1f}) | "
              f"{summary['wall_s']:.0f} s | {out}")
    return summary


if __name__ == "__main__":
    run_main(main)
