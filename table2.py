"""
The paper's Table 2 in miniature, on a CPU: a toy block-diffusion LM (a small Qwen2 in Fast-dLLM
v2's layout, one token per character) learns a verifiable task by vanilla block-diffusion SFT
from scratch (the "Fast-dLLM v2" base): Sudoku as text (data/sudoku_text.py: 81 digits in, the
solution's 81 out), or three toy tasks (data/toy_tasks.py: add, prefix, rotate). Then every
method of train_llm.py fine-tunes that base for the same steps, plus SFT for K times as many (the
same forward passes as a K-pass method). Each model decodes the held-out test prompts with the
cached block decoder (sample_llm.generate, the paper's threshold 0.85, 8-token sub-blocks) and a
sweep of thresholds, and at 0.85 once more with Fast-dLLM v2's intra-block cache (approximate);
relay-trained models also with h = 0 and with R(h) added at revealed tokens too (the rule the
paper avoids); the score is exact match (and per toy task, or Sudoku's cell accuracy and legal
rate), and NFE both ways (METHOD.md 7).

    python table2.py --preset sudoku           # results/sudoku_llm/: table2.md, frontier.png
    python table2.py --preset toy              # results/toy_llm/
    python table2.py --preset sudoku --report-only

Everything resumes: data, base and runs are skipped when finished and a run cut off continues
from its checkpoint (train_llm.py --resume); evaluations are cached in each run's eval.json.
"""
import argparse
import concurrent.futures
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from common import UsageError, atomic_write, finish_plot, load_checkpoint, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("toy_tasks", os.path.join(HERE, "data", "toy_tasks.py"))
toy_tasks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy_tasks)
from data import sudoku_text  # noqa: E402

TABLE_TAU = 0.85                              # the paper's decoding threshold
SWEEP_TAUS = (0.99, 0.95, 0.9, 0.85, 0.7, 0.5)
METHODS = ("sft", "rollout", "relay_sg", "relay")
PRESETS = {
    # sized for about an hour on 2 CPU cores (results/toy_llm); one thread per run, two runs at once
    # (rotary base 1e4, not Qwen2.5's 1e6: on the same data the 1e6 model was not yet copying at
    # step 400 where this one was, results/toy_llm; sequence 96 holds the longest row, the running sum,
    # with its block filled)
    "toy": dict(task="toy", n_train=20000, n_eval=100, hidden=128, layers=4, heads=4,
                rope_theta=1e4, seq_len=96, batch=16, base_steps=2400, base_lr=3e-3, ft_steps=300,
                ft_lr=3e-4),
    # Sudoku as text (data/sudoku_text.py): generated puzzles with 45-50 clues, 8 symmetries of
    # each of the 6,000 training puzzles; prompt template + 81 digits + answer 81 digits + stop
    # = 182 tokens, so sequence 192. With the cpu preset's 30-40 clues this base got 33 % of the
    # blanks right and no board after 2,000 of 3,000 steps; with 45-50, 72 % and 2-3 % of boards
    # after 1,000, 24 % after 2,000, with 54 % fewer passes at tau 0.5 than at 0.99 (100
    # validation puzzles; results/sudoku_llm/README.md). A 2,000-step schedule anneals too early
    # (6.0 % of the test boards, below the first gate; results/sudoku_llm/README.md): the base
    # trains the sized 3,000 steps
    "sudoku": dict(task="sudoku", clues="45-50", copies=8, n_eval=300, hidden=128, layers=4,
                   heads=4, rope_theta=1e4, seq_len=192, batch=16, base_steps=3000, base_lr=3e-3,
                   ft_steps=300, ft_lr=3e-4),
    # seconds: the tests' end-to-end runs
    "smoke": dict(task="toy", n_train=60, n_eval=4, hidden=32, layers=1, heads=2, rope_theta=1e4,
                  seq_len=96, batch=2, base_steps=4, base_lr=1e-3, ft_steps=2, ft_lr=3e-4),
    "smoke_sudoku": dict(task="sudoku", clues="45-50", copies=1, n_eval=4, n_train=12, n_split=4,
                         hidden=32, layers=1,
                         heads=2, rope_theta=1e4, seq_len=192, batch=2,
                         base_steps=4, base_lr=1e-3, ft_steps=2, ft_lr=3e-4),
}

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--preset", default="sudoku", choices=list(PRESETS), help="task, sizes and budgets")
p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
               help="fine-tuning methods (sft also runs at K x the steps: equal forward passes)")
p.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="one fine-tune per seed")
p.add_argument("--K", type=int, default=2, help="forwards per update of the rollout methods")
p.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per core)")
p.add_argument("--runs-dir", default=None, help="default: out/table2/<preset>")
p.add_argument("--results-dir", default=None, help="default: results/toy_llm (toy preset)")
p.add_argument("--report-only", action="store_true", help="no training: table from what exists")
p.add_argument("--probe", default=None, metavar="CKPT",
               help="only decode --probe-data's first --probe-n rows with this checkpoint at\n"
                    f"tau {SWEEP_TAUS[0]}, {TABLE_TAU}, {SWEEP_TAUS[-1]} (is a base in the gates?)")
p.add_argument("--probe-data", default=None, help="jsonl rows for --probe (e.g. <data>/val.jsonl)")
p.add_argument("--probe-n", type=int, default=100, help="rows --probe decodes")


class Run:
    """One trained model: its directory, how it is trained, and from what."""

    def __init__(self, name, method, steps, lr, seed, init, runs_dir):
        self.name, self.method, self.steps, self.lr, self.seed, self.init = \
            name, method, steps, lr, seed, init
        self.dir = os.path.join(runs_dir, name)
        self.ckpt = os.path.join(self.dir, "ckpt")

    def step(self):
        path = os.path.join(self.ckpt, "state.pt")
        return load_checkpoint(path)["step"] if os.path.exists(path) else 0


def plan(args, cfg, runs_dir):
    """The base run, then every (method, seed) fine-tune, sft also at K x the steps."""
    base = Run("base", "sft", cfg["base_steps"], cfg["base_lr"], 0, os.path.join(runs_dir, "init"),
               runs_dir)
    runs = []
    for m in args.methods:
        for s in args.seeds:
            runs.append(Run(f"{m}_s{s}", m, cfg["ft_steps"], cfg["ft_lr"], s, base.ckpt, runs_dir))
            if m == "sft" and args.K > 1:
                runs.append(Run(f"sft_x{args.K}_s{s}", m, args.K * cfg["ft_steps"], cfg["ft_lr"], s,
                                base.ckpt, runs_dir))
    return base, runs


def prepare(cfg, runs_dir):
    """The task files and the untrained model (tokenizer trained on the training split)."""
    data = os.path.join(runs_dir, "data")
    if not os.path.exists(os.path.join(data, "test.jsonl")):
        if cfg["task"] == "sudoku":
            sizes = {k: cfg[c] for k, c in (("n_train", "n_train"), ("n_val", "n_split"),
                                              ("n_test", "n_split")) if c in cfg}
            sudoku_text.write_splits(data, cfg["clues"], cfg["copies"], n_eval=cfg["n_eval"], **sizes)
        else:
            toy_tasks.main(["--out", data, "--n-train", str(cfg["n_train"]),
                            "--n-eval", str(cfg["n_eval"])])
    init = os.path.join(runs_dir, "init")
    if not os.path.exists(os.path.join(init, "config.json")):
        subprocess.run([sys.executable, os.path.join(HERE, "llm.py"), "--init-tiny", init,
                        "--corpus", os.path.join(data, "train.jsonl"), "--vocab-size", "260",
                        "--hidden-size", str(cfg["hidden"]), "--layers", str(cfg["layers"]),
                        "--heads", str(cfg["heads"]), "--rope-theta", str(cfg["rope_theta"]),
                        "--seed", "0"], check=True)
    return data


# what a run's args.json must match for its checkpoint to count as this plan's run: a
# checkpoint trained to another schedule (max_iters sets the cosine) would otherwise be resumed,
# or taken as finished, silently
SAME_RUN_ARGS = ("model", "method", "K", "data", "seq_len", "batch_size", "lr", "max_iters", "seed")


def check_same_run(run, want):
    """UsageError naming the run's directory and the first setting that differs from `want`
    (train_llm.py's args as this plan would give them) when a previous invocation left a
    checkpoint trained with other settings there."""
    path = os.path.join(run.dir, "args.json")
    if run.step() == 0 or not os.path.exists(path):
        return
    have = json.load(open(path))
    for k in SAME_RUN_ARGS:
        if have.get(k) != want[k]:
            raise UsageError(f"{path}: {run.name} was trained with {k} = {have.get(k)!r}, this "
                             f"preset asks {want[k]!r}; move {run.dir} away or pass another "
                             f"--runs-dir")


def train(run, cfg, data, K, threads):
    """train_llm.py to run.steps, resuming what a previous invocation left."""
    want = dict(model=run.init, method=run.method, K=K, data=os.path.join(data, "train.jsonl"),
                seq_len=cfg["seq_len"], batch_size=cfg["batch"], lr=run.lr, max_iters=run.steps,
                seed=run.seed)
    check_same_run(run, want)
    at = run.step()
    if at >= run.steps:
        return 0.0
    t0 = time.time()
    cmd = [sys.executable, os.path.join(HERE, "train_llm.py"), "--model", want["model"],
           "--method", run.method, "--K", str(K), "--preset", "cpu", "--data", want["data"],
           "--seq-len", str(cfg["seq_len"]), "--batch-size", str(cfg["batch"]), "--grad-accum",
           "1", "--lr", str(run.lr), "--max-iters", str(run.steps), "--max-minutes", "0",
           "--ckpt-interval", str(max(1, run.steps // 4)), "--log-interval", "50", "--seed",
           str(run.seed), "--out-dir", run.dir, "--no-progress", *(["--resume"] if at > 0 else [])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(run.dir, exist_ok=True)
    with open(os.path.join(run.dir, "train.log"), "a") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        raise RuntimeError(f"{run.name}: train_llm.py exited {r.returncode} (see {run.dir}/train.log)")
    return time.time() - t0


# The extra decodes of a relay-trained model at TABLE_TAU: the same weights with h = 0 (does the
# relay act?), and the paper's rule that R(h) goes to still-masked positions only (Section 5:
# it keeps the sub-block cache's entries valid) against R(h) at revealed tokens too, exact and
# with the sub-block cache.
RELAY_ABLATIONS = {"no_relay": dict(use_relay=False),
                   "at_revealed": dict(relay_at_revealed=True),
                   "at_revealed_sub_block": dict(relay_at_revealed=True, sub_block_cache=True)}


def make_decoder(ckpt, rows, batch_size=64):
    """decode(tau, **generate options) -> (answers, row of the table: exact match %, NFE both
    ways, the task's other columns) for the checkpoint on these rows, cached decoding on a CPU."""
    from sample_llm import encode_prompt, generate, load_for_decoding, user_turn
    lm, tok = load_for_decoding(ckpt, "cpu")
    # room for the longest answer, its stop and 31 more: the official decoder's block budget
    # (max_new // 32 blocks from the prompt's tail) then always holds it too
    max_new = max(len(tok(r["answer"], add_special_tokens=False).input_ids) for r in rows) + 32
    ctx = lm.qwen.config.max_position_embeddings - max_new
    prompts = [encode_prompt(tok, user_turn(tok, r["prompt"]), ctx) for r in rows]
    tasks = np.array([r["task"] for r in rows])

    def decode(tau, **kw):
        texts, nfe, nfe_official = [], [], []
        for s in range(0, len(prompts), batch_size):
            gen, n, n_off = generate(lm, prompts[s:s + batch_size], max_new, tau, **kw)
            texts += [tok.decode(g, skip_special_tokens=True) for g in gen]
            nfe += n.tolist()
            nfe_official += n_off.tolist()
        ok, parts = score(texts, rows, tasks)
        return texts, dict(tau=tau, acc=100 * ok.mean(), nfe=float(np.mean(nfe)),
                           nfe_official=float(np.mean(nfe_official)), parts=parts)
    return decode


def probe(ckpt, data_file, n, taus=(SWEEP_TAUS[0], TABLE_TAU, SWEEP_TAUS[-1])):
    """Is a base checkpoint in the gates yet? Its exact match and NFE on the first n rows of a
    data file at the sweep's ends and the table's threshold (what sized the presets' bases)."""
    if not os.path.exists(data_file):
        raise UsageError(f"{data_file}: no such data file")
    rows = [json.loads(line) for line in open(data_file)][:n]
    decode = make_decoder(ckpt, rows)
    out = []
    for tau in taus:
        r = decode(tau)[1]
        out.append(r)
        print(f"{ckpt} | {len(rows)} rows | tau {tau} | exact {r['acc']:.1f} % | "
              + " | ".join(f"{k} {v:.1f} %" for k, v in r["parts"].items())
              + f" | NFE {r['nfe']:.2f} (official count {r['nfe_official']:.2f})", flush=True)
    return out


def evaluate(run, data, batch_size=64):
    """Exact match per task and NFE on the test split at every threshold of the sweep, with the
    sub-block cache, and (relay methods) RELAY_ABLATIONS; cached in <run>/eval.json, where only
    what is missing is decoded (all again when the checkpoint's step changed)."""
    out = os.path.join(run.dir, "eval.json")
    step = run.step()
    cached = json.load(open(out)) if os.path.exists(out) else {}
    if cached.get("step") != step:
        cached = {}
    want_ablations = list(RELAY_ABLATIONS) if run.method in ("relay", "relay_sg") else []
    have_sweep = [r["tau"] for r in cached.get("rows", [])] == list(SWEEP_TAUS)
    if have_sweep and "sub_block" in cached and "texts" in cached and \
            all(a in cached.get("ablations", {}) for a in want_ablations):
        return cached
    rows = [json.loads(line) for line in open(os.path.join(data, "test.jsonl"))]
    decode = make_decoder(run.ckpt, rows, batch_size)

    def agreement(a, b):
        return 100 * float(np.mean([x == y for x, y in zip(a, b)]))

    result = dict(cached, step=step, n=len(rows))
    if not have_sweep:
        result["rows"] = []
        for tau in SWEEP_TAUS:
            texts, row = decode(tau)
            result["rows"].append(row)
            if tau == TABLE_TAU:
                result["texts"] = texts                 # the table's answers, for later checks
        result.pop("sub_block", None)
    elif "texts" not in result:                         # written before texts were kept
        result["texts"] = decode(TABLE_TAU)[0]
    exact = result["texts"]
    if "sub_block" not in result:                       # Fast-dLLM v2's intra-block cache
        texts, result["sub_block"] = decode(TABLE_TAU, sub_block_cache=True)
        result["sub_block"]["same_as_exact"] = agreement(texts, exact)
    abl = result.setdefault("ablations", {})
    for name in want_ablations:                         # in order: at_revealed before its cache
        if name in abl:
            continue
        texts, abl[name] = decode(TABLE_TAU, **RELAY_ABLATIONS[name])
        abl[name]["same_as_exact"] = agreement(texts, exact)
        if name == "at_revealed":
            result["texts_at_revealed"] = texts
        elif name == "at_revealed_sub_block":           # against its own exact decoder
            abl[name]["same_as_its_exact"] = agreement(texts, result["texts_at_revealed"])
    atomic_write(out, json.dumps(result, indent=1))
    return result


def score(texts, rows, tasks):
    """Exact match per answer (N,) bool, and the table's other columns in %: per toy task the
    exact match; for Sudoku the cell accuracy over the blanks and the legal rate."""
    if tasks[0] == sudoku_text.TASK:
        exact, cell, legal = sudoku_text.score(texts, rows)
        return exact, {"cell acc": 100 * cell.mean(), "legal": 100 * legal.mean()}
    ok = np.array([toy_tasks.exact_match(t, r["answer"]) for t, r in zip(texts, rows)])
    return ok, {t: 100 * ok[tasks == t].mean() for t in toy_tasks.TASKS}


def do_run(run, cfg, data, K, threads):
    dt = train(run, cfg, data, K, threads)
    evaluate(run, data)
    return dt


# -----------------------------------------------------------------------------
# the report

PAPER = [("Fast-dLLM v2 (base)", 38.4, 35.4, 178.1, 46.8, 39.7, 133.0),
         ("vanilla SFT", 38.4, 34.1, 130.7, 43.9, 38.1, 84.8),
         ("Relay (sg)", 38.4, 35.4, 104.4, 43.1, 39.2, 80.1),
         ("Relay", 42.1, 37.2, 88.3, 46.6, 41.5, 78.8)]
LABELS = {"base": "base (SFT from scratch)", "sft": "SFT", "rollout": "Rollout",
          "relay_sg": "Relay (sg)", "relay": "Relay"}


def row_at(ev, tau):
    return next(r for r in ev["rows"] if r["tau"] == tau)


def groups_of(base, runs, K):
    """{label: [eval, ...]} in report order, finished runs only."""
    out = {}
    if os.path.exists(os.path.join(base.dir, "eval.json")):
        out[LABELS["base"]] = [json.load(open(os.path.join(base.dir, "eval.json")))]
    for r in runs:
        path = os.path.join(r.dir, "eval.json")
        if os.path.exists(path) and r.step() >= r.steps:
            label = LABELS[r.method] + (f", {K}x steps" if r.steps != runs[0].steps and
                                        r.method == "sft" else "")
            out.setdefault(label, []).append(json.load(open(path)))
    return out


def pm(vals, fmt="{:.1f}"):
    vals = np.array(vals, dtype=float)
    return fmt.format(vals.mean()) + (f" ± {fmt.format(vals.std(ddof=1))}" if len(vals) > 1 else "")


def test_prompts(cfg):
    return (f"{cfg['n_eval']} generated puzzles ({cfg['clues']} clues)" if cfg["task"] == "sudoku"
            else f"{cfg['n_eval']} prompts per task")


GATE_ACC, GATE_NFE = (20.0, 80.0), 0.25   # the base must half-solve the task, with a frontier


def base_gates(groups):
    """Whether the base can ask the question: exact match in GATE_ACC at TABLE_TAU, and NFE at
    the sweep's slowest threshold at least GATE_NFE more than at its fastest."""
    evs = groups.get(LABELS["base"])
    if not evs:
        return []
    e = evs[0]
    acc = row_at(e, TABLE_TAU)["acc"]
    slow, fast = row_at(e, SWEEP_TAUS[0])["nfe"], row_at(e, SWEEP_TAUS[-1])["nfe"]
    drop = 1 - fast / slow
    ok_acc, ok_nfe = GATE_ACC[0] <= acc <= GATE_ACC[1], drop >= GATE_NFE
    return [f"The base's gates: exact match {acc:.1f} % at tau {TABLE_TAU} (needs "
            f"{GATE_ACC[0]:.0f}-{GATE_ACC[1]:.0f} %: {'met' if ok_acc else 'NOT met'}); NFE "
            f"{slow:.2f} at tau {SWEEP_TAUS[0]} and {fast:.2f} at {SWEEP_TAUS[-1]}, "
            f"{100 * drop:.0f} % fewer (needs {100 * GATE_NFE:.0f} %: "
            f"{'met' if ok_nfe else 'NOT met'}).", ""]


def write_report(args, cfg, base, runs, results_dir, wall_s):
    groups = groups_of(base, runs, args.K)
    if not groups:
        raise UsageError(f"{os.path.dirname(base.dir)}: nothing trained and evaluated yet")
    lines = [f"# Table 2 in miniature (`table2.py --preset {args.preset}`)", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} on {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}; wall time {wall_s / 60:.0f} min over every invocation.",
             "", f"Model: Qwen2 layout, width {cfg['hidden']}, {cfg['layers']} layers, "
             f"{cfg['heads']} heads, one token per character; base: {cfg['base_steps']:,} SFT steps "
             f"(lr {cfg['base_lr']}); fine-tunes: {cfg['ft_steps']:,} steps (lr {cfg['ft_lr']}, "
             f"cosine), batch {cfg['batch']}, K = {args.K}; test: {test_prompts(cfg)}; "
             f"seeds {', '.join(map(str, args.seeds))}; decoding: cached, 8-token sub-blocks, "
             "first token from the cache-writing pass. NFE: ours (passes until the answer is "
             "final) and, in parentheses, as Fast-dLLM v2's evaluation decoder counts it (until "
             "the stop's block is complete; METHOD.md 7).", ""]
    lines += base_gates(groups)
    parts = list(row_at(next(iter(groups.values()))[0], TABLE_TAU)["parts"])
    lines += [f"## Exact match % and NFE at tau {TABLE_TAU} (mean ± std over seeds)", "",
              "| method | exact match | " + " | ".join(parts) + " | NFE (official count) |",
              "|---|---|" + "---|" * len(parts) + "---|"]
    for label, evs in groups.items():
        rs = [row_at(e, TABLE_TAU) for e in evs]
        lines.append(f"| {label} | {pm([r['acc'] for r in rs])} | " +
                     " | ".join(pm([r["parts"][t] for r in rs]) for t in parts)
                     + f" | {pm([r['nfe'] for r in rs], '{:.2f}')} "
                       f"({pm([r['nfe_official'] for r in rs], '{:.2f}')}) |")
    lines += ["", "## Threshold sweep: exact match % @ NFE (mean over seeds)", "",
              "| method | " + " | ".join(f"tau {t}" for t in SWEEP_TAUS) + " |",
              "|---|" + "---|" * len(SWEEP_TAUS)]
    for label, evs in groups.items():
        cells = [f"{np.mean([row_at(e, t)['acc'] for e in evs]):.1f} @ "
                 f"{np.mean([row_at(e, t)['nfe'] for e in evs]):.2f}" for t in SWEEP_TAUS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"## The intra-block (sub-block) KV cache at tau {TABLE_TAU}: exact decoder vs "
              "`--sub-block-cache` (mean over seeds)", "",
              "| method | exact: acc % / NFE | sub-block cache: acc % / NFE | same answer as exact % |",
              "|---|---|---|---|"]
    for label, evs in groups.items():
        ex, sb = [row_at(e, TABLE_TAU) for e in evs], [e["sub_block"] for e in evs]
        lines.append(f"| {label} | {np.mean([r['acc'] for r in ex]):.1f} / "
                     f"{np.mean([r['nfe'] for r in ex]):.2f} | {np.mean([r['acc'] for r in sb]):.1f} / "
                     f"{np.mean([r['nfe'] for r in sb]):.2f} | "
                     f"{np.mean([r['same_as_exact'] for r in sb]):.1f} |")
    relay_groups = {k: v for k, v in groups.items() if all("ablations" in e and e["ablations"]
                                                           for e in v)}
    if relay_groups:
        lines += ["", f"## The relay's rule in decoding at tau {TABLE_TAU}: R(h) at still-masked "
                  "positions only (the paper) or at revealed tokens too; h = 0 (mean over seeds; "
                  "acc % / NFE, and % of answers the same as the exact masked-only decoder's, or "
                  "as the same rule's exact decoder's)", "",
                  "| method | masked only, exact | masked only, sub-block cache (same %) | "
                  "at revealed too, exact (same %) | at revealed too, sub-block cache (same as "
                  "its exact %) | h = 0 (same %) |", "|---|---|---|---|---|---|"]

        def cell(rs, same=None):
            return (f"{np.mean([r['acc'] for r in rs]):.1f} / {np.mean([r['nfe'] for r in rs]):.2f}"
                    + (f" ({np.mean([r[same] for r in rs]):.1f})" if same else ""))
        for label, evs in relay_groups.items():
            ab = [e["ablations"] for e in evs]
            lines.append(f"| {label} | {cell([row_at(e, TABLE_TAU) for e in evs])} | "
                         f"{cell([e['sub_block'] for e in evs], 'same_as_exact')} | "
                         f"{cell([a['at_revealed'] for a in ab], 'same_as_exact')} | "
                         f"{cell([a['at_revealed_sub_block'] for a in ab], 'same_as_its_exact')} | "
                         f"{cell([a['no_relay'] for a in ab], 'same_as_exact')} |")
    lines += ["", "## The paper's Table 2 (Fast-dLLM v2 1.5B; pass@1 % and NFE)", "",
              "| method | HumanEval base | plus | NFE | MBPP base | plus | NFE |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | " + " | ".join(str(v) for v in r[1:]) + " |" for r in PAPER]
    unfinished = [r.name for r in runs if r.step() < r.steps]
    if unfinished:
        lines += ["", f"Not finished (left out): {', '.join(unfinished)}."]
    os.makedirs(results_dir, exist_ok=True)
    md = "\n".join(lines) + "\n"
    atomic_write(os.path.join(results_dir, "table2.md"), md)
    frontier(groups, os.path.join(results_dir, "frontier.png"), args.preset)
    return md


def frontier(groups, path, preset):
    """Exact match against NFE across the threshold sweep, one line per method: the mean over
    seeds, with a ribbon of ±1 std in exact match where there are several."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, evs in groups.items():
        nfe = np.array([[row_at(e, t)["nfe"] for t in SWEEP_TAUS] for e in evs])
        acc = np.array([[row_at(e, t)["acc"] for t in SWEEP_TAUS] for e in evs])
        xs, ys = nfe.mean(0), acc.mean(0)
        line, = ax.plot(xs, ys, "o-", label=label, ms=4)
        if len(evs) > 1:
            order = np.argsort(xs)
            sd = acc.std(0, ddof=1)
            ax.fill_between(xs[order], (ys - sd)[order], (ys + sd)[order], color=line.get_color(),
                            alpha=0.15)
        i = SWEEP_TAUS.index(TABLE_TAU)
        ax.plot(xs[i], ys[i], "k*", ms=9)
    finish_plot(fig, ax, path, "NFE (denoising passes per answer, ours)", "exact match % (test)",
                f"block-diffusion LM ({preset}): thresholds {SWEEP_TAUS[0]}..{SWEEP_TAUS[-1]}, "
                f"* = {TABLE_TAU}\nmean ± 1 std over seeds (the base: one run)")


def main(argv=None):
    args = p.parse_args(argv)
    if args.probe:
        if not args.probe_data:
            raise UsageError("--probe needs --probe-data (a jsonl of rows with prompt and answer)")
        return probe(args.probe, args.probe_data, args.probe_n)
    cfg = PRESETS[args.preset]
    runs_dir = args.runs_dir or os.path.join("out", "table2", args.preset)
    results_dir = args.results_dir or os.path.join(
        "results", {"toy": "toy_llm", "sudoku": "sudoku_llm"}.get(args.preset, f"llm_{args.preset}"))
    base, runs = plan(args, cfg, runs_dir)
    log = os.path.join(runs_dir, "invocations.jsonl")
    t0 = time.time()
    if not args.report_only:
        os.makedirs(runs_dir, exist_ok=True)
        data = prepare(cfg, runs_dir)
        cores = os.cpu_count() or 1
        jobs = args.jobs or cores
        threads = max(1, cores // jobs)
        print(f"base ({cfg['base_steps']:,} SFT steps, {cores} thread(s)), then {len(runs)} "
              f"fine-tunes, {jobs} at once, {threads} thread(s) each; logs in <run>/train.log")
        earlier = open(log).read() if os.path.exists(log) else ""
        entry = dict(argv=sys.argv[1:] if argv is None else argv, wall_s=0.0)

        def log_time():   # this invocation's line, rewritten after every run: one stopped keeps it
            entry["wall_s"] = time.time() - t0
            atomic_write(log, earlier + json.dumps(entry) + "\n")
        do_run(base, cfg, data, args.K, cores)
        log_time()
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = {pool.submit(do_run, r, cfg, data, args.K, threads): r for r in runs}
            for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                print(f"[{n}/{len(runs)}] {futures[fut].name} done "
                      f"({(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
                fut.result()
                log_time()
    wall = sum(json.loads(line)["wall_s"] for line in open(log)) if os.path.exists(log) else 0.0
    md = write_report(args, cfg, base, runs, results_dir, wall)
    print(md)
    print(f"wrote {results_dir}/table2.md, frontier.png")
    return md


if __name__ == "__main__":
    run_main(main)
