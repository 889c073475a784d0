# the setting-A base: table2's sudoku preset's base (45-50 clues, 3,000 SFT steps), one thread
import sys, table2
cfg = table2.PRESETS["sudoku"]
runs_dir = sys.argv[1]
args = table2.p.parse_args(["--preset", "sudoku", "--methods", "sft", "--seeds", "1"])
base, runs = table2.plan(args, cfg, runs_dir)
data = table2.prepare(cfg, runs_dir)
table2.train(base, cfg, data, 2, 1)
print("base trained")
