"""Data: the exact solver and generator, the CSV reader and its errors, augmentation, cohorts."""
import os
import random

import numpy as np
import pytest

from data import sudoku
from conftest import SHARED

SAMPLE_CSV = os.path.join(SHARED, "data", "sudoku_extreme_format_sample.csv")
TDOKU = os.path.join(SHARED, "data", "tdoku_test_puzzles.txt")


def brute_force_count(board, limit=10):
    """An independent solution counter: plain backtracking in cell order, sets for the rules."""
    b = list(board)

    def ok(i, d):
        r, c = divmod(i, 9)
        if any(b[r * 9 + k] == d for k in range(9)) or any(b[k * 9 + c] == d for k in range(9)):
            return False
        br, bc = 3 * (r // 3), 3 * (c // 3)
        return all(b[(br + x) * 9 + bc + y] != d for x in range(3) for y in range(3))

    def count(i):
        while i < 81 and b[i]:
            i += 1
        if i == 81:
            return 1
        n = 0
        for d in range(1, 10):
            if ok(i, d):
                b[i] = d
                n += count(i + 1)
                b[i] = 0
                if n >= limit:
                    break
        return n

    return count(0)


def test_generated_puzzles_are_unique_by_independent_count():
    rng = random.Random(123)
    for clues in (36, 40, 45):
        puzzle, grid = sudoku.generate_puzzle(rng, clues)
        assert sum(1 for d in puzzle if d) == clues
        assert brute_force_count(puzzle) == 1
        assert all(p in (0, g) for p, g in zip(puzzle, grid))
        assert sudoku.legal(np.array(grid))[0]


def test_solver_counts_match_tdoku_file():
    rows = [line.strip().split(":") for line in open(TDOKU) if line.strip()]
    assert len(rows) == 43
    for puzzle, n, *sol in rows:
        n = int(n)
        q = [0 if ch in ".0" else int(ch) for ch in puzzle]
        got, first = sudoku.solve(q, limit=2)
        assert got == min(n, 2), puzzle
        if n == 1:
            assert "".join(map(str, first)) == sol[0]


def singles_reference(board, hidden=True):
    """An independent singles solver on a (9, 9, 9) candidate array: every naked single (a cell
    with one candidate) and, if hidden, every hidden single (a digit with one place in a row,
    column or box) found in one state is placed at once; repeat until stuck. True if the board
    ends full and legal."""
    g = np.array(board, dtype=int).reshape(9, 9)
    while (g == 0).any():
        cand = np.ones((9, 9, 9), dtype=bool)                  # (row, col, digit-1)
        for r in range(9):
            for c in range(9):
                if g[r, c]:
                    d = g[r, c] - 1
                    cand[r, c, :] = False
                    cand[r, :, d] = cand[:, c, d] = False
                    cand[r // 3 * 3:r // 3 * 3 + 3, c // 3 * 3:c // 3 * 3 + 3, d] = False
        blank = g == 0
        if (blank & ~cand.any(2)).any():
            return False
        place = {}
        for r, c in zip(*np.nonzero(blank & (cand.sum(2) == 1))):
            place[(r, c)] = int(np.argmax(cand[r, c])) + 1
        if hidden:
            for d in range(9):
                for r in range(9):
                    if cand[r, :, d].sum() == 1:
                        place[(r, int(np.argmax(cand[r, :, d])))] = d + 1
                for c in range(9):
                    if cand[:, c, d].sum() == 1:
                        place[(int(np.argmax(cand[:, c, d])), c)] = d + 1
                for b in range(9):
                    box = cand[b // 3 * 3:b // 3 * 3 + 3, b % 3 * 3:b % 3 * 3 + 3, d]
                    if box.sum() == 1:
                        i = int(np.argmax(box))
                        place[(b // 3 * 3 + i // 3, b % 3 * 3 + i % 3)] = d + 1
        if not place:
            return False
        for (r, c), d in place.items():
            g[r, c] = d
    return bool(sudoku.legal(g.reshape(1, 81))[0])


def test_singles_agree_with_an_independent_solver():
    rng = random.Random(11)
    boards = [sudoku.generate_puzzle(rng, rng.randint(26, 30))[0] for _ in range(120)]
    ours = [sudoku.solvable_by_singles(b) for b in boards]
    assert ours == [singles_reference(b) for b in boards]
    assert 0 < sum(ours) < len(ours)                          # both kinds occur at 26-30 clues
    naked_only = [singles_reference(b, hidden=False) for b in boards]
    assert sum(ours) > sum(naked_only)                        # hidden singles do matter here


def test_singles_on_hand_made_boards():
    solution = [int(ch) for ch in GOOD_A]
    one_blank = list(solution)
    one_blank[40] = 0
    assert sudoku.solvable_by_singles(one_blank)
    assert not sudoku.solvable_by_singles([0] * 81)           # nothing is forced on an empty board
    clash = [0] * 81
    clash[0] = clash[1] = 5                                   # two 5s in the first row
    assert not sudoku.solvable_by_singles(clash)
    # a row missing only the digits 1 and 2, where column clues force where each goes
    row_puzzle = list(solution)
    for i in range(9):
        if row_puzzle[i] in (1, 2):
            row_puzzle[i] = 0
    assert sudoku.solvable_by_singles(row_puzzle) and singles_reference(row_puzzle)


def test_singles_flag():
    rng = random.Random(5)
    easy, _ = sudoku.generate_puzzle(rng, 36, singles=True)
    hard, _ = sudoku.generate_puzzle(rng, 26, singles=False)
    assert sudoku.solvable_by_singles(easy) and not sudoku.solvable_by_singles(hard)


def test_builtin_splits_cached_disjoint_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(sudoku, "CACHE_DIR", str(tmp_path))
    kw = dict(n_train=40, n_val=10, n_test=10, clues="34-38", seed=7, workers=1, verbose=False)
    a = sudoku.builtin_splits(**kw)
    keys = {s: {bytes(q) for q in a[s][0]} for s in a}
    assert [len(keys[s]) for s in ("train", "val", "test")] == [40, 10, 10]
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"])
    assert not (keys["val"] & keys["test"])
    clue_counts = (a["train"][0] > 0).sum(1)
    assert clue_counts.min() >= 34 and clue_counts.max() <= 38
    assert len(list(tmp_path.glob("*.npz"))) == 1
    b = sudoku.builtin_splits(**kw)     # from the cache
    assert all(np.array_equal(a[s][0], b[s][0]) for s in a)
    c = sudoku.builtin_splits(**dict(kw, workers=2))   # same puzzles whatever the worker count
    assert all(np.array_equal(a[s][1], c[s][1]) for s in a)


def test_reads_sudoku_extreme_sample():
    q, a = sudoku.read_csv(SAMPLE_CSV)
    assert q.shape == a.shape == (300, 81)
    assert ((q == 0) | (q == a)).all()
    assert sudoku.legal(a).all()
    q2, a2 = sudoku.load_boards(SAMPLE_CSV, "test", limit=20)
    assert np.array_equal(q2, q[:20])


def test_hub_path_downloads_then_reads(monkeypatch):
    """--data extreme: the hub download code path, served from a local file."""
    import huggingface_hub
    calls = []

    def fake_download(repo_id, filename, repo_type, cache_dir=None):
        calls.append((repo_id, filename, repo_type))
        return SAMPLE_CSV

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    q, a = sudoku.load_boards("extreme", "test", limit=5)
    assert calls == [("sapientinc/sudoku-extreme", "test.csv", "dataset")]
    assert q.shape == (5, 81)


def write_csv(path, rows):
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for q, a in rows:
            f.write(f"test,{q},{a},0\n")
    return str(path)


GOOD_Q = "." * 3 + "678912672195348198342567859761423426853791713924856961537284287419635345286179"
GOOD_A = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


@pytest.mark.parametrize("question,answer,reason", [
    (GOOD_Q[:80], GOOD_A, "question has 80 characters"),
    (GOOD_Q[:-1] + "x", GOOD_A, "foreign characters 'x'"),
    (GOOD_Q, GOOD_A[:-1] + "0", "answer has foreign characters '0'"),
    ("6" + GOOD_Q[1:], GOOD_A, "contradicts its clues at row 1, column 1"),
    ("." * 81, GOOD_A[:9] + GOOD_A[9:18][::-1] + GOOD_A[18:], "breaks a Sudoku rule"),
])
def test_rejects_bad_rows_naming_file_and_line(tmp_path, question, answer, reason):
    path = write_csv(tmp_path / "bad.csv", [(GOOD_Q, GOOD_A), (question, answer)])
    with pytest.raises(sudoku.DataError) as e:
        sudoku.read_csv(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3:") and reason in msg and "\n" not in msg


def test_rejects_tdoku_puzzles_without_a_unique_solution(tmp_path):
    rows = [line.strip().split(":") for line in open(TDOKU) if line.strip()]
    none = [r[0] for r in rows if r[1] == "0"]
    several = [r[0] for r in rows if int(r[1]) > 1]
    assert len(none) == 10 and len(several) == 15
    for puzzles, reason in ((none[:3], "no solution"), (several[:3], "more than one solution")):
        for q in puzzles:
            path = write_csv(tmp_path / "t.csv", [(q, "")])
            with pytest.raises(sudoku.DataError, match=f"t.csv:2: the clues have {reason}"):
                sudoku.read_csv(path)
    unique = [r for r in rows if r[1] == "1"][0]
    q, a = sudoku.read_csv(write_csv(tmp_path / "u.csv", [(unique[0], "")]))   # solved and filled
    assert "".join(map(str, a[0])) == unique[2]


def test_missing_file_and_header(tmp_path):
    with pytest.raises(sudoku.DataError, match="no such file"):
        sudoku.read_csv(str(tmp_path / "nope.csv"))
    p = tmp_path / "h.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(sudoku.DataError, match=r"h.csv:1: expected a header"):
        sudoku.read_csv(str(p))


def test_augmentation_keeps_puzzles_valid():
    q, a = sudoku.read_csv(SAMPLE_CSV, limit=8)
    rng = np.random.default_rng(0)
    qa, aa = sudoku.augment(q, a, rng)
    assert not np.array_equal(qa, q)
    assert sudoku.legal(aa).all()
    assert ((qa == 0) | (qa == aa)).all()
    assert ((qa > 0).sum(1) == (q > 0).sum(1)).all()        # same number of clues
    # a symmetry maps the unique solution to the unique solution of the new puzzle
    n, sol = sudoku.solve(qa[0], limit=2)
    assert n == 1 and list(sol) == list(aa[0])


def test_cohort_labels():
    pytest.importorskip("sudoku_solver_tim")
    rng = random.Random(9)
    easy, _ = sudoku.generate_puzzle(rng, 40, singles=True)
    labels = sudoku.cohort_labels(np.array([easy], dtype=np.uint8))
    assert labels["no_brute_force"][0] and not labels["deduction_only"][0]


def test_hints_reveal_solution_cells_up_to_n_clues():
    q, a = sudoku.read_csv(SAMPLE_CSV, limit=20)
    h = sudoku.add_hints(q, a, 40)
    assert ((h != 0).sum(1) == np.maximum(40, (q != 0).sum(1))).all()
    assert ((h == 0) | (h == a)).all() and (h[q != 0] == q[q != 0]).all()   # clues kept
    assert np.array_equal(h, sudoku.add_hints(q, a, 40))                       # seeded
    assert np.array_equal(sudoku.add_hints(q, a, 17), q)                       # none to add


def test_consistent_allows_blanks_but_no_repeat():
    solution = np.array([int(ch) for ch in GOOD_A])
    empty = np.zeros(81, dtype=int)
    row_clash, box_clash = empty.copy(), empty.copy()
    row_clash[[0, 8]] = 5
    box_clash[[0, 10]] = 5                     # cells (0, 0) and (1, 1): same box, other row/col
    assert list(sudoku.consistent(np.stack([empty, solution, row_clash, box_clash]))) == \
        [True, True, False, False]
    col_swap = solution.copy()
    col_swap[[0, 9]] = col_swap[[9, 0]]         # swapped within a column: rows now repeat
    assert not sudoku.consistent(col_swap[None])[0] and not sudoku.legal(col_swap[None])[0]


def test_pass_curves_on_a_hand_made_trajectory():
    from sample import pass_curves
    solution = np.array([int(ch) for ch in GOOD_A])
    start = solution.copy()
    start[:10] = 0
    p1 = start.copy()
    p1[:5] = solution[:5]                      # pass 1: five correct cells
    wrong = p1.copy()
    wrong[5] = solution[6]                      # pass 2: a wrong digit that repeats in row 1
    done = solution.copy()
    # board A: correct, then wrong; board B: finishes in one pass and stays
    curves = pass_curves([[start, p1, wrong], [start, done]], solution[None].repeat(2, 0))
    assert curves["correct"] == [1.0, 0.5] and curves["consistent"] == [1.0, 0.5]
    assert curves["filled"][0] == ((76 / 81) + 1.0) / 2
