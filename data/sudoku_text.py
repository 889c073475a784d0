"""
Sudoku as text, for the block-diffusion LM (Table 2 in miniature): the prompt is a puzzle's 81
cells as digits, 0 for a blank, row by row; the answer is the solution's 81 digits (with the stop
token, three 32-token blocks in one-token-per-character models). The answer's digits depend on
each other through the rows, columns and boxes, the kind of task where committing several
tokens per pass is at stake, and the Sudoku half of this repository already shows the relay
helping on these puzzles.

The puzzles are data/sudoku.py's generated, disjoint, cached splits (unique solutions); the
training rows are `copies` random symmetries of each training puzzle (METHOD.md 6's
augmentation, seeded), the validation and test rows the puzzles as they are. Rows are
{prompt, response, task, answer} as train_llm.py and table2.py read them.

    python data/sudoku_text.py --out data/sudoku_text --clues 30-40 --copies 8
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
from common import UsageError, atomic_write, run_main  # noqa: E402
from data.sudoku import BUILTIN, N_CELLS, augment, builtin_splits, legal  # noqa: E402

TASK = "sudoku"


def to_text(board):
    """(81,) digits, 0 for a blank -> '530070000...' (81 characters)."""
    return "".join(str(int(d)) for d in board)


def from_text(text):
    """An answer string -> (81,) int array of digits, 0 where a character is not a digit 1-9;
    None if it is not exactly 81 characters long (a wrong-length answer is wrong everywhere)."""
    text = text.strip()
    if len(text) != N_CELLS:
        return None
    return np.array([int(c) if c in "123456789" else 0 for c in text])


def make_rows(puzzles, solutions):
    return [dict(prompt=to_text(q), response=to_text(a), task=TASK, answer=to_text(a))
            for q, a in zip(puzzles, solutions)]


def score(texts, rows):
    """Exact match, cell accuracy (the blank cells of the prompt that the answer gets right; a
    wrong-length answer gets none) and legal rate (a full board breaking no rule) of decoded
    answers against rows, as (N,) arrays: exact (bool), cell (float), legal (bool)."""
    exact, cell, ok = [], [], []
    for t, r in zip(texts, rows):
        want = np.array([int(c) for c in r["answer"]])
        blank = np.array([c == "0" for c in r["prompt"]])
        got = from_text(t)
        if got is None:
            exact.append(False), cell.append(0.0), ok.append(False)
            continue
        exact.append(bool((got == want).all()))
        cell.append(float((got[blank] == want[blank]).mean()))
        ok.append(bool(legal(got[None])[0]))
    return np.array(exact), np.array(cell), np.array(ok)


def write_splits(out, clues=BUILTIN["clues"], copies=8, n_train=BUILTIN["n_train"],
                 n_eval=BUILTIN["n_test"], seed=0, n_val=BUILTIN["n_val"], n_test=BUILTIN["n_test"]):
    """train.jsonl (each training puzzle in `copies` random symmetries), val.jsonl and
    test.jsonl (the first n_eval puzzles of the generated val and test splits; the split sizes
    default to the Sudoku half's, so these are the `cpu` preset's very puzzles)."""
    if copies < 1:
        raise UsageError(f"--copies {copies}: need at least 1")
    splits = builtin_splits(n_train, n_val, n_test, clues, seed=BUILTIN["seed"], verbose=False)
    rng = np.random.default_rng(seed)
    q, a = splits["train"]
    train = []
    for _ in range(copies):
        train += make_rows(*augment(q, a, rng))
    order = rng.permutation(len(train))
    files = {"train": [train[i] for i in order],
             "val": make_rows(*(x[:n_eval] for x in splits["val"])),
             "test": make_rows(*(x[:n_eval] for x in splits["test"]))}
    os.makedirs(out, exist_ok=True)
    for name, rows in files.items():
        atomic_write(os.path.join(out, f"{name}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    return {k: len(v) for k, v in files.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
    p.add_argument("--clues", default=BUILTIN["clues"], help="clue range of the generated puzzles")
    p.add_argument("--copies", type=int, default=8, help="random symmetries per training puzzle")
    p.add_argument("--n-train", type=int, default=BUILTIN["n_train"], help="training puzzles")
    p.add_argument("--n-eval", type=int, default=BUILTIN["n_test"],
                   help="validation and test puzzles (at most the generated splits' sizes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the symmetries and the order")
    args = p.parse_args(argv)
    n = write_splits(args.out, args.clues, args.copies, args.n_train, args.n_eval, args.seed)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v:,} rows" for k, v in n.items()))
    return n


if __name__ == "__main__":
    run_main(main)
