"""
The SFT mixture of METHOD.md 7: 24k OpenCodeInstruct (unit-tested answers that contain `def `)
+ 36k OpenMathInstruct-2 (`train_1M`), shuffled, written as jsonl rows {prompt, response, source}
that train_llm.py reads (it applies the chat template, puts labels on the response only and
drops rows over the length limit).

    python data/prepare_llm.py --out data/llm_mix.jsonl                       # from the hub
    python data/prepare_llm.py --code oci.parquet --math omi2.jsonl --out mix.jsonl   # local files

Local files use the hub's schemas: OpenCodeInstruct `input`, `output`, `average_test_score`;
OpenMathInstruct-2 `problem`, `generated_solution`.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
from common import UserError, atomic_write, run_main  # noqa: E402

CODE_HUB = ("nvidia/OpenCodeInstruct", None, "train")
MATH_HUB = ("nvidia/OpenMathInstruct-2", None, "train_1M")


class PrepError(UserError):
    """A bad SFT source file or a failed download: one line naming the file and problem."""


def read_rows(path):
    """Rows of a local .jsonl or .parquet file as dicts."""
    if not os.path.exists(path):
        raise PrepError(f"{path}: no such file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        yield from pq.read_table(path).to_pylist()
        return
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise PrepError(f"{path}:{n}: not JSON ({e.msg})") from None


def hub_rows(name, config, split):
    try:
        from datasets import load_dataset
    except ImportError:
        raise PrepError("the hub path needs `pip install datasets`; or pass --code/--math files") from None
    try:
        return iter(load_dataset(name, config, split=split, streaming=True))
    except Exception as e:
        raise PrepError(f"{name}: hub download failed ({type(e).__name__}); pass local files "
                        f"with --code and --math") from None


def code_examples(rows, where):
    """The authors' filter: every unit test passed, and the answer defines a function."""
    for n, r in enumerate(rows, 1):
        if "input" not in r or "output" not in r:
            raise PrepError(f"{where}:{n}: OpenCodeInstruct rows need `input` and `output`")
        score = r.get("average_test_score")
        if score is not None and float(score) < 1.0:
            continue
        if "def " not in r["output"]:
            continue
        yield dict(prompt=r["input"], response=r["output"], source="code")


def math_examples(rows, where):
    for n, r in enumerate(rows, 1):
        if "problem" not in r or "generated_solution" not in r:
            raise PrepError(f"{where}:{n}: OpenMathInstruct-2 rows need `problem` and "
                            f"`generated_solution`")
        yield dict(prompt=r["problem"], response=r["generated_solution"], source="math")


def take(it, n):
    out = []
    for x in it:
        if len(out) >= n:
            break
        out.append(x)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--code", default=None, help="local OpenCodeInstruct jsonl/parquet (default: hub)")
    p.add_argument("--math", default=None, help="local OpenMathInstruct-2 jsonl/parquet (default: hub)")
    p.add_argument("--n-code", type=int, default=24_000, help="OpenCodeInstruct rows kept")
    p.add_argument("--n-math", type=int, default=36_000, help="OpenMathInstruct-2 rows kept")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the mixture")
    p.add_argument("--out", default="data/llm_mix.jsonl", help="the jsonl train_llm.py reads")
    args = p.parse_args(argv)
    code_src = read_rows(args.code) if args.code else hub_rows(*CODE_HUB)
    math_src = read_rows(args.math) if args.math else hub_rows(*MATH_HUB)
    code = take(code_examples(code_src, args.code or CODE_HUB[0]), args.n_code)
    math = take(math_examples(math_src, args.math or MATH_HUB[0]), args.n_math)
    rows = code + math
    random.Random(args.seed).shuffle(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows ({len(code)} code, {len(math)} math) to {args.out}")
    return rows


if __name__ == "__main__":
    run_main(main)
