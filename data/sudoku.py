"""
Sudoku boards without a network: an exact solver, a puzzle generator with cached splits,
a validating Sudoku-Extreme CSV reader (local path or the Hugging Face hub), the symmetry
augmentation of METHOD.md 6 and the deduction-only cohort labels.

Boards are numpy uint8 arrays of shape (N, 81), row-major, digits 1-9 and 0 for a blank.
The model's token ids (digit - 1, MASK_ID for a blank) are made in train_sudoku.py / sample.py.
"""
import csv
import os
import random
from multiprocessing import Pool

import numpy as np

from common import UserError

CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")
HF_REPO = "sapientinc/sudoku-extreme"
ALL = 0x1FF  # bitmask of the 9 digits
N_CELLS = 81

ROW = [i // 9 for i in range(N_CELLS)]
COL = [i % 9 for i in range(N_CELLS)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(N_CELLS)]
UNITS = ([[r * 9 + c for c in range(9)] for r in range(9)] +
         [[r * 9 + c for r in range(9)] for c in range(9)] +
         [[i for i in range(N_CELLS) if BOX[i] == b] for b in range(9)])


# the authors' Sudoku-Extreme test split: the first 2,000 rows of test.csv in file order
EXTREME_TEST_ROWS = 2000
# the generated data set every script uses unless told otherwise: split sizes, clue range, seed
BUILTIN = dict(n_train=6000, n_val=500, n_test=1000, clues="30-40", seed=0)


class DataError(UserError):
    """Bad Sudoku input: the message names the file, the line and the reason (one line)."""


# -----------------------------------------------------------------------------
# exact solver: depth-first search, most-constrained cell first, bitmask candidates

def _search(cells, rows, cols, boxes, limit, out, rng):
    best, best_cands, best_n = -1, 0, 10
    for i in range(N_CELLS):
        if cells[i] == 0:
            cands = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            n = bin(cands).count("1")
            if n < best_n:
                best, best_cands, best_n = i, cands, n
                if n <= 1:
                    break
    if best < 0:  # no blank left: one solution
        if not out:
            out.append(list(cells))
        return 1
    if best_n == 0:
        return 0
    digits = [d for d in range(1, 10) if best_cands >> (d - 1) & 1]
    if rng is not None:
        rng.shuffle(digits)
    r, c, b = ROW[best], COL[best], BOX[best]
    found = 0
    for d in digits:
        bit = 1 << (d - 1)
        cells[best] = d
        rows[r] |= bit; cols[c] |= bit; boxes[b] |= bit
        found += _search(cells, rows, cols, boxes, limit - found, out, rng)
        rows[r] &= ~bit; cols[c] &= ~bit; boxes[b] &= ~bit
        cells[best] = 0
        if found >= limit:
            break
    return found


def solve(board, limit=2, rng=None):
    """Count solutions of `board` (81 digits, 0 = blank) up to `limit`.
    Returns (count, first solution as a list or None). Clues that clash give (0, None)."""
    cells = [int(v) for v in board]
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, d in enumerate(cells):
        if d:
            bit = 1 << (d - 1)
            if (rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]]) & bit:
                return 0, None
            rows[ROW[i]] |= bit; cols[COL[i]] |= bit; boxes[BOX[i]] |= bit
    out = []
    n = _search(cells, rows, cols, boxes, limit, out, rng)
    return n, (out[0] if out else None)


def solvable_by_singles(board):
    """True if naked and hidden singles alone fill the board legally (no search, no advanced
    strategy). One placement at a time, candidates recomputed after each, so a digit is never
    placed twice in a unit; a cell with no candidate, or a digit with no cell left in a unit
    that lacks it, means the clues contradict each other: False."""
    cells = [int(v) for v in board]
    while 0 in cells:
        cand = _candidates(cells)
        if any(cells[i] == 0 and cand[i] == 0 for i in range(N_CELLS)):
            return False
        naked = next((i for i in range(N_CELLS) if cells[i] == 0 and cand[i] & (cand[i] - 1) == 0),
                     None)
        if naked is not None:
            cells[naked] = cand[naked].bit_length()
            continue
        hidden = None
        for u in UNITS:   # a digit missing from a unit with exactly one cell that can take it
            present = {cells[j] for j in u}
            for d in range(1, 10):
                if d in present:
                    continue
                spots = [j for j in u if cells[j] == 0 and cand[j] >> (d - 1) & 1]
                if not spots:
                    return False
                if len(spots) == 1 and hidden is None:
                    hidden = (spots[0], d)
        if hidden is None:
            return False
        cells[hidden[0]] = hidden[1]
    return bool(legal(np.array(cells))[0])


def _candidates(cells):
    """Bitmask of the digits each blank cell can still take (0 for a filled cell)."""
    cand = [0] * N_CELLS
    for i in range(N_CELLS):
        if cells[i] == 0:
            used = 0
            for u in (UNITS[ROW[i]], UNITS[9 + COL[i]], UNITS[18 + BOX[i]]):
                for j in u:
                    if cells[j]:
                        used |= 1 << (cells[j] - 1)
            cand[i] = ALL & ~used
    return cand


def consistent(board):
    """Per board: no row, column or box repeats a digit among the filled cells (blanks allowed;
    the partial-board version of `legal`). board: (N, 81) -> (N,) bool."""
    b = np.asarray(board).reshape(-1, N_CELLS)
    onehot = b[:, :, None] == np.arange(1, 10)[None, None, :]          # (N, 81, 9)
    ok = np.ones(len(b), dtype=bool)
    for u in UNITS:
        ok &= (onehot[:, u].sum(1) <= 1).all(1)
    return ok


def legal(board):
    """Per board: filled and no row, column or box repeats a digit (METHOD.md 5 'legal rate').
    board: (N, 81) array -> (N,) bool."""
    b = np.asarray(board).reshape(-1, N_CELLS)
    ok = (b >= 1).all(1) & (b <= 9).all(1)
    for u in UNITS:
        vals = np.sort(b[:, u], axis=1)
        ok &= (vals == np.arange(1, 10)).all(1)
    return ok


# -----------------------------------------------------------------------------
# generator: random full grid, then remove clues while the solution stays unique

def generate_puzzle(rng, clues, singles=None):
    """One puzzle with exactly `clues` clues and a unique solution (checked by `solve`).
    singles=True/False asks for a puzzle that naked+hidden singles do / do not solve;
    None accepts either. Returns (puzzle, solution) as lists of 81 digits."""
    while True:
        _, grid = solve([0] * N_CELLS, limit=1, rng=rng)
        puzzle = list(grid)
        order = list(range(N_CELLS))
        rng.shuffle(order)
        n = N_CELLS
        for i in order:
            if n == clues:
                break
            d, puzzle[i] = puzzle[i], 0
            if solve(puzzle, limit=2)[0] == 1:
                n -= 1
            else:
                puzzle[i] = d
        if n != clues:  # got stuck above the target (rare for clues >= 26): start again
            continue
        if singles is not None and solvable_by_singles(puzzle) != singles:
            continue
        return puzzle, grid


def _generate_chunk(job):
    seed, count, clue_range, singles = job
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        clues = rng.randint(clue_range[0], clue_range[1])
        out.append(generate_puzzle(rng, clues, singles))
    return out


def parse_clues(spec):
    """'34' -> (34, 34); '30-40' -> (30, 40)."""
    lo, _, hi = str(spec).partition("-")
    lo, hi = int(lo), int(hi or lo)
    if not 17 <= lo <= hi <= 80:
        raise DataError(f"--clues {spec}: need 17 <= min <= max <= 80")
    return lo, hi


def builtin_splits(n_train, n_val, n_test, clues, singles=None, seed=0, workers=None,
                   verbose=True):
    """Generated train/val/test splits, disjoint (no puzzle string in two splits), cached on disk
    under data/cache/ keyed by every argument, so a given seed always gives the same puzzles.
    Returns {'train': (puzzles, solutions), 'val': ..., 'test': ...} of uint8 (N, 81) arrays."""
    lo, hi = parse_clues(clues)
    key = f"builtin_tr{n_train}_va{n_val}_te{n_test}_c{lo}-{hi}_s{singles}_seed{seed}"
    path = os.path.join(CACHE_DIR, key + ".npz")
    if os.path.exists(path):
        z = np.load(path)
        return {s: (z[s + "_q"], z[s + "_a"]) for s in ("train", "val", "test")}
    total = n_train + n_val + n_test
    chunk = 64  # fixed chunking: the same puzzles whatever the number of workers
    jobs = [(seed * 1_000_003 + j, min(chunk, total + 16 - j * chunk), (lo, hi), singles)
            for j in range((total + 16 + chunk - 1) // chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if verbose:
        print(f"generating {total:,} unique-solution puzzles ({lo}-{hi} clues) with {workers} "
              f"worker(s); cached in {path}")
    if workers > 1:
        with Pool(workers) as pool:
            results = _imap_progress(pool.imap(_generate_chunk, jobs), len(jobs), verbose)
    else:
        results = _imap_progress(map(_generate_chunk, jobs), len(jobs), verbose)
    seen, qs, as_ = set(), [], []
    for q, a in (pa for r in results for pa in r):
        s = bytes(q)
        if s not in seen:  # dedup, so the splits are disjoint
            seen.add(s)
            qs.append(q)
            as_.append(a)
    if len(qs) < total:
        raise DataError(f"generator gave only {len(qs)} distinct puzzles, {total} needed")
    q = np.array(qs[:total], dtype=np.uint8)
    a = np.array(as_[:total], dtype=np.uint8)
    cuts = {"train": (0, n_train), "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, total)}
    out = {s: (q[i:j], a[i:j]) for s, (i, j) in cuts.items()}
    os.makedirs(CACHE_DIR, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **{f"{s}_{k}": v for s, (qq, aa) in out.items() for k, v in (("q", qq), ("a", aa))})
    os.replace(tmp, path)  # atomic: a half-written cache never exists under the real name
    return out


def _imap_progress(it, n, verbose):
    if not verbose:
        return list(it)
    from tqdm import tqdm
    return list(tqdm(it, total=n, desc="generating", unit="chunk"))


# -----------------------------------------------------------------------------
# Sudoku-Extreme CSV files: source,question,answer,rating

def read_csv(path, limit=None, skip=0):
    """Read and validate a Sudoku-Extreme CSV (rows `skip` .. `skip + limit` in file order).
    Blanks are '.' or '0'. An empty answer is filled by the exact solver (an error if the clues
    have no or several solutions). Every problem raises DataError naming the file, the line and
    the reason. Returns (puzzles, solutions) as uint8 (N, 81) arrays; the rating column, if
    any, is not read."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    qs, as_, lines = [], [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or "question" not in header or "answer" not in header:
            raise DataError(f"{path}:1: expected a header with 'question' and 'answer' columns "
                            f"(source,question,answer,rating), got {header}")
        iq, ia = header.index("question"), header.index("answer")
        n = 0
        for row in reader:
            if not row:
                continue
            n += 1
            if n <= skip:
                continue
            if limit is not None and len(qs) >= limit:
                break
            line = reader.line_num
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            q, a = row[iq].strip(), row[ia].strip()
            _check_chars(f"{path}:{line}", q, a)
            if a == "":  # no answer given: the clues must have exactly one solution
                a = _unique_solution(f"{path}:{line}", q)
            qs.append(q)
            as_.append(a)
            lines.append(line)
    if not qs:
        raise DataError(f"{path}: no puzzles")
    # all rows are 81 characters of known digits now: convert and check the rules vectorised
    q = np.frombuffer("".join(qs).replace(".", "0").encode(), np.uint8).reshape(-1, N_CELLS) - 48
    a = np.frombuffer("".join(as_).encode(), np.uint8).reshape(-1, N_CELLS) - 48
    clash = (q != 0) & (q != a)
    if clash.any():
        n, i = np.argwhere(clash)[0]
        raise DataError(f"{path}:{lines[n]}: answer contradicts its clues at row {i // 9 + 1}, "
                        f"column {i % 9 + 1} (clue {q[n, i]}, answer {a[n, i]})")
    ok = legal(a)
    if not ok.all():
        n = int(np.argmin(ok))
        raise DataError(f"{path}:{lines[n]}: answer breaks a Sudoku rule (a digit repeats in a "
                        f"row, column or box)")
    return q.copy(), a.copy()


def _check_chars(where, question, answer):
    if len(question) != N_CELLS:
        raise DataError(f"{where}: question has {len(question)} characters, expected {N_CELLS}")
    bad = sorted(set(question) - set(".0123456789"))
    if bad:
        raise DataError(f"{where}: question has foreign characters {''.join(bad)!r} "
                        f"(allowed: 1-9, '.' or '0' for a blank)")
    if answer == "":
        return
    if len(answer) != N_CELLS:
        raise DataError(f"{where}: answer has {len(answer)} characters, expected {N_CELLS}")
    bad = sorted(set(answer) - set("123456789"))
    if bad:
        raise DataError(f"{where}: answer has foreign characters {''.join(bad)!r} (allowed: 1-9)")


def _unique_solution(where, question):
    n, sol = solve([0 if ch in ".0" else int(ch) for ch in question], limit=2)
    if n == 0:
        raise DataError(f"{where}: the clues have no solution")
    if n > 1:
        raise DataError(f"{where}: the clues have more than one solution (not a proper puzzle)")
    return "".join(map(str, sol))


def download_extreme(split, cache_dir=None):
    """Path of Sudoku-Extreme's `split`.csv ('train' or 'test'), fetched from the Hugging Face
    hub into its cache on first use (needs network access; a local CSV path works offline)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError("reading Sudoku-Extreme from the hub needs `pip install huggingface_hub`;"
                        " or pass a local CSV path") from None
    try:
        return hf_hub_download(HF_REPO, f"{split}.csv", repo_type="dataset", cache_dir=cache_dir)
    except Exception as e:  # offline, rate-limited, ...: one line, and the way out
        raise DataError(f"hf://{HF_REPO}/{split}.csv: download failed ({type(e).__name__}); "
                        f"pass a local CSV path with --data instead") from None


def load_boards(spec, split, limit=None, **builtin_kwargs):
    """One entry point for every --data value. 'builtin': the generated split (builtin_kwargs go
    to builtin_splits, BUILTIN fills what they leave out); 'extreme': Sudoku-Extreme from the hub, where 'test' is the first rows of
    test.csv in file order (EXTREME_TEST_ROWS, the authors' 2,000, METHOD.md 6) and 'val' as
    many rows after them; any other value: a local CSV path, used whole for every split.
    Returns (puzzles, solutions) as uint8 (N, 81) arrays."""
    if spec == "builtin":
        q, a = builtin_splits(**{**BUILTIN, **builtin_kwargs})[split]
        return (q[:limit], a[:limit]) if limit else (q, a)
    if spec == "extreme":
        path = download_extreme("train" if split == "train" else "test")
        skip = EXTREME_TEST_ROWS if split == "val" else 0
        limit = limit or (EXTREME_TEST_ROWS if split != "train" else None)
    else:
        path, skip = spec, 0
    return read_csv(path, limit=limit, skip=skip)


def add_hints(puzzles, solutions, n_clues, seed=0):
    """Hinted variants of hard puzzles: reveal solution digits at random blank cells until each
    puzzle has n_clues clues (a puzzle that has as many already is kept). The solution stays the
    same and unique. Seeded, so a file and n_clues always give the same boards."""
    rng = np.random.default_rng(seed)
    q = np.array(puzzles, copy=True)
    for i in range(len(q)):
        blanks = np.flatnonzero(q[i] == 0)
        need = n_clues - (N_CELLS - len(blanks))
        if need > 0:
            pick = rng.choice(blanks, size=need, replace=False)
            q[i, pick] = solutions[i, pick]
    return q


# -----------------------------------------------------------------------------
# symmetry augmentation (METHOD.md 6): the same random symmetry on puzzle and solution

def random_symmetry(rng):
    """A cell permutation (81,) and a digit relabelling (10,) drawn with a numpy Generator.
    Transpose, permute bands, stacks, rows inside a band and columns inside a stack."""
    bands = rng.permutation(3)
    rows = np.concatenate([b * 3 + rng.permutation(3) for b in bands])
    stacks = rng.permutation(3)
    cols = np.concatenate([s * 3 + rng.permutation(3) for s in stacks])
    perm = (rows[:, None] * 9 + cols[None, :])
    if rng.random() < 0.5:
        perm = perm.T
    relabel = np.concatenate([[0], 1 + rng.permutation(9)])  # blank stays blank
    return perm.reshape(N_CELLS), relabel


def augment(puzzles, solutions, rng):
    """Apply one independent random symmetry per board. (N, 81) uint8 in, (N, 81) out."""
    q, a = np.empty_like(puzzles), np.empty_like(solutions)
    for n in range(len(puzzles)):
        perm, relabel = random_symmetry(rng)
        q[n] = relabel[puzzles[n][perm]]
        a[n] = relabel[solutions[n][perm]]
    return q, a


# -----------------------------------------------------------------------------
# cohorts (METHOD.md 6): what a human-style solver needs for each puzzle

ADVANCED = {"naked_pairs", "hidden_pairs", "naked_triples", "hidden_triples", "naked_quads",
            "hidden_quads", "x_wings", "swordfish"}


def cohort_labels(puzzles):
    """{'no_brute_force': (N,) bool, 'deduction_only': (N,) bool} from the `sudoku-solver-tim`
    package (optional); None if it is not installed. deduction_only = solved without
    "Brute Force" and with at least one Advanced or Master strategy."""
    try:
        from sudoku_solver_tim import Puzzle
        from sudoku_solver_tim.strategies import STRATEGIES
    except ImportError:
        return None
    import logging
    before = logging.root.manager.disable
    logging.disable(logging.INFO)  # the package logs every step at INFO; restored below
    try:
        return _cohorts(puzzles, Puzzle, STRATEGIES)
    finally:
        logging.disable(before)


def _cohorts(puzzles, Puzzle, STRATEGIES):
    nbf, ded = [], []
    for p in puzzles:
        grid = [[int(p[r * 9 + c]) for c in range(9)] for r in range(9)]
        puzzle, used = Puzzle(grid), set()
        try:
            while not puzzle.is_solved():  # Puzzle.solve's loop, recording what made progress
                for strategy in STRATEGIES:
                    if strategy(puzzle):
                        used.add(strategy.__name__)
                        break
                else:
                    break
            solved = puzzle.is_solved()
        except Exception:  # the package raises on a contradiction it reaches by itself
            solved = False
        no_bf = solved and "brute_force" not in used
        nbf.append(no_bf)
        ded.append(no_bf and bool(used & ADVANCED))
    return {"no_brute_force": np.array(nbf), "deduction_only": np.array(ded)}


def to_string(board):
    return "".join(str(int(d)) if d else "." for d in board)
