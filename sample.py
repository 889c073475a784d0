"""
Solve Sudoku puzzles with a trained checkpoint: the confidence-budget sampler of METHOD.md 4-5 with
the relay carried between passes, NFE per puzzle, and the paper's metrics.

    python sample.py --tau 0.15                  # latest checkpoint under out/, built-in test split
    python sample.py --sweep                     # tau 0.05..0.25: table + accuracy-NFE plot
    python sample.py --sweep --ckpt out/a/ckpt.pt out/b/ckpt.pt   # several models, one plot
    python sample.py --data puzzles.csv --limit 20 --json   # any Sudoku-Extreme-format CSV
    python sample.py --show 2                    # print two puzzles' trajectories pass by pass
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

from model import MASK_ID, build_model, encode, decode_ids
from relay import unmask_budget
from common import (UsageError, atomic_write, autocast_for, load_checkpoint, resolve_device,
                    run_main, save_figure)
from data.sudoku import (DataError, add_hints, cohort_labels, consistent, legal, load_boards,
                         to_string)

# train_sudoku.py's flag for each builtin_splits argument (saved in every checkpoint's args)
BUILTIN_ARGS = dict(n_train="n_train", n_val="n_val", n_test="n_test", clues="clues",
                    seed="data_seed")
MAX_PASSES = 64           # METHOD.md 5: at most 64 passes, then one final pass fills what is left
SWEEP_TAUS = (0.05, 0.10, 0.15, 0.20, 0.25)


# -----------------------------------------------------------------------------
# the sampler

@torch.no_grad()
def solve_boards(model, puzzles, tau, batch_size=512, max_passes=MAX_PASSES, record=False,
                 autocast=None, use_relay=True):
    """Decode digit puzzles (N, 81) (0 = blank). Each pass: h <- f(Emb(z) + R(h)); reveal masked
    cells by the cumulative-uncertainty rule (relay.unmask_budget) with their argmax digits.
    A board leaves the batch once it has no [MASK], so each board's passes depend on that board
    alone: batched decoding gives the same boards and NFE as decoding one at a time.
    Returns boards (N, 81) uint8, nfe (N,) int, and per board the list of boards after each
    pass when record=True. use_relay=False keeps h = 0 at every pass (an ablation: what the
    relay model does without the state it learned to read)."""
    model.eval()
    param = next(model.parameters())
    device = param.device
    boards, nfes, trajs = [], [], []
    for s in range(0, len(puzzles), batch_size):
        z = encode(puzzles[s:s + batch_size]).to(device)                  # (B, 81)
        B = len(z)
        h = torch.zeros(B, z.shape[1], model.cfg.n_embd, device=device, dtype=param.dtype)  # h_0 = 0
        nfe = torch.zeros(B, dtype=torch.long, device=device)
        traj = [[decode_ids(z[b:b + 1])[0]] for b in range(B)] if record else None
        for p in range(max_passes + 1):
            live = (z == MASK_ID).any(1).nonzero().squeeze(1)            # boards still masked
            if len(live) == 0:
                break
            zl = z[live]
            with autocast or torch.autocast(device.type, enabled=False):
                logits, h_new = model(zl, h[live])
            masked = zl == MASK_ID
            if p == max_passes:
                reveal = masked                                           # the final fill
            else:
                reveal = unmask_budget(logits, masked, tau)
            z[live] = torch.where(reveal, logits.argmax(-1), zl)
            if use_relay:
                h[live] = h_new.to(h.dtype)
            nfe[live] += 1
            if record:
                for b, zb in zip(live.tolist(), decode_ids(z[live])):
                    traj[b].append(zb)
        boards.append(decode_ids(z))
        nfes.append(nfe.cpu().numpy())
        if record:
            trajs.extend(traj)
    return np.concatenate(boards), np.concatenate(nfes), trajs


def score(boards, solutions, puzzles, nfe):
    """The paper's metrics: exact match, legal rate (filled, no rule broken, need not equal the
    solution), cell accuracy over the originally blank cells, mean NFE."""
    blank = puzzles == 0
    return dict(
        n=int(len(boards)),
        acc=float((boards == solutions).all(1).mean()),
        legal=float(legal(boards).mean()),
        cell_acc=float(((boards == solutions) & blank).sum() / max(blank.sum(), 1)),
        nfe=float(nfe.mean()),
    )


def pass_curves(trajs, solutions, n_passes=None):
    """After each pass p = 1, 2, ...: the fraction of boards whose committed cells are all
    correct, the fraction whose committed cells break no rule (blanks allowed), and the mean
    fraction of cells filled; a finished board keeps its final state. The meaningful version of
    the paper's "commits more cells per pass while keeping the partial board legal"."""
    n_passes = n_passes or max(len(t) - 1 for t in trajs)
    out = dict(correct=[], consistent=[], filled=[])
    for p in range(1, n_passes + 1):
        boards = np.stack([t[min(p, len(t) - 1)] for t in trajs])          # (N, 81)
        filled = boards != 0
        out["correct"].append(float(((boards == solutions) | ~filled).all(1).mean()))
        out["consistent"].append(float(consistent(boards).mean()))
        out["filled"].append(float(filled.mean()))
    return out


def evaluate(model, puzzles, solutions, tau, batch_size=512, autocast=None):
    boards, nfe, _ = solve_boards(model, puzzles, tau, batch_size, autocast=autocast)
    return score(boards, solutions, puzzles, nfe)


# -----------------------------------------------------------------------------
# checkpoints

def find_latest_checkpoint(root="out"):
    paths = glob.glob(os.path.join(root, "*", "ckpt.pt"))
    if not paths:
        raise DataError(f"no checkpoint under {root}/*/ckpt.pt: train one with "
                        f"`python train_sudoku.py`, or pass --ckpt")
    return max(paths, key=os.path.getmtime)


def load_checkpoint_model(path, device="cpu", use_ema=True):
    """Rebuild the model from the checkpoint's saved config alone (no training code needed)."""
    ckpt = load_checkpoint(path, device)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise DataError(f"{path}: not a relay Sudoku checkpoint (no model_config/model entries)")
    try:
        model = build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: incompatible checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), ckpt


# -----------------------------------------------------------------------------
# output

def print_trajectory(states, solution):
    """Boards after each pass side by side; a cell revealed at that pass is marked with '*',
    a wrong digit with '!'."""
    for p in range(1, len(states)):
        prev, cur = states[p - 1], states[p]
        new = (prev == 0) & (cur != 0)
        print(f"pass {p}: revealed {int(new.sum())} cell(s), {int((cur == 0).sum())} still masked")
        for r in range(9):
            row = []
            for c in range(9):
                i = r * 9 + c
                d = "." if cur[i] == 0 else str(cur[i])
                mark = ("!" if cur[i] != solution[i] else "*") if new[i] else " "
                row.append(d + mark)
                if c in (2, 5):
                    row.append("|")
            print("  " + " ".join(row))
            if r in (2, 5):
                print("  " + "-" * 29)
    print()


def write_sweep_outputs(rows, out_prefix, title):
    """Markdown table and accuracy-vs-NFE PNG (the paper's Figure 2 axes) for a tau sweep of one
    or several checkpoints (rows carry a unique 'label'): one line and one colour per checkpoint."""
    lines = ["| model | step | tau | n | acc % | NFE | legal % | cell acc % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['step']} | {r['tau']:.2f} | {r['n']} | "
                     f"{100 * r['acc']:.1f} | {r['nfe']:.2f} | {100 * r['legal']:.1f} | "
                     f"{100 * r['cell_acc']:.1f} |")
    md = "\n".join(lines) + "\n"
    atomic_write(out_prefix + ".md", md)
    import matplotlib.pyplot as plt
    fig = sweep_figure(rows, title)
    save_figure(fig, out_prefix + ".png")
    plt.close(fig)
    return md


def sweep_figure(rows, title):
    """The frontier figure of write_sweep_outputs: one line per distinct row label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for label in labels:
        rs = [r for r in rows if r["label"] == label]
        ax.plot([r["nfe"] for r in rs], [100 * r["acc"] for r in rs], "o-", label=label)
        if len(labels) == 1:
            for r in rs:
                ax.annotate(f"tau {r['tau']:.2f}", (r["nfe"], 100 * r["acc"]), fontsize=8,
                            textcoords="offset points", xytext=(5, 3))
    if len(labels) > 1:
        ax.legend(fontsize=7, title=f"tau {rows[0]['tau']:.2f} ... {rows[-1]['tau']:.2f}",
                  title_fontsize=8)
    ax.set_xlabel("mean NFE (forward passes per puzzle)")
    ax.set_ylabel("exact match (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_names(paths):
    """A short name per checkpoint path that tells them apart: the run directory's name (plus
    the file's name when it is not ckpt.pt), with more parent directories only where two would
    collide. The same path given twice gets ' #2', ' #3', ..."""
    parts = []
    for path in paths:
        a = os.path.normpath(os.path.abspath(path)).split(os.sep)
        parts.append(a[:-1] if a[-1] == "ckpt.pt" else a[:-2] + [f"{a[-2]}/{a[-1]}"])
    depth = 1
    while True:
        names = ["/".join(a[-depth:]) for a in parts]
        if len(set(names)) == len(names) or depth >= max(len(a) for a in parts):
            break
        depth += 1
    seen = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} #{seen[n]}"
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=None,
                   help="checkpoint(s) (default: newest out/*/ckpt.pt); several are compared")
    p.add_argument("--tau", type=float, default=0.15, help="uncertainty budget per pass (METHOD.md 4)")
    p.add_argument("--sweep", action="store_true", help=f"evaluate tau in {SWEEP_TAUS}")
    p.add_argument("--data", default=None, help="'builtin' (the checkpoint's generated test split),"
                   " 'extreme' (hub), or a CSV path (default: the checkpoint's own --data)")
    p.add_argument("--limit", type=int, default=None, help="first N puzzles only")
    p.add_argument("--hints", type=int, default=None, metavar="N",
                   help="reveal solution cells at random (seed 0) until every puzzle has N clues:\n"
                        "easier variants of hard puzzles, for difficulty bands")
    p.add_argument("--per-pass", action="store_true",
                   help="also the fraction of boards still all-correct / rule-consistent and the\n"
                        "fraction filled after each pass (key per_pass of each row)")
    p.add_argument("--batch-size", type=int, default=512, help="puzzles decoded together")
    p.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--no-relay", dest="relay", action="store_false",
                   help="ablation: keep h = 0 at every pass (relay models only)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true", help="one JSON object per tau on stdout")
    p.add_argument("--show", type=int, default=0, help="print N puzzles' trajectories")
    p.add_argument("--cohorts", action="store_true",
                   help="also report per cohort (needs the sudoku-solver-tim package)")
    p.add_argument("--out", default=None, help="sweep outputs prefix (default: next to ckpt)")
    args = p.parse_args(argv)
    taus = SWEEP_TAUS if args.sweep else (args.tau,)
    for t in taus:
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"--tau {t}: must lie in [0, 1]")
    device = resolve_device(args.device)
    paths = args.ckpt or [find_latest_checkpoint()]
    rows = []
    for ckpt_path, name in zip(paths, run_names(paths)):
        rows += evaluate_checkpoint(ckpt_path, taus, args, device, name)
    if args.sweep:
        prefix = args.out or os.path.join(os.path.dirname(paths[0]), "sweep")
        data = os.path.basename(args.data) if args.data else "each checkpoint's test split"
        n = len(dict.fromkeys(r["label"] for r in rows))
        write_sweep_outputs(rows, prefix, f"{rows[0]['label'] if n == 1 else f'{n} checkpoints'}"
                                          f" on {data}, {rows[0]['n']} puzzles")
        (print if not args.json else lambda *a: print(*a, file=sys.stderr))(
            f"wrote {prefix}.md and {prefix}.png")
    return rows


def evaluate_checkpoint(ckpt_path, taus, args, device, name):
    """Rows for one checkpoint, labelled 'method (tie) name @step' (name from run_names)."""
    model, ckpt = load_checkpoint_model(ckpt_path, device, use_ema=not args.raw)
    targs = ckpt.get("args", {})
    label = (f"{targs.get('method', '?')} ({'tied' if targs.get('tied', True) else 'untied'})"
             f"{'' if args.relay else ', h = 0'} {name} @{ckpt.get('step')}")
    data = args.data or targs.get("data", "builtin")
    builtin = {k: targs[a] for k, a in BUILTIN_ARGS.items() if a in targs}
    builtin["verbose"] = not args.json
    puzzles, solutions = load_boards(data, "test", limit=args.limit, **builtin)
    if args.hints is not None:
        if not 17 <= args.hints <= 80:
            raise UsageError(f"--hints {args.hints}: need 17 <= N <= 80 clues")
        puzzles = add_hints(puzzles, solutions, args.hints)
    autocast = autocast_for(device)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"{ckpt_path}: {label} ({'raw' if args.raw else 'EMA'} weights), {len(puzzles)} puzzles "
        f"from {data}")

    if args.show:
        boards, nfe, trajs = solve_boards(model, puzzles[:args.show], taus[0], record=True,
                                           use_relay=args.relay)
        for n in range(len(boards)):
            ok = "solved" if (boards[n] == solutions[n]).all() else "NOT solved"
            print(f"puzzle {n}: {to_string(puzzles[n])}  -> {ok} in {nfe[n]} passes")
            print_trajectory(trajs[n], solutions[n])

    cohorts = cohort_labels(puzzles) if args.cohorts else None
    if args.cohorts and cohorts is None:
        log("cohorts skipped: `pip install sudoku-solver-tim` to label them")
    rows = []
    for tau in taus:
        t0 = time.time()
        boards, nfe, trajs = solve_boards(model, puzzles, tau, args.batch_size,
                                          record=args.per_pass, autocast=autocast,
                                          use_relay=args.relay)
        row = dict(label=label, ckpt=ckpt_path, step=ckpt.get("step"), tau=tau,
                   **score(boards, solutions, puzzles, nfe), wall_s=time.time() - t0)
        if args.hints is not None:
            row["hints"] = args.hints
        if args.per_pass:
            row["per_pass"] = pass_curves(trajs, solutions)
        for name, sel in (cohorts or {}).items():
            if sel.any():
                row[name] = score(boards[sel], solutions[sel], puzzles[sel], nfe[sel])
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{label} | tau {tau:.2f} | n {row['n']} | acc {100 * row['acc']:.1f}% | NFE "
                  f"{row['nfe']:.2f} | legal {100 * row['legal']:.1f}% | cell acc "
                  f"{100 * row['cell_acc']:.1f}%")
            for name in (cohorts or {}):
                if name in row:
                    c = row[name]
                    print(f"    {name:15s} n {c['n']} | acc {100 * c['acc']:.1f}% | NFE "
                          f"{c['nfe']:.2f} | legal {100 * c['legal']:.1f}%")
    return rows

if __name__ == "__main__":
    run_main(main)
