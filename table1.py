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
import dataclasses
import datetime
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import train_sudoku
from data.sudoku import EXTREME_TEST_ROWS, DataError, load_boards
from common import UsageError, atomic_write, finish_figure, finish_plot, load_checkpoint, run_main
from sample import SWEEP_TAUS

HERE = os.path.dirname(os.path.abspath(__file__))   # train_sudoku.py and sample.py sit beside us
METHODS = train_sudoku.METHODS          # the paper's four, then loopholing (Jo et al.)
TABLE1_METHODS = METHODS[:4]            # the default: the paper's Table 1 rows
NAMES = {"mlm": "MLM", "rollout": "Rollout", "relay_sg": "Relay (sg)", "relay": "Relay",
         "loopholing": "Loopholing"}
COLORS = {"mlm": "tab:gray", "rollout": "tab:blue", "relay_sg": "tab:orange", "relay": "tab:red",
          "loopholing": "tab:green"}
COST = {"mlm": 3, "rollout": 5, "relay_sg": 5, "relay": 5, "loopholing": 4}   # longest first
HINT_BANDS = (45, 40, 35, 30, 0)        # clues of the hinted real puzzles; 0 = the originals
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
p.add_argument("--methods", nargs="+", default=list(TABLE1_METHODS), choices=METHODS,
               help="methods to train (default: the paper's four; loopholing is the fifth)")
p.add_argument("--protocol", default="scratch", choices=["scratch", "finetune"],
               help="scratch: every method from random weights; finetune: one MLM base run per\n"
                    "seed and tie (--base-steps), then every method continued from its EMA weights")
p.add_argument("--base-steps", type=int, default=None,
               help="finetune: steps of the MLM base run (default: the preset's steps)")
p.add_argument("--real-data", default=None, metavar="CSV",
               help="also evaluate every run on these Sudoku-Extreme-format puzzles, hinted to\n"
                    f"each of {HINT_BANDS[:-1]} clues and as they are ('extreme': the hub's)")
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
p.add_argument("--rerun", default=None, metavar="RESULTS_DIR",
               help="results dir of another invocation that trained some of these seeds again "
                    "with other float kernels (e.g. --threads 2): the report sets how far each "
                    "run ends from its rerun beside the seed-to-seed spread")


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
    protocol: str = "scratch"
    base_steps: int = 0     # finetune: steps of the MLM base runs
    self_cond: float = 0.5  # loopholing's self-conditioning rate (its forward passes per step)
    real_data: str = None   # CSV of hard puzzles for the difficulty bands, or None
    rerun_dir: str = None   # results dir holding records of the same seeds trained again
    invocations: list = field(default_factory=list)   # every invocation so far (commit, wall_s)


def passes_per_step(method, study):
    """Forward passes per optimizer step: K for the rollouts, 1 for MLM, 1 + the expected share
    of self-conditioned boards for loopholing (its first pass has no backward)."""
    return {"mlm": 1, "loopholing": 1 + study.self_cond}.get(method, study.K)


class Run:
    def __init__(self, method, tie, seed, study, base=None):
        self.method, self.tie, self.seed = method, tie, seed
        self.base = base                                     # finetune: the MLM base Run
        self.name = f"{method}_base_{tie}_s{seed}" if base is None and study.protocol == \
            "finetune" else f"{method}_{tie}_s{seed}"
        self.dir = os.path.join(study.runs_dir, self.name)
        self.k = passes_per_step(method, study)
        is_base = study.protocol == "finetune" and base is None
        self.steps = study.base_steps if is_base else study.steps
        self.matched_steps = round(self.steps / self.k) if self.k != 1 and not is_base else None
        init = ["--init-from", base.ckpt] if base is not None else []
        self.train_argv = (PRESETS[study.preset]["train"] + study.train_argv + init +
                           ["--method", method, f"--{tie}", "--seed", str(seed),
                            "--K", str(study.K), "--out-dir", self.dir, "--no-progress"])
        self.sample_argv = PRESETS[study.preset]["sample"]
        self.ckpt = os.path.join(self.dir, "ckpt.pt")
        self.matched = os.path.join(self.dir, "ckpt_matched.pt")


def ckpt_step(path):
    """The optimizer step a checkpoint was saved at; 0 if there is none."""
    if not os.path.exists(path):
        return 0
    return load_checkpoint(path)["step"]


def run_logged(cmd, log_path, env):
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {r.returncode}); see {log_path}")


def evaluate_to(path_out, ckpt, taus, sample_argv, env, log_path, cohorts=True):
    """sample.py --json on ckpt; its rows are kept in path_out (skipped if already there).
    cohorts: label the deduction-only cohorts too (quick on generated puzzles, very slow on
    Sudoku-Extreme's, so off for those)."""
    step = ckpt_step(ckpt)
    if os.path.exists(path_out):
        rows = [json.loads(l) for l in open(path_out)]
        if rows and all(r["step"] == step for r in rows) and [r["tau"] for r in rows] == list(taus):
            return rows
    cmd = [sys.executable, os.path.join(HERE, "sample.py"), "--ckpt", ckpt, "--json",
           *(["--cohorts"] if cohorts else []), *sample_argv]
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
    if run.base is not None:                 # finetune: the base run first
        do_base(run.base, study, env)
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
    if run.method in train_sudoku.RELAY_METHODS:   # ablation: the same weights, h = 0 every pass
        evaluate_to(os.path.join(run.dir, "no_relay.jsonl"), run.ckpt, (TABLE_TAU,),
                    run.sample_argv + ["--no-relay"], env, log_path)
    evaluate_to(os.path.join(run.dir, "passes.jsonl"), run.ckpt, (TABLE_TAU,),
                run.sample_argv + ["--per-pass"], env, log_path, cohorts=False)
    if study.real_data:                      # hard real puzzles, hinted into difficulty bands
        for n in HINT_BANDS:
            hints = ["--hints", str(n)] if n else []
            evaluate_to(os.path.join(run.dir, f"real_h{n}.jsonl"), run.ckpt, (TABLE_TAU,),
                        ["--data", study.real_data, *hints], env, log_path, cohorts=False)
    return time.time() - t0


BASE_LOCKS = {}   # finetune: one lock per base run, so two workers never train it at once


def do_base(base, study, env):
    """A finetune base run, trained and evaluated once whichever worker asks first (the others
    wait for it; afterwards every step inside is a no-op)."""
    with BASE_LOCKS.setdefault(base.name, threading.Lock()):
        return do_run(base, study, env)


def launcher(study):
    if study.nproc > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={study.nproc}"]
    return [sys.executable]


# -----------------------------------------------------------------------------
# the report

def load_run(run, study):
    """Everything the report needs from a finished run, or None if unfinished: from its run
    directory, else from the record a report kept of it (results/<study>/runs/<name>.json), so
    the report can be rebuilt where the checkpoints are gone (a fresh clone, another machine)."""
    x = load_run_dir(run)
    if x is not None:
        return x
    path = record_path(study, run)
    if not os.path.exists(path):
        return None
    rec = json.load(open(path))
    if rec["step"] != run.steps:
        return None
    rec["real"] = {int(n): v for n, v in rec["real"].items()}    # JSON keys are strings
    return dict(rec, run=run)


def load_run_dir(run):
    sweep = os.path.join(run.dir, "sweep.jsonl")
    if not os.path.exists(sweep):
        return None
    ck = load_checkpoint(run.ckpt)
    if ck["step"] != run.steps:
        return None
    hist = [json.loads(l) for l in open(os.path.join(run.dir, "eval.jsonl"))]
    def first_row(name):
        path = os.path.join(run.dir, name)
        return json.loads(open(path).readline()) if os.path.exists(path) else None
    return dict(run=run, step=ck["step"], wall_s=ck["elapsed_s"], batch=ck["args"]["batch_size"],
                eval_n=ck["args"]["eval_n"],
                sweep=[json.loads(l) for l in open(sweep)], matched=first_row("matched.jsonl"),
                no_relay=first_row("no_relay.jsonl"), passes=first_row("passes.jsonl"),
                real={n: first_row(f"real_h{n}.jsonl") for n in HINT_BANDS},
                history=hist, params=sum(v.numel() for k, v in ck["model"].items()))


def record_path(study, run):
    return os.path.join(study.results_dir, "runs", f"{run.name}.json")


def write_records(groups, study):
    """Each reported run's figures as results/<study>/runs/<name>.json, and the invocations'
    log beside them (what load_run and the header read when the run directories are gone)."""
    for g in groups.values():
        for x in g:
            rec = {k: v for k, v in x.items() if k != "run"}
            path = record_path(study, x["run"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, json.dumps(rec, indent=0) + "\n")
    if study.invocations:
        atomic_write(os.path.join(study.results_dir, "runs", "invocations.jsonl"),
                     "".join(json.dumps(x) + "\n" for x in study.invocations))


def n_passes(steps, k):
    """Forward passes of `steps` optimizer steps at k per step, as an integer where it is one."""
    v = steps * k
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


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


def write_report(groups, study, total_wall_s, unfinished=()):
    """groups: {(method, tie): [loaded runs over seeds]}. Writes table1.md, frontier.png,
    curves.png and the other plots (rerun.png with --rerun) under study.results_dir, each
    atomically; returns the markdown."""
    os.makedirs(study.results_dir, exist_ok=True)
    keys = [(m, t) for t in study.ties for m in study.methods if groups.get((m, t))]
    lines = report_header(groups, keys, study, total_wall_s)
    if unfinished:
        lines += ["Unfinished runs, left out of every table and mean (curves.png draws them "
                  "dotted): " + "; ".join(f"{r.name} at step {h[-1]['step']:,} (held-out acc "
                  f"{100 * h[-1]['val_acc']:.1f} %, NFE {h[-1]['val_nfe']:.2f})"
                  for r, h in unfinished) + ". Rerunning the command resumes them.", ""]
    for section in (section_equal_steps, section_paired, section_rerun, section_cohorts,
                    section_equal_passes, section_ablation, section_real_bands, section_passes,
                    section_sweep, section_per_run):
        lines += section(groups, keys, study)
    md = "\n".join(lines) + "\n"
    atomic_write(os.path.join(study.results_dir, "table1.md"), md)
    write_records(groups, study)
    n_test = groups[keys[0]][0]["sweep"][0]["n"]
    out = study.results_dir
    plot_frontier(groups, keys, os.path.join(out, "frontier.png"), study, n_test)
    plot_curves(groups, keys, os.path.join(out, "curves.png"), study, unfinished)
    if all(groups[k][0]["passes"] for k in keys):
        plot_passes(groups, keys, os.path.join(out, "legality.png"), study)
    if ("mlm", keys[0][1]) in groups and len(keys) > 1:
        plot_gap(groups, keys, os.path.join(out, "gap.png"), study)
    if study.rerun_dir:
        plot_rerun(groups, keys, os.path.join(out, "rerun.png"), study)
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
        *([f"- protocol finetune: every run continues the EMA weights of an MLM base run of "
           f"{study.base_steps:,} steps (same seed and tie; optimizer fresh, R zero-initialised);"
           f" steps and forward passes below count the continuation only"]
          if study.protocol == "finetune" else []),
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
        paper = f"{PAPER[m][0]} / {PAPER[m][1]}" if t == "tied" and m in PAPER else ""
        out.append(f"| {NAMES[m]} | {t} | {len(g)} | {study.steps:,} | "
                   f"{n_passes(study.steps, g[0]['run'].k)} | {ms([x['wall_s'] / 60 for x in g])} | "
                   f"{ms([r['acc'] for r in rs], 100)} | {ms([r['nfe'] for r in rs], fmt='{:.2f}')}"
                   f" | {ms([r['legal'] for r in rs], 100)} | {ms([r['cell_acc'] for r in rs], 100)}"
                   f" | {paper} |")
    return out + ["", "Forward passes = steps x passes per step (K; 1 for MLM; 1 + the "
                  "self-conditioning rate for loopholing), each over a batch of boards; wall time includes "
                  "the periodic evaluations. The paper's column is Sudoku-Extreme at 300k steps "
                  f"(METHOD.md 8; legal boards there: Relay {PAPER_LEGAL['relay']} %, Relay (sg) "
                  f"{PAPER_LEGAL['relay_sg']} %).", ""]


# two-sided 95 % quantiles of Student's t by degrees of freedom (a table: no scipy needed);
# an unlisted df takes the next smaller listed one, which only widens the interval
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t_interval(values):
    """(mean, sample std, half-width of the 95 % t interval) over seeds; None for < 2 values."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    df = len(v) - 1
    t = T975[max(d for d in T975 if d <= df)]
    sd = v.std(ddof=1)
    return v.mean(), sd, t * sd / np.sqrt(len(v))


def frontier_gap(run, base):
    """Two ways to compare runs' accuracy-NFE frontiers (piecewise linear through the tau
    sweep), accuracy points of `run` minus `base`: at base's tau-0.15 NFE (None where run's
    sweep does not reach that NFE), and the mean vertical gap over the NFE range both sweeps
    cover (None where they do not overlap)."""
    def curve(x):
        pts = sorted((r["nfe"], 100 * r["acc"]) for r in x["sweep"])
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    rn, ra = curve(run)
    bn, ba = curve(base)
    b0 = at_tau(base["sweep"], TABLE_TAU)
    at_base = (float(np.interp(b0["nfe"], rn, ra)) - 100 * b0["acc"]
               if rn[0] <= b0["nfe"] <= rn[-1] else None)
    lo, hi = max(rn[0], bn[0]), min(rn[-1], bn[-1])
    if lo >= hi:
        return at_base, None
    grid = np.linspace(lo, hi, 201)
    return at_base, float(np.mean(np.interp(grid, rn, ra) - np.interp(grid, bn, ba)))


def passes_at_accuracy(run, base):
    """The other side of the frontier comparison: the NFE `run` needs, interpolated linearly
    along its tau sweep, to reach base's tau-0.15 accuracy, minus base's NFE there (None where
    run's sweep does not span that accuracy). Defined where frontier_gap's is not when run's
    whole sweep lies at fewer passes than base's."""
    pts = sorted((100 * r["acc"], r["nfe"]) for r in run["sweep"])
    ra, rn = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    b0 = at_tau(base["sweep"], TABLE_TAU)
    if not ra[0] <= 100 * b0["acc"] <= ra[-1]:
        return None
    return float(np.interp(100 * b0["acc"], ra, rn)) - b0["nfe"]


def by_seed(runs):
    """{seed: loaded run} of one method's runs (a groups value)."""
    return {x["run"].seed: x for x in runs}


def paired_rows(groups, m, t):
    """Per seed that both `m` and MLM (same tie) finished: m minus MLM at tau 0.15 (accuracy
    points, NFE), at MLM's NFE on m's frontier, the passes m needs for MLM's accuracy, the
    mean frontier gap, and at the last validation (accuracy points, NFE)."""
    base = by_seed(groups[("mlm", t)])
    rows = []
    for x in sorted(groups[(m, t)], key=lambda x: x["run"].seed):
        b = base.get(x["run"].seed)
        if b is None:
            continue
        r, r0 = at_tau(x["sweep"], TABLE_TAU), at_tau(b["sweep"], TABLE_TAU)
        at_nfe, mean_gap = frontier_gap(x, b)
        hx, hb = x["history"][-1] if x["history"] else None, b["history"][-1] if b["history"] else None
        val = (100 * (hx["val_acc"] - hb["val_acc"]), hx["val_nfe"] - hb["val_nfe"]) \
            if hx and hb and hx["step"] == hb["step"] else (None, None)
        rows.append(dict(seed=x["run"].seed, acc=100 * (r["acc"] - r0["acc"]),
                         nfe=r["nfe"] - r0["nfe"], at_nfe=at_nfe,
                         nfe_at_acc=passes_at_accuracy(x, b), gap=mean_gap,
                         val_acc=val[0], val_nfe=val[1]))
    return rows


PAIRED_COLUMNS = (("acc", "acc points, tau 0.15", "{:+.1f}"), ("nfe", "NFE, tau 0.15", "{:+.2f}"),
                  ("at_nfe", "acc points at MLM's NFE", "{:+.1f}"),
                  ("nfe_at_acc", "NFE at MLM's acc", "{:+.2f}"),
                  ("gap", "mean frontier gap, acc points", "{:+.1f}"),
                  ("val_acc", "validation acc points, last step", "{:+.1f}"),
                  ("val_nfe", "validation NFE, last step", "{:+.2f}"))


def section_paired(groups, keys, study):
    """Each method minus MLM, seed by seed (the same seed's puzzles, data order and init), with
    the mean, the sample std and a 95 % t interval over seeds."""
    pairs = [(m, t) for m, t in keys if m != "mlm" and ("mlm", t) in groups
             and len(paired_rows(groups, m, t)) >= 2]
    if not pairs:
        return []
    out = [f"## Paired by seed: method minus MLM", "",
           "Per seed, the method's figure minus MLM's for the same seed. tau 0.15: EMA weights on "
           "the test puzzles. At MLM's NFE: the method's accuracy interpolated linearly along its "
           "tau sweep at the NFE MLM needs at tau 0.15 (blank where the method's sweep does not "
           "reach it). NFE at MLM's acc: the passes the method needs, interpolated along its "
           "sweep, to reach MLM's tau-0.15 accuracy, minus MLM's (blank where its sweep does "
           "not span that accuracy). Mean frontier gap: the vertical distance between the two "
           "accuracy-NFE curves averaged over the NFE range both cover. Validation: the last periodic "
           "evaluation (the validation puzzles). Interval: mean ± t(0.975, n-1) x std / sqrt(n) "
           "over seeds (Student's t; it assumes the seed-to-seed differences are roughly normal).",
           ""]
    for m, t in pairs:
        rows = paired_rows(groups, m, t)
        out += [f"### {NAMES[m]} minus MLM ({t})", "",
                "| seed | " + " | ".join(c[1] for c in PAIRED_COLUMNS) + " |",
                "|---|" + "---|" * len(PAIRED_COLUMNS)]
        for r in rows:
            out.append(f"| {r['seed']} | " + " | ".join(
                fmt.format(r[k]) if r[k] is not None else "" for k, _, fmt in PAIRED_COLUMNS) + " |")
        for label, i in (("mean", 0), ("std", 1), ("95 % interval", None)):
            cells = []
            for k, _, fmt in PAIRED_COLUMNS:
                s = t_interval([r[k] for r in rows if r[k] is not None])
                if s is None:
                    cells.append("")
                elif i is None:
                    cells.append(f"{fmt.format(s[0] - s[2])} to {fmt.format(s[0] + s[2])}")
                else:
                    cells.append(fmt.format(s[i]).lstrip("+") if i == 1 else fmt.format(s[i]))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def load_reruns(keys, study):
    """The runs of the invocation in study.rerun_dir, shaped like the report's groups
    ({(method, tie): [loaded run]}), from its records (runs/<name>.json; a run directory is
    never read there), and that invocation's command lines."""
    other = dataclasses.replace(study, results_dir=study.rerun_dir,
                                runs_dir=os.path.join(study.rerun_dir, "runs"))
    reruns = {}
    for m, t in keys:
        for path in sorted(glob.glob(os.path.join(other.runs_dir, f"{m}_{t}_s*.json"))):
            seed = int(path.rsplit("_s", 1)[1][:-len(".json")])
            x = load_run(Run(m, t, seed, other), other)
            if x is not None:
                reruns.setdefault((m, t), []).append(x)
    log = os.path.join(other.runs_dir, "invocations.jsonl")
    argvs = [json.loads(line)["argv"] for line in open(log)] if os.path.exists(log) else []
    return reruns, argvs


def run_figures(x):
    """tau-0.15 accuracy (%) and NFE on the test puzzles, validation accuracy (%) at the last
    periodic evaluation."""
    r = at_tau(x["sweep"], TABLE_TAU)
    return 100 * r["acc"], r["nfe"], 100 * x["history"][-1]["val_acc"]


def section_rerun(groups, keys, study):
    """The same seed trained again with other float kernels: rerun minus run per figure,
    beside the std of that figure over this report's seeds (how much of the seed-to-seed
    spread the float noise alone would give); then each method's paired difference with MLM
    (paired_rows) in the runs and in the reruns, beside its std over seeds."""
    if not study.rerun_dir:
        return []
    reruns, argvs = load_reruns(keys, study)
    pairs = [(m, t, s) for m, t in keys for s in sorted(by_seed(reruns.get((m, t), [])))
             if s in by_seed(groups[(m, t)])]
    if not pairs:
        return []
    cmds = "; ".join(f"`python table1.py {shlex.join(a)}`" for a in argvs) or "command not kept"
    out = ["## Same seed, trained again: how much is floating-point noise", "",
           f"The runs in `{study.rerun_dir}` repeat seeds of this report with other float "
           f"kernels ({cmds}): the same seed, puzzles, initial weights and data order; only the "
           f"order in which floating-point sums are taken differs. Each figure: this report's "
           f"run / the rerun / rerun minus run; last column: the sample std of the figure over "
           f"this report's seeds.", "",
           "| method | seed | acc %, tau 0.15 | NFE, tau 0.15 | validation acc %, last step | "
           "std over seeds: acc / NFE / validation |", "|---|---|---|---|---|---|"]
    def std(values):
        return np.std(values, ddof=1) if len(values) > 1 else float("nan")
    for m, t, s in pairs:
        a = run_figures(by_seed(groups[(m, t)])[s])
        b = run_figures(by_seed(reruns[(m, t)])[s])
        spread = [std([run_figures(x)[i] for x in groups[(m, t)]]) for i in range(3)]
        def cell(i, f):     # run / rerun / signed difference, f a "{:.Nf}" format
            signed = f.replace("{:", "{:+")
            return f"{f.format(a[i])} / {f.format(b[i])} / {signed.format(b[i] - a[i])}"
        out.append(f"| {NAMES[m]} ({t}) | {s} | {cell(0, '{:.1f}')} | {cell(1, '{:.2f}')} | "
                   f"{cell(2, '{:.1f}')} | {spread[0]:.1f} / {spread[1]:.2f} / {spread[2]:.1f} |")
    diffs = []
    figures = (("acc", "{:+.1f}"), ("nfe", "{:+.2f}"), ("nfe_at_acc", "{:+.2f}"),
               ("val_acc", "{:+.1f}"))
    fmt = lambda r: " / ".join("n/a" if r[k] is None else f.format(r[k]) for k, f in figures)
    for m, t in keys:
        if m == "mlm" or ("mlm", t) not in reruns or (m, t) not in reruns:
            continue
        rows = paired_rows(groups, m, t)
        ours = {r["seed"]: r for r in rows}
        again = {r["seed"]: r for r in paired_rows(reruns, m, t)}
        sd = [std([r[k] for r in rows if r[k] is not None]) for k, _ in figures]
        for s in sorted(set(ours) & set(again)):
            diffs.append(f"{NAMES[m]} minus MLM ({t}), seed {s} (acc points, tau 0.15 / NFE, "
                         f"tau 0.15 / NFE at MLM's acc / validation acc points): {fmt(ours[s])} "
                         f"in this report's runs, {fmt(again[s])} in the reruns; the std of "
                         f"this difference over seeds is " + " / ".join(
                             "n/a" if np.isnan(v) else f"{v:.{d}f}" for v, d in zip(sd, (1, 2, 2, 1)))
                         + ".")
        # The paired interval again, each method's rerun seeds replacing their runs
        swapped = {k: [by_seed(reruns[k]).get(x["run"].seed, x) for x in groups[k]]
                   for k in (("mlm", t), (m, t))}
        spans = []
        for k, label in (("acc", "acc points at tau 0.15"), ("nfe_at_acc", "NFE at MLM's acc")):
            f = dict(figures)[k]
            was, now = (t_interval([r[k] for r in paired_rows(g, m, t) if r[k] is not None])
                        for g in (groups, swapped))
            if was and now:
                spans.append(f"{label} {f.format(now[0])} ({f.format(now[0] - now[2])} to "
                             f"{f.format(now[0] + now[2])}; with the runs "
                             f"{f.format(was[0] - was[2])} to {f.format(was[0] + was[2])})")
        if spans:
            diffs.append(f"With the reruns in place of their runs, the 95 % t interval of "
                         f"{NAMES[m]} minus MLM over seeds: " + "; ".join(spans) + ".")
    return out + [""] + ([" ".join(diffs), ""] if diffs else []) + [
        "![validation accuracy of each seed, the rerun dashed](rerun.png)", ""]


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
        paper = f"{PAPER[m][2]} / {PAPER[m][3]}" if t == "tied" and m in PAPER else ""
        out.append(f"| {NAMES[m]} | {t} | " + " | ".join(cells) + f" | {paper} |")
    return out + ["", "deduction_only: solved by the labeller without brute force and with at "
                  "least one advanced strategy (METHOD.md 6); no_brute_force: solved without "
                  "brute force.", ""]


def section_equal_passes(groups, keys, study):
    if not any(groups[k][0]["matched"] for k in keys):
        return []
    out = [f"## At equal forward passes, tau {TABLE_TAU}", "",
           "Each K-pass method evaluated at steps / K (loopholing: steps / (1 + its "
           "self-conditioning rate)), where it has made as many forward passes as MLM at its end.",
           "",
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
        out.append(f"| {NAMES[m]} | {t} | {steps:,} | {n_passes(steps, run.k)} | "
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


def band_name(n):
    return "originals" if n == 0 else f"{n} clues"


def section_real_bands(groups, keys, study):
    bands = [n for n in HINT_BANDS if all(x["real"][n] for k in keys for x in groups[k])]
    if not bands:
        return []
    r0 = groups[keys[0]][0]["real"][bands[0]]
    out = [f"## Real hard puzzles by difficulty band, tau {TABLE_TAU}", "",
           f"{r0['n']} Sudoku-Extreme-format puzzles (`{os.path.basename(study.real_data or '')}`),"
           f" hinted: solution cells revealed at random (seed 0) up to the band's clue count; "
           f"`originals` as given. Exact match % / cell accuracy % / NFE.", "",
           "| method | output | " + " | ".join(band_name(n) for n in bands) + " |",
           "|---|---|" + "---|" * len(bands)]
    for m, t in keys:
        cells = []
        for n in bands:
            rs = [x["real"][n] for x in groups[(m, t)]]
            cells.append(f"{ms([r['acc'] for r in rs], 100)} / {ms([r['cell_acc'] for r in rs], 100)}"
                         f" / {ms([r['nfe'] for r in rs], fmt='{:.1f}')}")
        out.append(f"| {NAMES[m]} | {t} | " + " | ".join(cells) + " |")
    return out + [""]


PASS_MARKS = (1, 2, 4, 8, 16)


def section_passes(groups, keys, study):
    if not all(groups[k][0]["passes"] for k in keys):
        return []
    out = [f"## The partial board after each pass (legality.png), tau {TABLE_TAU}", "",
           "Fraction of test boards whose committed cells are all correct / break no rule "
           "(blanks allowed), and the fraction of cells filled, after pass p. The paper's 74.8 % "
           "\"fully legal boards\" (Relay) is this kind of count; a board that is full and "
           "consistent here is solved.", "",
           "| method | output | " + " | ".join(f"pass {p}: correct / consistent / filled"
                                             for p in PASS_MARKS) + " |",
           "|---|---|" + "---|" * len(PASS_MARKS)]
    for m, t in keys:
        cells = []
        for p in PASS_MARKS:
            vals = {c: [x["passes"]["per_pass"][c][min(p, len(x["passes"]["per_pass"][c])) - 1]
                        for x in groups[(m, t)]] for c in ("correct", "consistent", "filled")}
            cells.append(" / ".join(ms(vals[c], 100) for c in ("correct", "consistent", "filled")))
        out.append(f"| {NAMES[m]} | {t} | " + " | ".join(cells) + " |")
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
    finish_plot(fig, ax, path, f"mean NFE (forward passes per puzzle); one point per tau, "
                f"{SWEEP_TAUS[-1]} at the left ... {SWEEP_TAUS[0]} at the right", "exact match (%)",
                f"preset {study.preset}: {n_test} test puzzles, {study.steps:,} steps, mean ± 1 std "
                f"over {seeds_done(groups)}", xlabel_size=8)


def plot_curves(groups, keys, path, study, unfinished=()):
    """Accuracy and NFE at tau 0.15 during training, from each run's eval.jsonl: against
    optimizer steps (top; held-out solid, base training puzzles dashed) and against forward
    passes (bottom; held-out). Mean over seeds with +-1 std ribbons, each seed's held-out curve
    thin beneath it; unfinished runs
    (`unfinished`: (run, history) pairs) as thin dotted lines, not in any mean."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for m, t in keys:
        g = groups[(m, t)]
        k = g[0]["run"].k
        steps = sorted(set.intersection(*[{r["step"] for r in x["history"]} for x in g]))
        for split, style in (("val", "-"), ("train", "--")):
            for col, key, scale in ((0, "acc", 100), (1, "nfe", 1)):
                v = scale * np.array([[next(r for r in x["history"] if r["step"] == s_)
                                       [f"{split}_{key}"] for s_ in steps] for x in g])
                mean = v.mean(0)
                sd = v.std(0, ddof=1) if len(g) > 1 else np.zeros_like(mean)
                label = (f"{NAMES[m]}" + (f" ({t})" if len(study.ties) > 1 else "") +
                         (" held-out" if split == "val" else " train"))
                rows = ((0, np.array(steps)), (1, k * np.array(steps))) if split == "val" else \
                    ((0, np.array(steps)),)
                for row, x_ in rows:
                    ax = axes[row, col]
                    ax.plot(x_, mean, style, color=COLORS[m], marker="o", ms=3, label=label,
                            alpha=1.0 if t == "tied" else 0.6)
                    ax.fill_between(x_, mean - sd, mean + sd, color=COLORS[m], alpha=0.15)
                    if split == "val" and len(g) > 1:     # every seed, thin, beneath the mean
                        for seed_curve in v:
                            ax.plot(x_, seed_curve, "-", color=COLORS[m], lw=0.6, alpha=0.45)
    for run, hist in unfinished:
        st = np.array([r["step"] for r in hist])
        for col, key, scale in ((0, "acc", 100), (1, "nfe", 1)):
            v = scale * np.array([r[f"val_{key}"] for r in hist])
            for row, x_ in ((0, st), (1, run.k * st)):
                axes[row, col].plot(x_, v, ":", color=COLORS[run.method], lw=1, marker=".",
                                    label=f"{NAMES[run.method]} seed {run.seed} held-out "
                                          f"(unfinished, step {st[-1]:,})")
    for col, name in ((0, "exact match (%)"), (1, "mean NFE (log scale)")):
        for row, xlabel in ((0, "optimizer step"),
                            (1, "training forward passes (steps x passes per step)")):
            ax = axes[row, col]
            ax.set_ylabel(name)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if col == 1:
                log_axis(ax)
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[1, 0].legend(fontsize=7)
    n = groups[keys[0]][0]["eval_n"]
    finish_figure(fig, path, f"preset {study.preset}: EMA weights at tau {TABLE_TAU} during "
                  f"training\n{n} held-out validation puzzles (solid), {n} base training "
                  f"puzzles (dashed); mean ± 1 std over the finished seeds, each seed's held-out "
                  f"curve thin")


def plot_rerun(groups, keys, path, study):
    """Validation accuracy during training, one panel per method: every seed of the report
    thin, each rerun seed's original run solid and its rerun (study.rerun_dir) dashed, so the
    distance float noise alone opens can be read against the seed-to-seed spread."""
    reruns, _ = load_reruns(keys, study)
    keys = [k for k in keys if reruns.get(k)]
    if not keys:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), sharey=True,
                             squeeze=False)
    curve = lambda x: ([r["step"] for r in x["history"]],
                       [100 * r["val_acc"] for r in x["history"]])
    for ax, (m, t) in zip(axes[0], keys):
        seeds = sorted(x["run"].seed for x in groups[(m, t)])
        for i, x in enumerate(groups[(m, t)]):
            ax.plot(*curve(x), "-", color=COLORS[m], lw=0.7, alpha=0.35,
                    label=f"seeds {', '.join(map(str, seeds))}" if i == 0 else None)
        for again in reruns[(m, t)]:
            seed = again["run"].seed
            first = by_seed(groups[(m, t)]).get(seed)
            if first is None:
                continue
            ax.plot(*curve(first), "-", color=COLORS[m], lw=2, marker="o", ms=3,
                    label=f"seed {seed}")
            ax.plot(*curve(again), "--", color="black", lw=1.5, marker="o", ms=3,
                    label=f"seed {seed} trained again")
        ax.set_title(NAMES[m] + (f" ({t})" if len(study.ties) > 1 else ""))
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("held-out exact match at tau 0.15 (%)")
    finish_figure(fig, path, f"preset {study.preset}: the same seed trained again with other "
                  f"float kernels ({study.rerun_dir}) against the spread over seeds")


def seeds_done(groups):
    """'seed 1' / 'seeds 1, 2': the seeds with a finished run (what the means are over)."""
    seeds = sorted({x["run"].seed for g in groups.values() for x in g})
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def log_axis(ax):
    """A log-scale y axis labelled with plain numbers (NFE spans 5-60)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain_numbers())
    ax.yaxis.set_minor_formatter(plain_numbers())


def plain_numbers():
    from matplotlib.ticker import ScalarFormatter
    f = ScalarFormatter()
    f.set_scientific(False)
    return f


def plot_passes(groups, keys, path, study):
    """Per pass: boards still all-correct (solid), rule-consistent (dashed), cells filled
    (right panel); mean over seeds."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, t in keys:
        g = groups[(m, t)]
        n = min(len(x["passes"]["per_pass"]["correct"]) for x in g)
        p = np.arange(1, n + 1)
        for c, style, ax in (("correct", "-", axes[0]), ("consistent", "--", axes[0]),
                             ("filled", "-", axes[1])):
            v = 100 * np.mean([x["passes"]["per_pass"][c][:n] for x in g], 0)
            ax.plot(p, v, style, color=COLORS[m], label=f"{NAMES[m]} {c}" if c != "filled"
                    else NAMES[m], alpha=1.0 if t == "tied" else 0.6)
    axes[0].set_ylabel("boards (%)")
    axes[1].set_ylabel("cells filled (%)")
    for ax in axes:
        ax.set_xlabel("pass")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain_numbers())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    finish_figure(fig, path, f"{study.preset}: test boards after each pass at tau {TABLE_TAU}; "
                  f"left: all committed cells correct (solid) / no rule broken (dashed); mean "
                  f"over {seeds_done(groups)}")


def plot_gap(groups, keys, path, study):
    """Each method minus MLM (same tie, mean over seeds), at tau 0.15: exact match and NFE
    against the difficulty band of the real puzzles (left) and against training steps on the
    held-out split (right; equal steps)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for m, t in keys:
        if m == "mlm" or ("mlm", t) not in groups:
            continue
        g, base = groups[(m, t)], groups[("mlm", t)]
        bands = [n for n in HINT_BANDS if all(x["real"][n] for x in g + base)]
        for row, key, scale in ((0, "acc", 100), (1, "nfe", 1)):
            if bands:
                d = [scale * (np.mean([x["real"][n][key] for x in g]) -
                              np.mean([x["real"][n][key] for x in base])) for n in bands]
                axes[row, 0].plot(range(len(bands)), d, "o-", color=COLORS[m], label=NAMES[m])
                axes[row, 0].set_xticks(range(len(bands)), [band_name(n) for n in bands])
            steps = sorted(set.intersection(*[{r["step"] for r in x["history"]} for x in g + base]))
            val = lambda grp, s_: np.mean([next(r for r in x["history"] if r["step"] == s_)
                                           [f"val_{key}"] for x in grp])
            axes[row, 1].plot(steps, [scale * (val(g, s_) - val(base, s_)) for s_ in steps], "o-",
                              color=COLORS[m], label=NAMES[m])
    for ax, title in zip(axes.flat, ("exact match, method - MLM (points) by band",
                                     "exact match, method - MLM (points) by steps",
                                     "NFE, method - MLM by band", "NFE, method - MLM by steps")):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:    # the band panels are empty without --real-data
            ax.legend(fontsize=7)
    axes[1, 0].set_xlabel("real puzzles: hinted to N clues ... originals (harder to the right)")
    axes[1, 1].set_xlabel("optimizer step (held-out generated puzzles)")
    finish_figure(fig, path, f"{study.preset}: where the relay helps or hurts, tau "
                  f"{TABLE_TAU}, mean over {seeds_done(groups)}")


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
    name = args.preset + ("_finetune" if args.protocol == "finetune" else "")
    study = Study(
        preset=args.preset, methods=args.methods, ties=ties, seeds=args.seeds, K=args.K,
        steps=steps, preset_steps=targs.max_iters, train_argv=train_argv, nproc=args.nproc,
        jobs=jobs, threads=args.threads or (max(1, cores // jobs) if targs.device == "cpu" else 1),
        runs_dir=args.runs_dir or os.path.join("out", "table1", name),
        results_dir=args.results_dir or os.path.join("results", name),
        argv=list(sys.argv[1:] if argv is None else argv), protocol=args.protocol,
        base_steps=args.base_steps or targs.max_iters, self_cond=targs.self_cond,
        real_data=args.real_data, rerun_dir=args.rerun)
    if args.rerun and not os.path.isdir(os.path.join(args.rerun, "runs")):
        raise UsageError(f"--rerun {args.rerun}: no runs/ records there (run that invocation's "
                         f"report first)")
    bases = {(t, s): Run("mlm", t, s, study) for t in study.ties for s in study.seeds
             } if args.protocol == "finetune" else {}
    runs = [Run(m, t, s, study, base=bases.get((t, s)))
            for t in study.ties for m in study.methods for s in study.seeds]

    t0, started_at = time.time(), commit()
    if not args.report_only:
        train_runs(runs, study, targs, t0)
    log = os.path.join(study.runs_dir, "invocations.jsonl")   # wall time summed over invocations
    if not args.report_only:
        with open(log, "a") as f:
            f.write(json.dumps(dict(commit=started_at, argv=study.argv, wall_s=time.time() - t0))
                    + "\n")
    if not os.path.exists(log):          # the runs are gone: the copy the last report kept
        log = os.path.join(study.results_dir, "runs", "invocations.jsonl")
    study.invocations = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
    groups, unfinished = {}, []
    for r in runs:
        x = load_run(r, study)
        if x is not None:
            groups.setdefault((r.method, r.tie), []).append(x)
        elif os.path.exists(os.path.join(r.dir, "eval.jsonl")):
            hist = [json.loads(line) for line in open(os.path.join(r.dir, "eval.jsonl"))]
            if hist:
                unfinished.append((r, hist))
    if not groups:
        raise DataError(f"{study.runs_dir}: no finished run to report on")
    md = write_report(groups, study, sum(x["wall_s"] for x in study.invocations), unfinished)
    print(md)
    print(f"wrote {study.results_dir}/table1.md, frontier.png, curves.png")
    return groups


def train_runs(runs, study, targs, t0):
    """Train and evaluate every run, study.jobs at once, each with study.threads threads."""
    if targs.data == "builtin":   # generate (and cache) the puzzles once, before the workers
        load_boards("builtin", "train", n_train=targs.n_train, n_val=targs.n_val,
                    n_test=targs.n_test, clues=targs.clues, seed=targs.data_seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(study.threads), MKL_NUM_THREADS=str(study.threads))
    # finetune: the base runs first, side by side (a method waiting on its base idles a
    # worker); then seed by seed (a complete comparison arrives early), longest first
    bases = list({r.base.name: r.base for r in runs if r.base is not None}.values())
    todo = sorted(bases, key=lambda r: r.seed) + sorted(runs, key=lambda r: (r.seed, -COST[r.method]))
    print(f"{len(todo)} runs ({study.steps:,} steps each) in {study.runs_dir}, {study.jobs} at "
          f"once, {study.threads} thread(s) each; logs in <run>/train.log")
    failed = []
    with concurrent.futures.ThreadPoolExecutor(study.jobs) as workers:
        futures = {workers.submit(do_base if r in bases else do_run, r, study, env): r
                   for r in todo}
        for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            r = futures[fut]
            try:
                dt = fut.result()
                print(f"[{n}/{len(todo)}] {r.name} done ({dt / 60:.1f} min this invocation, "
                      f"{(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
            except RuntimeError as e:
                failed.append(r.name)
                print(f"[{n}/{len(todo)}] {r.name} FAILED: {e}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; the report leaves them out")


if __name__ == "__main__":
    run_main(main)
