"""
Tasks with verifiable answers for the toy block-diffusion LM (Table 2 in miniature): a tiny
model learns them on a CPU, and exact match says whether decoding got every token right. In
each, an answer token depends on others, so committing many tokens in one pass is risky:
- add: the sum of two 4-9 digit numbers (carries run right to left, the text left to right);
- sort: 6-16 numbers below 100 in ascending order (an answer can span two 32-token blocks);
- reverse: 8-20 letters backwards.
Rows are {prompt, response, task, answer} as train_llm.py reads them; the split of a prompt is
fixed by a hash of its text (about 80 / 10 / 10 % train / val / test), so the splits are
disjoint whatever the sizes and seeds.

    python data/toy_tasks.py --out data/toy        # train.jsonl, val.jsonl, test.jsonl
"""
import argparse
import hashlib
import json
import os
import random
import string
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
from common import UsageError, atomic_write, run_main  # noqa: E402

TASKS = ("add", "sort", "reverse")
SPLITS = ("train", "val", "test")


def make(task, rng):
    """(prompt, answer) of one random instance."""
    if task == "add":
        a, b = (rng.randrange(10 ** (d - 1), 10 ** d) for d in (rng.randint(4, 9), rng.randint(4, 9)))
        return f"Add: {a} + {b}", str(a + b)
    if task == "sort":
        xs = [rng.randrange(100) for _ in range(rng.randint(6, 16))]
        return f"Sort: {' '.join(map(str, xs))}", " ".join(map(str, sorted(xs)))
    if task == "reverse":
        s = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(8, 20)))
        return f"Reverse: {s}", s[::-1]
    raise UsageError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")


def split_of(prompt):
    """train / val / test by the first byte of the prompt's SHA-256: fixed, disjoint."""
    b = hashlib.sha256(prompt.encode()).digest()[0]
    return "test" if b < 26 else "val" if b < 52 else "train"


def generate(split, n_per_task, seed=0, tasks=TASKS):
    """n_per_task distinct rows of each task that fall in `split`, drawn with `seed`."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    rows = []
    for t in tasks:
        rng, seen = random.Random(f"{seed}/{t}"), set()
        while len(seen) < n_per_task:
            prompt, answer = make(t, rng)
            if prompt not in seen and split_of(prompt) == split:
                seen.add(prompt)
                rows.append(dict(prompt=prompt, response=answer, task=t, answer=answer))
    random.Random(seed).shuffle(rows)
    return rows


def exact_match(completion, answer):
    """The decoded answer, surrounding whitespace aside, is the answer."""
    return completion.strip() == answer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
    p.add_argument("--n-train", type=int, default=20000, help="training rows per task")
    p.add_argument("--n-eval", type=int, default=200, help="validation and test rows per task")
    p.add_argument("--seed", type=int, default=0, help="draws the instances")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for split, n in (("train", args.n_train), ("val", args.n_eval), ("test", args.n_eval)):
        rows = generate(split, n, args.seed)
        path = os.path.join(args.out, f"{split}.jsonl")
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    run_main(main)
