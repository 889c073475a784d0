"""
Tasks with verifiable answers for the toy block-diffusion LM (Table 2 in miniature): a tiny
model learns them on a CPU, and exact match says whether decoding got every token right:
- add: the sum of two 4-digit numbers, zero-padded to 5 digits (a carry runs right to left,
  the text left to right: a digit depends on the digits after it);
- prefix: the running sums mod 10 of 12 digits (each answer digit is the one before it plus
  one digit of the prompt: a chain through the whole answer, which crosses a 32-token block);
- rotate: 12 letters rotated left by 3 (a copy at fixed distances: the tokens of the answer
  are independent given the prompt, the control where committing many per pass is safe).
Each task has one fixed layout, so the characters an answer character needs sit at fixed
distances from it, which rotary positions express directly: with variable lengths (sorting
or reversing 4-14 items, adding 2-6 digit numbers) the 0.6M-parameter model of table2.py
solved none in 2,400 steps (results/toy_llm/README.md).
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

TASKS = ("add", "prefix", "rotate")
PREFIX_N, ROTATE_N, ROTATE_K = 12, 12, 3
SPLITS = ("train", "val", "test")


def make(task, rng):
    """(prompt, answer) of one random instance. Each task has one fixed layout (the same
    lengths in every instance), so the characters an answer character needs sit at fixed
    distances from it, which rotary positions express directly."""
    if task == "add":
        a, b = rng.randrange(1000, 10000), rng.randrange(1000, 10000)
        return f"Add: {a} + {b}", f"{a + b:05d}"
    if task == "prefix":
        xs = [rng.randrange(10) for _ in range(PREFIX_N)]
        sums = [sum(xs[:i + 1]) % 10 for i in range(PREFIX_N)]
        return f"Running sum mod 10: {' '.join(map(str, xs))}", " ".join(map(str, sums))
    if task == "rotate":
        s = "".join(rng.choice(string.ascii_lowercase) for _ in range(ROTATE_N))
        return f"Rotate by {ROTATE_K}: {s}", s[ROTATE_K:] + s[:ROTATE_K]
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
