"""
Reproduce the paper's Sudoku comparison (Table 1, Figure 2, legal boards) with one command:
train every method x {tied, untied} x seed, evaluate each run's EMA weights on the same held-out
split across the tau sweep, and write the table and plots under results/<preset>/.

    python table1.py --preset cpu                     # 4 methods x tied x seeds 1 2: 98 min here
    python table1.py --preset cpu --ties tied untied --seeds 1 2 3
    python table1.py --preset paper --max-iters 20000 # METHOD.md 3 on Sudoku-Extreme, shortened
    python table1.py --preset paper --nproc 8         # each run on 8 GPUs with torchrun
    python table1.py --preset cpu --report-only       # rebuild table and plots from finished runs

It resumes: a finished run is neither trained nor evaluated again, an interrupted one continues
from its checkpoint (train_sudoku.py --resume). Every method gets the same optimizer steps, as in
the paper; a relay or rollout step costs K forward passes, so each K-pass run also keeps its
checkpoint at steps/K (ckpt_matched.pt), the point where it has made as many forward passes as
MLM at the end, and the table compares both ways.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import train_sudoku
from data.sudoku import EXTREME_TEST_ROWS, DataError, load_boards
from common import UsageError, atomic_write, run_main, save_figure
from sample import SWEEP_TAUS

HERE = os.path.dirname(os.path.abspath(__file__))   # train_sudoku.py and sample.py sit beside us
METHODS = ("mlm", "rollout", "relay_sg", "relay")
NAMES = {"mlm": "MLM", "rollout": "Rollout", "relay_sg": "Relay (sg)", "relay": "Relay"}
COLORS = {"mlm": "tab:gray", "rollout": "tab:blue", "relay_sg": "tab:orange", "relay": "tab:red"}
COST = {"mlm": 3, "rollout": 5, "relay_sg": 5, "relay": 5}   # rough relative run time: longest first
TABLE_TAU = 0.15
# METHOD.md 8, the paper's Table 1 (Sudoku-Extreme, tau 0.15, tied): acc %, NFE, deduction-only acc, NFE
PAPER = {"mlm": (20.3, 13.8, 32.2, 9.3), "rollout": (38.7, 12.5, 52.9, 10.5),
         "relay_sg": (58.4, 7.6, 70.8, 6.1), "relay": (62.7, 7.4, 76.4, 5.9)}
PAPER_LEGAL = {"relay_sg": 70.7, "relay": 74.8}

# per preset: train_sudoku.py's preset, flags it gets on top, sample.py flags, default ties, jobs
PRESETS = {
    # train_sudoku.py's cpu preset with the wall-clock cap off (equal steps, not equal minutes) and
    # an evaluation every 200 steps so the curves also hold the forward-pass-matched point (600)
    "cpu": dict(train=["--preset", "cpu", "--max-minutes", "0", "--eval-interval", "200",
                       "--ckpt-interval", "200"],
                sample=[], ties=["tied"], jobs=None),
    # the cpu model and budget on harder generated puzzles (26-30 clues: most need more than
    # naked/hidden singles), run 4x longer, evaluated every 600 steps (the 1,200-step and the
    # forward-pass-matched 2,400-step points lie on the curve: the lr is constant after warm-up)
    "hard": dict(train=["--preset", "cpu", "--max-minutes", "0", "--clues", "26-30",
                        "--max-iters", "4800", "--eval-interval", "600", "--ckpt-interval", "600"],
                 sample=[], ties=["tied"], jobs=None),
    # METHOD.md 3 as is; the test split is the authors' first rows of Sudoku-Extreme's test.csv
    "paper": dict(train=["--preset", "paper"], sample=["--limit", str(EXTREME_TEST_ROWS)],
                  ties=["tied", "untied"], jobs=1),
}

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--preset", default="cpu", choices=list(PRESETS),
               help="train_sudoku.py settings and evaluation of every run (see PRESETS)")
p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
               help="Table 1 rows to train (default: all four)")
p.add_argument("--ties", nargs="+", default=None, choices=["tied", "untied"],
               help="output layer tied to the embedding or not (default: cpu tied, paper both)")
p.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="one run per seed")
p.add_argument("--K", type=int, default=2, help="rollout steps per update for the K-pass methods")
p.add_argument("--max-iters", type=int, default=None,
               help="optimizer steps per run (default: the preset's); the table marks a change")
p.add_argument("--train-args", default="",
               help="extra train_sudoku.py flags for every run, e.g. '--size tiny --n-train 200'")
p.add_argument("--jobs", type=int, default=None,
               help="runs at once (default: cpu one per core, one thread each; paper 1)")
p.add_argument("--threads", type=int, default=None,
               help="torch threads per run on a CPU (default: cores / jobs)")
p.add_argument("--nproc", type=int, default=1, help="GPUs per run (torchrun) for the paper preset")
p.add_argument("--runs-dir", default=None, help="default: out/table1/<preset>")
p.add_argument("--results-dir", default=None, help="default: results/<preset>")
p.add_argument("--report-only", action="store_true", help="no training: table from what exists")


# -----------------------------------------------------------------------------
# one run: train (in two legs for the K-pass methods), then evaluate

@dataclass
class Study:
    """What one table1.py invocation compares and where it keeps things."""
    preset: str
    methods: list
    ties: list
    seeds: list
    K: int                  # forward passes per step of the K-pass methods
    steps: int              # optimizer steps per run
    preset_steps: int       # the preset's own step count (the report marks a change)
    train_argv: list        # extra train_sudoku.py flags for every run
    nproc: int              # GPUs per run
    jobs: int               # runs at once
    threads: int            # torch threads per run
    runs_dir: str
    results_dir: str
    argv: list              # this invocation's command line, for the report
    invocations: list = field(default_factory=list)   # every invocation so far (commit, wall_s)


class Run:
    def __init__(self, method, tie, seed, study):
        self.method, self.tie, self.seed = method, tie, seed
        self.name = f"{method}_{tie}_s{seed}"
        self.dir = os.path.join(study.runs_dir, self.name)
        self.k = 1 if method == "mlm" else study.K          # forward passes per optimizer step
        self.steps = study.steps
        self.matched_steps = study.steps // self.k if self.k > 1 else None
        self.train_argv = (PRESETS[study.preset]["train"] + study.train_argv +
                           ["--method", method, f"--{tie}", "--seed", str(seed),
                            "--K", str(study.K), "--out-dir", self.dir, "--no-progress"])
        self.sample_argv = PRESETS[study.preset]["sample"]
        self.ckpt = os.path.join(self.dir, "ckpt.pt")
        self.matched = os.path.join(self.dir, "ckpt_matched.pt")


def ckpt_step(path):
    """The optimizer step a checkpoint was saved at; 0 if there is none."""
    if not os.path.exists(path):
        return 0
    return torch.load(path, map_location="cpu", weights_only=False)["step"]


def run_logged(cmd, log_path, env):
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {r.returncode}); see {log_path}")


def evaluate_to(path_out, ckpt, taus, sample_argv, env, log_path):
    """sample.py --json on ckpt; its rows are kept in path_out (skipped if already there)."""
    step = ckpt_step(ckpt)
    if os.path.exists(path_out):
        rows = [json.loads(l) for l in open(path_out)]
        if rows and all(r["step"] == step for r in rows) and [r["tau"] for r in rows] == list(taus):
            return rows
    cmd = [sys.executable, os.path.join(HERE, "sample.py"), "--ckpt", ckpt, "--json", "--cohorts",
           *sample_argv]
    cmd += ["--sweep"] if len(taus) > 1 else ["--tau", str(taus[0])]
    if len(taus) > 1:
        cmd += ["--out", os.path.join(os.path.dirname(ckpt), "sweep")]
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"sample.py on {ckpt} failed (exit {r.returncode}); see {log_path}")
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    atomic_write(path_out, "".join(json.dumps(x) + "\n" for x in rows))
    return rows


def do_run(run, study, env):
    """Train to the full step count (via the matched point for K-pass methods), then evaluate.
    Every leg is a train_sudoku.py process; an existing checkpoint is resumed, never redone."""
    os.makedirs(run.dir, exist_ok=True)
    log_path = os.path.join(run.dir, "train.log")
    t0 = time.time()
    legs = ([run.matched_steps] if run.matched_steps else []) + [run.steps]
    for target in legs:
        at = ckpt_step(run.ckpt)
        if at < target:
            cmd = launcher(study) + [os.path.join(HERE, "train_sudoku.py"), *run.train_argv,
                                 "--max-iters", str(target)]
            run_logged(cmd + (["--resume"] if at > 0 else []), log_path, env)
        if target == run.matched_steps and ckpt_step(run.matched) != target:
            at = ckpt_step(run.ckpt)
            if at != target:
                raise RuntimeError(f"{run.ckpt}: at step {at}, past the matched "
                                   f"point {target} with no {run.matched}; delete {run.dir} to redo")
            shutil.copyfile(run.ckpt, run.matched + ".tmp")
            os.replace(run.matched + ".tmp", run.matched)
    evaluate_to(os.path.join(run.dir, "sweep.jsonl"), run.ckpt, SWEEP_TAUS, run.sample_argv, env,
                log_path)
    if run.matched_steps:
        evaluate_to(os.path.join(run.dir, "matched.jsonl"), run.matched, (TABLE_TAU,),
                    run.sample_argv, env, log_path)
    if run.method.startswith("relay"):   # ablation: the same weights with h = 0 at every pass
        evaluate_to(os.path.join(run.dir, "no_relay.jsonl"), run.ckpt, (TABLE_TAU,),
                    run.sample_argv + ["--no-relay"], env, log_path)
    return time.time() - t0


def launcher(study):
    if study.nproc > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={study.nproc}"]
    return [sys.executable]


# -----------------------------------------------------------------------------
# the report

def load_run(run):
    """Everything the report needs from a finished run's directory, or None if unfinished."""
    sweep = os.path.join(run.dir, "sweep.jsonl")
    if not os.path.exists(sweep):
        return None
    ck = torch.load(run.ckpt, map_location="cpu", weights_only=False)
    if ck["step"] != run.steps:
        return None
    hist = [json.loads(l) for l in open(os.path.join(run.dir, "eval.jsonl"))]
    def first_row(name):
        path = os.path.join(run.dir, name)
        return json.loads(open(path).readline()) if os.path.exists(path) else None
    return dict(run=run, step=ck["step"], wall_s=ck["elapsed_s"], batch=ck["args"]["batch_size"],
                eval_n=ck["args"]["eval_n"],
                sweep=[json.loads(l) for l in open(sweep)], matched=first_row("matched.jsonl"),
                no_relay=first_row("no_relay.jsonl"),
                history=hist, params=sum(v.numel() for k, v in ck["model"].items()))


def ms(values, scale=1.0, fmt="{:.1f}"):
    """'mean +- std' over seeds (sample std, ddof 1); one seed gives the value alone."""
    v = scale * np.asarray(values, dtype=float)
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}"


def at_tau(rows, tau):
    return next(r for r in rows if abs(r["tau"] - tau) < 1e-9)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l)
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
        desc += f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        desc += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return desc


def commit():
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           check=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py"],
                               capture_output=True, text=True, cwd=HERE).stdout.strip()
        return c + (" (with uncommitted code changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(groups, study, total_wall_s):
    """groups: {(method, tie): [loaded runs over seeds]}. Writes table1.md, frontier.png and
    curves.png under study.results_dir, each atomically; returns the markdown."""
    os.makedirs(study.results_dir, exist_ok=True)
    keys = [(m, t) for t in study.ties for m in study.methods if groups.get((m, t))]
    lines = report_header(groups, keys, study, total_wall_s)
    for section in (section_equal_steps, section_cohorts, section_equal_passes, section_ablation,
                    section_sweep, section_per_run):
        lines += section(groups, keys, study)
    md = "\n".join(lines) + "\n"
    atomic_write(os.path.join(study.results_dir, "table1.md"), md)
    n_test = groups[keys[0]][0]["sweep"][0]["n"]
    plot_frontier(groups, keys, os.path.join(study.results_dir, "frontier.png"), study, n_test)
    plot_curves(groups, keys, os.path.join(study.results_dir, "curves.png"), study)
    return md


def changed_budget(study):
    return ("shortened" if study.steps < study.preset_steps else
            "extended" if study.steps > study.preset_steps else "")


def report_header(groups, keys, study, total_wall_s):
    first = groups[keys[0]][0]
    changed = changed_budget(study)
    trained = ", ".join(dict.fromkeys(x["commit"] for x in study.invocations)) or "unknown"
    argv = [x for x in study.argv if x != "--report-only"]
    return [
        f"# Table 1 reproduction, preset `{study.preset}`" + (f" ({changed})" if changed else ""),
        "",
        f"- command: `python table1.py {shlex.join(argv)}`".rstrip(),
        f"- report written at commit {commit()} on {datetime.date.today().isoformat()}; runs "
        f"trained and evaluated at commit(s) {trained}",
        f"- machine: {machine()}",
        f"- {study.steps:,} optimizer steps per run" + (f" (the preset's {study.preset_steps:,} "
        f"{changed})" if changed else "") + f", batch {first['batch'] * study.nproc}, "
        f"K = {study.K}; {first['params'] / 1e6:.2f}M parameters; seeds "
        f"{', '.join(map(str, study.seeds))}",
        f"- evaluation: EMA weights, {first['sweep'][0]['n']:,} held-out test puzzles, tau "
        f"{TABLE_TAU} unless said; mean ± sample std over seeds",
        f"- wall time, training and evaluation: {total_wall_s / 60:.1f} min over "
        f"{len(study.invocations)} invocation(s) of this script ({study.jobs} run(s) at once, "
        f"{study.threads} thread(s) each)", ""]


def section_equal_steps(groups, keys, study):
    out = [f"## At equal optimizer steps (the paper's budget), tau {TABLE_TAU}", "",
           "| method | output | seeds | steps | forward passes | wall min | acc % | NFE | legal % "
           "| cell acc % | paper acc % / NFE |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, t in keys:
        g = groups[(m, t)]
        rs = [at_tau(x["sweep"], TABLE_TAU) for x in g]
        paper = f"{PAPER[m][0]} / {PAPER[m][1]}" if t == "tied" else ""
        out.append(f"| {NAMES[m]} | {t} | {len(g)} | {study.steps:,} | "
                   f"{study.steps * g[0]['run'].k:,} | {ms([x['wall_s'] / 60 for x in g])} | "
                   f"{ms([r['acc'] for r in rs], 100)} | {ms([r['nfe'] for r in rs], fmt='{:.2f}')}"
                   f" | {ms([r['legal'] for r in rs], 100)} | {ms([r['cell_acc'] for r in rs], 100)}"
                   f" | {paper} |")
    return out + ["", "Forward passes = steps x K, each over a batch of boards; wall time includes "
                  "the periodic evaluations. The paper's column is Sudoku-Extreme at 300k steps "
                  f"(METHOD.md 8; legal boards there: Relay {PAPER_LEGAL['relay']} %, Relay (sg) "
                  f"{PAPER_LEGAL['relay_sg']} %).", ""]


def section_cohorts(groups, keys, study):
    cohorts = [c for c in ("no_brute_force", "deduction_only")
               if c in at_tau(groups[keys[0]][0]["sweep"], TABLE_TAU)]
    if not cohorts:
        return []
    out = [f"### Cohorts (labels from sudoku-solver-tim), tau {TABLE_TAU}", "",
           "| method | output | " + " | ".join(f"{c} n | {c} acc % | {c} NFE" for c in cohorts)
           + " | paper deduction-only acc % / NFE |",
           "|---|---|" + "---|---|---|" * len(cohorts) + "---|"]
    for m, t in keys:
        rs = [at_tau(x["sweep"], TABLE_TAU) for x in groups[(m, t)]]
        cells = []
        for c in cohorts:
            cells += [str(rs[0][c]["n"]), ms([r[c]["acc"] for r in rs], 100),
                      ms([r[c]["nfe"] for r in rs], fmt="{:.2f}")]
        paper = f"{PAPER[m][2]} / {PAPER[m][3]}" if t == "tied" else ""
        out.append(f"| {NAMES[m]} | {t} | " + " | ".join(cells) + f" | {paper} |")
    return out + ["", "deduction_only: solved by the labeller without brute force and with at "
                  "least one advanced strategy (METHOD.md 6); no_brute_force: solved without "
                  "brute force.", ""]


def section_equal_passes(groups, keys, study):
    if not any(groups[k][0]["matched"] for k in keys):
        return []
    out = [f"## At equal forward passes, tau {TABLE_TAU}", "",
           "Each K-pass method evaluated at steps / K, where it has made as many forward passes "
           "as MLM at its end.", "",
           "| method | output | steps | forward passes | acc % | NFE | legal % |",
           "|---|---|---|---|---|---|---|"]
    for m, t in keys:
        g = groups[(m, t)]
        run = g[0]["run"]
        rs = ([at_tau(x["sweep"], TABLE_TAU) for x in g] if run.k == 1
              else [x["matched"] for x in g if x["matched"]])
        if not rs:
            continue
        steps = study.steps if run.k == 1 else run.matched_steps
        out.append(f"| {NAMES[m]} | {t} | {steps:,} | {steps * run.k:,} | "
                   f"{ms([r['acc'] for r in rs], 100)} | {ms([r['nfe'] for r in rs], fmt='{:.2f}')}"
                   f" | {ms([r['legal'] for r in rs], 100)} |")
    return out + [""]


def section_ablation(groups, keys, study):
    ablate = [k for k in keys if all(x["no_relay"] for x in groups[k])]
    if not ablate:
        return []
    out = [f"## Does the model read h? Relay models with h = 0 at every pass, tau {TABLE_TAU}",
           "", "Same EMA weights, same puzzles; only the relayed state is withheld at inference.",
           "", "| method | output | acc % with h | NFE with h | acc % with h = 0 | NFE with h = 0 |",
           "|---|---|---|---|---|---|"]
    for m, t in ablate:
        g = groups[(m, t)]
        rs, zs = [at_tau(x["sweep"], TABLE_TAU) for x in g], [x["no_relay"] for x in g]
        out.append(f"| {NAMES[m]} | {t} | {ms([r['acc'] for r in rs], 100)} | "
                   f"{ms([r['nfe'] for r in rs], fmt='{:.2f}')} | {ms([r['acc'] for r in zs], 100)}"
                   f" | {ms([r['nfe'] for r in zs], fmt='{:.2f}')} |")
    return out + [""]


def section_sweep(groups, keys, study):
    out = ["## Tau sweep (Figure 2: frontier.png)", "", "| method | output | " +
           " | ".join(f"tau {tau:.2f} acc % / NFE" for tau in SWEEP_TAUS) + " |",
           "|---|---|" + "---|" * len(SWEEP_TAUS)]
    for m, t in keys:
        g = groups[(m, t)]
        cells = []
        for tau in SWEEP_TAUS:
            rs = [at_tau(x["sweep"], tau) for x in g]
            cells.append(f"{ms([r['acc'] for r in rs], 100)} / "
                         f"{ms([r['nfe'] for r in rs], fmt='{:.2f}')}")
        out.append(f"| {NAMES[m]} | {t} | " + " | ".join(cells) + " |")
    return out + [""]


def section_per_run(groups, keys, study):
    out = ["## Per run", "", "| run | steps | wall min | acc % | NFE | legal % |",
           "|---|---|---|---|---|---|"]
    for m, t in keys:
        for x in groups[(m, t)]:
            r = at_tau(x["sweep"], TABLE_TAU)
            out.append(f"| {x['run'].name} | {x['step']:,} | {x['wall_s'] / 60:.1f} | "
                       f"{100 * r['acc']:.1f} | {r['nfe']:.2f} | {100 * r['legal']:.1f} |")
    return out


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_frontier(groups, keys, path, study, n_test):
    """Accuracy against NFE across tau per method, mean over seeds with +-1 std ribbons in
    accuracy and error bars in NFE: the paper's Figure 2."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, t in keys:
        g = groups[(m, t)]
        acc = 100 * np.array([[at_tau(x["sweep"], tau)["acc"] for tau in SWEEP_TAUS] for x in g])
        nfe = np.array([[at_tau(x["sweep"], tau)["nfe"] for tau in SWEEP_TAUS] for x in g])
        am, nm = acc.mean(0), nfe.mean(0)
        asd = acc.std(0, ddof=1) if len(g) > 1 else np.zeros_like(am)
        nsd = nfe.std(0, ddof=1) if len(g) > 1 else np.zeros_like(nm)
        style = "-" if t == "tied" else "--"
        ax.errorbar(nm, am, xerr=nsd, fmt="o" + style, color=COLORS[m], ms=4, capsize=2,
                    label=f"{NAMES[m]}" + (f" ({t})" if len(study.ties) > 1 else ""))
        order = np.argsort(nm)
        ax.fill_between(nm[order], (am - asd)[order], (am + asd)[order], color=COLORS[m], alpha=0.2)
    ax.set_xlabel(f"mean NFE (forward passes per puzzle); one point per tau, {SWEEP_TAUS[-1]} "
                  f"at the left ... {SWEEP_TAUS[0]} at the right", fontsize=8)
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"preset {study.preset}: {n_test} test puzzles, {study.steps:,} steps, mean ± 1 std over "
                 f"{len(study.seeds)} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_curves(groups, keys, path, study):
    """Accuracy and NFE at the training tau against optimizer steps, from each run's eval.jsonl:
    held-out puzzles solid, base training puzzles dashed; mean over seeds, +-1 std ribbons."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, t in keys:
        g = groups[(m, t)]
        steps = sorted(set.intersection(*[{r["step"] for r in x["history"]} for x in g]))
        for split, style in (("val", "-"), ("train", "--")):
            for ax, key, scale in ((axes[0], "acc", 100), (axes[1], "nfe", 1)):
                v = scale * np.array([[next(r for r in x["history"] if r["step"] == s)[f"{split}_{key}"]
                                       for s in steps] for x in g])
                mean = v.mean(0)
                sd = v.std(0, ddof=1) if len(g) > 1 else np.zeros_like(mean)
                label = (f"{NAMES[m]}" + (f" ({t})" if len(study.ties) > 1 else "") +
                         (" held-out" if split == "val" else " train"))
                ax.plot(steps, mean, style, color=COLORS[m], marker="o", ms=3, label=label,
                        alpha=1.0 if t == "tied" else 0.6)
                ax.fill_between(steps, mean - sd, mean + sd, color=COLORS[m], alpha=0.15)
    axes[0].set_ylabel("exact match (%)")
    axes[1].set_ylabel("mean NFE (log scale)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    n = groups[keys[0]][0]["eval_n"]
    fig.suptitle(f"preset {study.preset}: EMA weights at tau {TABLE_TAU} during training, {n} held-out "
                 f"validation puzzles (solid) and {n} base training puzzles (dashed); mean ± 1 std "
                 f"over {len(study.seeds)} seed(s)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# -----------------------------------------------------------------------------

def main(argv=None):
    args = p.parse_args(argv)
    ties = args.ties or PRESETS[args.preset]["ties"]
    train_argv = args.train_args.split()
    # the step budget and data settings exactly as train_sudoku.py will resolve them
    targs = train_sudoku.resolve_args(PRESETS[args.preset]["train"] + train_argv)
    if args.nproc > 1:   # the preset's batch is the global one: split it over the GPUs of a run
        if targs.batch_size % args.nproc:
            raise UsageError(f"--nproc {args.nproc}: does not divide the batch of "
                             f"{targs.batch_size}")
        train_argv += ["--batch-size", str(targs.batch_size // args.nproc)]
    steps = args.max_iters or targs.max_iters
    if steps < 2 * args.K:
        raise UsageError(f"--max-iters {steps}: need at least 2K = {2 * args.K} steps")
    cores = os.cpu_count() or 1
    jobs = args.jobs or PRESETS[args.preset]["jobs"] or (cores if targs.device == "cpu" else 1)
    study = Study(
        preset=args.preset, methods=args.methods, ties=ties, seeds=args.seeds, K=args.K,
        steps=steps, preset_steps=targs.max_iters, train_argv=train_argv, nproc=args.nproc,
        jobs=jobs, threads=args.threads or (max(1, cores // jobs) if targs.device == "cpu" else 1),
        runs_dir=args.runs_dir or os.path.join("out", "table1", args.preset),
        results_dir=args.results_dir or os.path.join("results", args.preset),
        argv=list(sys.argv[1:] if argv is None else argv))
    runs = [Run(m, t, s, study) for t in study.ties for m in study.methods for s in study.seeds]

    t0, started_at = time.time(), commit()
    if not args.report_only:
        train_runs(runs, study, targs, t0)
    log = os.path.join(study.runs_dir, "invocations.jsonl")   # wall time summed over invocations
    if not args.report_only:
        with open(log, "a") as f:
            f.write(json.dumps(dict(commit=started_at, argv=study.argv, wall_s=time.time() - t0))
                    + "\n")
    study.invocations = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
    groups = {}
    for r in runs:
        x = load_run(r)
        if x is not None:
            groups.setdefault((r.method, r.tie), []).append(x)
    if not groups:
        raise DataError(f"{study.runs_dir}: no finished run to report on")
    md = write_report(groups, study, sum(x["wall_s"] for x in study.invocations))
    print(md)
    print(f"wrote {study.results_dir}/table1.md, frontier.png, curves.png")
    return groups


def train_runs(runs, study, targs, t0):
    """Train and evaluate every run, study.jobs at once, each with study.threads threads."""
    if targs.data == "builtin":   # generate (and cache) the puzzles once, before the workers
        load_boards("builtin", "train", n_train=targs.n_train, n_val=targs.n_val,
                    n_test=targs.n_test, clues=targs.clues, seed=targs.data_seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(study.threads), MKL_NUM_THREADS=str(study.threads))
    # seed by seed (a complete comparison arrives early), longest first within a seed
    todo = sorted(runs, key=lambda r: (r.seed, -COST[r.method]))
    print(f"{len(runs)} runs ({study.steps:,} steps each) in {study.runs_dir}, {study.jobs} at "
          f"once, {study.threads} thread(s) each; logs in <run>/train.log")
    failed = []
    with concurrent.futures.ThreadPoolExecutor(study.jobs) as workers:
        futures = {workers.submit(do_run, r, study, env): r for r in todo}
        for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            r = futures[fut]
            try:
                dt = fut.result()
                print(f"[{n}/{len(runs)}] {r.name} done ({dt / 60:.1f} min this invocation, "
                      f"{(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
            except RuntimeError as e:
                failed.append(r.name)
                print(f"[{n}/{len(runs)}] {r.name} FAILED: {e}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; the report leaves them out")


if __name__ == "__main__":
    run_main(main)
