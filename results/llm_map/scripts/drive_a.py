"""Issue 39, setting A (and C): the sudoku preset's base (45-50 clues) fine-tuned on 38-42-clue
boards; every method 300 steps at lr 3e-4, batch 16, K = 2; evaluated on the hard test boards.
Run from a worktree pinned at a commit: PYTHONPATH=<worktree> python drive_a.py RUNS SEEDS..."""
import json, os, shutil, sys, time
import table2
runs_dir, seeds = sys.argv[1], [int(s) for s in sys.argv[2:]]
cfg = table2.PRESETS["sudoku"]
hard = os.path.join(runs_dir, "data_hard")
base_ckpt = os.path.join(runs_dir, "base", "ckpt")
out = os.path.join(runs_dir, "records")
os.makedirs(out, exist_ok=True)

def record(run):
    for f in ("eval.json", "log.jsonl", "args.json"):
        p = os.path.join(run.dir, f)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(out, f"{run.name}.{f}"))
    print(f"{time.strftime('%H:%M')} {run.name} recorded", flush=True)

base_hard = table2.Run("base_on_hard", "sft", 0, 0, 0, None, runs_dir)
base_hard.ckpt = base_ckpt
os.makedirs(base_hard.dir, exist_ok=True)
table2.evaluate(base_hard, hard)
record(base_hard)
for seed in seeds:
    plan = [("sft", 300, "bd"), ("sft", 600, "bd"), ("relay", 300, "bd"), ("rollout", 300, "bd"),
            ("relay_sg", 300, "bd"), ("relay", 300, "decode_aligned")]
    for method, steps, reveal in plan:
        name = (f"{method}" + ("_x2" if steps == 600 else "") +
                ("_da" if reveal == "decode_aligned" else "") + f"_s{seed}")
        run = table2.Run(name, method, steps, cfg["ft_lr"], seed, base_ckpt, runs_dir)
        if reveal != "bd":   # table2.train has no --reveal: the same command with it added
            orig = table2.subprocess.run
            def patched(cmd, *a, **k):
                if "train_llm.py" in " ".join(map(str, cmd)):
                    cmd = list(cmd) + ["--reveal", reveal]
                return orig(cmd, *a, **k)
            table2.subprocess.run = patched
        try:
            table2.train(run, cfg, hard, 2, 1)
        finally:
            if reveal != "bd":
                table2.subprocess.run = orig
        table2.evaluate(run, hard)
        record(run)
