"""Issue 39, setting D: the from-scratch runs evaluated on the 45-50-clue test boards (the base
is SFT from scratch at the same budget, seed 0)."""
import os, shutil, sys, time
import table2
runs_dir = sys.argv[1]
easy = os.path.join(runs_dir, "A", "data")
out = os.path.join(runs_dir, "A", "records")
os.makedirs(out, exist_ok=True)
for name, method, d in (("D_relay_g_s1", "relay", os.path.join(runs_dir, "D", "relay_g_s1")),
                        ("D_sft_base_s0", "sft", os.path.join(runs_dir, "A", "base"))):
    run = table2.Run(name, method, 3000, 3e-3, 1, None, os.path.join(runs_dir, "D"))
    run.ckpt = os.path.join(d, "ckpt")
    os.makedirs(run.dir, exist_ok=True)
    table2.evaluate(run, easy)
    for f in ("eval.json",):
        shutil.copy(os.path.join(run.dir, f), os.path.join(out, f"{name}.{f}"))
    for f in ("log.jsonl", "args.json"):
        if os.path.exists(os.path.join(d, f)):
            shutil.copy(os.path.join(d, f), os.path.join(out, f"{name}.{f}"))
    print(time.strftime("%H:%M"), name, "recorded", flush=True)
