"""table1.py: runs every method x seed, keeps the forward-pass-matched checkpoint, skips finished
runs, resumes interrupted ones exactly, and reports mean +- std."""
import json
import os
import shutil

import pytest
import torch

import table1
from common import load_checkpoint
from data.sudoku import DataError

TINY = "--size tiny --n-train 200 --n-val 40 --n-test 40 --batch-size 16 --eval-n 16 --lr 3e-3"


def run_table(tmp_path, *extra):
    return table1.main(["--train-args", TINY, "--max-iters", "8", "--seeds", "1", "2",
                        "--methods", "mlm", "relay", "--runs-dir", str(tmp_path / "runs"),
                        "--results-dir", str(tmp_path / "res"), *extra])


def step_of(path):
    return load_checkpoint(path)["step"]


def test_table_runs_resumes_and_reports(tmp_path):
    groups = run_table(tmp_path)
    runs = tmp_path / "runs"
    assert sorted(os.listdir(runs)) == ["invocations.jsonl", "mlm_tied_s1", "mlm_tied_s2",
                                        "relay_tied_s1", "relay_tied_s2"]
    assert step_of(runs / "relay_tied_s1" / "ckpt.pt") == 8
    assert step_of(runs / "relay_tied_s1" / "ckpt_matched.pt") == 4     # 4 steps x K=2 = 8 passes
    assert not (runs / "mlm_tied_s1" / "ckpt_matched.pt").exists()      # MLM: 1 pass per step
    sweep = [json.loads(l) for l in open(runs / "relay_tied_s2" / "sweep.jsonl")]
    assert [r["tau"] for r in sweep] == list(table1.SWEEP_TAUS) and {r["n"] for r in sweep} == {40}
    assert [r["step"] for r in groups[("relay", "tied")][0]["history"]] == [4, 8]
    assert (runs / "relay_tied_s1" / "no_relay.jsonl").exists()          # the h = 0 ablation
    assert not (runs / "mlm_tied_s1" / "no_relay.jsonl").exists()

    md = (tmp_path / "res" / "table1.md").read_text()
    assert "commit unknown" not in md and "0.02M parameters; seeds 1, 2" in md
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[1:-1]]
            for l in md.split("### Cohorts")[0].splitlines() if l.startswith("| M")
            or l.startswith("| Relay")}
    assert rows["MLM"][2:5] == ["2", "8", "8"] and rows["Relay"][2:5] == ["2", "8", "16"]
    matched = md.split("## At equal forward passes")[1].split("##")[0]
    assert "| Relay | tied | 4 | 8 |" in matched and "| MLM | tied | 8 | 8 |" in matched
    ablation = md.split("## Does the model read h?")[1].split("##")[0]
    assert "| Relay | tied |" in ablation and "| MLM |" not in ablation
    for f in ("frontier.png", "curves.png"):
        assert (tmp_path / "res" / f).stat().st_size > 10_000
    # paired by seed: Relay minus MLM, recomputed here from the runs' own sweep files
    paired = md.split("### Relay minus MLM (tied)")[1].split("##")[0]
    acc = {(m, s): next(json.loads(l) for l in open(runs / f"{m}_tied_s{s}" / "sweep.jsonl")
                        if abs(json.loads(l)["tau"] - 0.15) < 1e-9)["acc"]
           for m in ("mlm", "relay") for s in (1, 2)}
    for s in (1, 2):
        row = next(l for l in paired.splitlines() if l.startswith(f"| {s} |"))
        assert row.split("|")[2].strip() == f"{100 * (acc['relay', s] - acc['mlm', s]):+.1f}"
    assert "| 95 % interval |" in paired

    # the report keeps a record of every run beside the results: without the run directories
    # --report-only rebuilds the same report from them
    assert sorted(os.listdir(tmp_path / "res" / "runs")) == [
        "invocations.jsonl", "mlm_tied_s1.json", "mlm_tied_s2.json", "relay_tied_s1.json",
        "relay_tied_s2.json"]
    shutil.copytree(runs, tmp_path / "runs_kept")
    shutil.rmtree(runs)
    again = table1.main(["--train-args", TINY, "--max-iters", "8", "--seeds", "1", "2",
                         "--methods", "mlm", "relay", "--runs-dir", str(runs),
                         "--results-dir", str(tmp_path / "res"), "--report-only"])
    md2 = (tmp_path / "res" / "table1.md").read_text()
    assert md2.split("\n", 3)[3] == md.split("\n", 3)[3]      # all but the "written at" line
    assert again[("relay", "tied")][1]["history"] == groups[("relay", "tied")][1]["history"]
    shutil.rmtree(tmp_path / "res" / "runs")
    shutil.copytree(tmp_path / "runs_kept", runs)

    # a finished run is not trained again
    final = load_checkpoint(runs / "relay_tied_s1" / "ckpt.pt")
    log_before = (runs / "relay_tied_s1" / "train.log").read_text()
    run_table(tmp_path)
    assert (runs / "relay_tied_s1" / "train.log").read_text() == log_before

    # an interrupted run (stopped at the matched point) continues from its checkpoint and ends
    # where the uninterrupted run ended
    shutil.copyfile(runs / "relay_tied_s1" / "ckpt_matched.pt", runs / "relay_tied_s1" / "ckpt.pt")
    os.remove(runs / "relay_tied_s1" / "sweep.jsonl")
    run_table(tmp_path)
    assert "resumed" in (runs / "relay_tied_s1" / "train.log").read_text()
    again = load_checkpoint(runs / "relay_tied_s1" / "ckpt.pt")
    assert again["step"] == 8
    for k, v in final["ema"].items():
        assert torch.equal(again["ema"][k], v), k
    assert len(open(runs / "invocations.jsonl").readlines()) == 3


def test_paired_statistics_by_hand():
    mean, sd, half = table1.t_interval([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0) and abs(half - 4.303 / 3 ** 0.5) < 1e-12   # t(0.975, 2)
    assert table1.t_interval([1.0]) is None
    # five values: df 4, t = 2.776
    assert abs(table1.t_interval([0, 1, 2, 3, 4])[2] - 2.776 * 2.5 ** 0.5 / 5 ** 0.5) < 1e-12
    def sweep(points):
        return dict(sweep=[dict(tau=tau, nfe=n, acc=a / 100) for tau, n, a in points])
    base = sweep([(0.05, 12.0, 62.0), (0.15, 10.0, 50.0)])      # acc = 6 NFE - 10
    run = sweep([(0.05, 11.0, 70.0), (0.15, 8.0, 55.0)])        # acc = 5 NFE + 15
    at_nfe, gap = table1.frontier_gap(run, base)
    # at MLM's NFE 10: 5 * 10 + 15 - 50 = 15; on the common range [10, 11] the gap is
    # 25 - NFE, whose mean is 14.5
    assert abs(at_nfe - 15.0) < 1e-9 and abs(gap - 14.5) < 1e-9
    short = sweep([(0.05, 9.5, 70.0), (0.15, 8.0, 55.0)])       # never reaches NFE 10
    assert table1.frontier_gap(short, base) == (None, None)
    # passes at MLM's accuracy 50: run2's acc = 10 NFE - 40 reaches it at NFE 9, one fewer
    run2 = sweep([(0.05, 10.0, 60.0), (0.15, 8.0, 40.0)])
    assert abs(table1.passes_at_accuracy(run2, base) - (-1.0)) < 1e-9
    assert table1.passes_at_accuracy(run, base) is None       # 55-70 %: never as low as 50 %


def test_same_seed_rerun_section_by_hand(tmp_path):
    """--rerun: each figure of a run beside its rerun's, and the paired difference in both,
    checked against sums done here (statistics.stdev for the spread)."""
    import statistics
    study = table1.Study(preset="hard", methods=["mlm", "relay"], ties=["tied"], seeds=[1, 2, 3],
                         K=2, steps=10, preset_steps=10, train_argv=[], nproc=1, jobs=1,
                         threads=1, runs_dir=str(tmp_path / "none"), results_dir=str(tmp_path),
                         argv=[], rerun_dir=str(tmp_path / "rerun"))
    def rec(acc, nfe, val):
        return dict(step=10, real={}, history=[dict(step=10, val_acc=val / 100, val_nfe=nfe)],
                    sweep=[dict(tau=0.15, acc=acc / 100, nfe=nfe)])
    acc = {"mlm": (60.0, 70.0, 50.0), "relay": (65.0, 60.0, 80.0)}
    groups = {(m, "tied"): [dict(rec(a, 10.0 - (m == "relay"), a + 1),
                                 run=table1.Run(m, "tied", s, study))
                            for s, a in zip((1, 2, 3), acc[m])] for m in acc}
    os.makedirs(tmp_path / "rerun" / "runs")
    for m, a in (("mlm", 64.0), ("relay", 66.0)):          # seed 1 again: +4 and +1 points
        with open(tmp_path / "rerun" / "runs" / f"{m}_tied_s1.json", "w") as f:
            json.dump(rec(a, 10.5 - (m == "relay"), a), f)
    md = "\n".join(table1.section_rerun(groups, [("mlm", "tied"), ("relay", "tied")], study))
    assert "| MLM (tied) | 1 | 60.0 / 64.0 / +4.0 | 10.00 / 10.50 / +0.50 | 61.0 / 64.0 / +3.0 | " \
           f"{statistics.stdev(acc['mlm']):.1f} / 0.00 / {statistics.stdev(acc['mlm']):.1f} |" in md
    assert "| Relay (tied) | 1 | 65.0 / 66.0 / +1.0 |" in md
    paired_sd = statistics.stdev(r - b for r, b in zip(acc["relay"], acc["mlm"]))
    assert (f"validation acc points): +5.0 / -1.00 / n/a / +5.0 in this report's runs, "
            f"+2.0 / -1.00 / n/a / +2.0 in the reruns; the std of this difference over seeds is "
            f"{paired_sd:.1f} / 0.00 / n/a / {paired_sd:.1f}.") in md
    # the interval with seed 1's rerun pair (+2.0) in place of its run pair (+5.0); t(0.975, 2)
    def span(diffs):
        half = 4.303 * statistics.stdev(diffs) / 3 ** 0.5
        return statistics.mean(diffs), statistics.mean(diffs) - half, statistics.mean(diffs) + half
    now, was = span([2.0, -10.0, 30.0]), span([5.0, -10.0, 30.0])
    assert (f"acc points at tau 0.15 {now[0]:+.1f} ({now[1]:+.1f} to {now[2]:+.1f}; with the runs "
            f"{was[1]:+.1f} to {was[2]:+.1f}).") in md
    table1.plot_rerun(groups, [("mlm", "tied"), ("relay", "tied")], str(tmp_path / "r.png"), study)
    assert (tmp_path / "r.png").stat().st_size > 10_000
    study.rerun_dir = None
    assert table1.section_rerun(groups, [("mlm", "tied"), ("relay", "tied")], study) == []
    from common import UsageError
    with pytest.raises(UsageError, match="no runs/ records there"):
        table1.main(["--report-only", "--rerun", str(tmp_path / "nope"),
                     "--runs-dir", str(tmp_path / "none"), "--results-dir", str(tmp_path / "res")])


def test_mean_and_sample_std():
    assert table1.ms([0.5, 0.7], 100) == "60.0 ± 14.1"      # sample std, ddof 1
    assert table1.ms([0.5], 100) == "50.0"


def test_report_without_runs_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no finished run"):
        table1.main(["--report-only", "--runs-dir", str(tmp_path / "none"),
                     "--results-dir", str(tmp_path / "res")])
    assert not (tmp_path / "res" / "table1.md").exists()


def test_finetune_protocol_loopholing_and_real_puzzle_bands(tmp_path, monkeypatch):
    """--protocol finetune: one MLM base run, every method continued from its EMA weights;
    loopholing as a method; the hinted real-puzzle bands and the per-pass table and plots."""
    from conftest import SHARED
    monkeypatch.setattr(table1, "HINT_BANDS", (40, 0))
    sample_csv = os.path.join(SHARED, "data", "sudoku_extreme_format_sample.csv")
    table1.main(["--train-args", TINY, "--max-iters", "6", "--base-steps", "4", "--seeds", "1",
                 "--protocol", "finetune", "--methods", "mlm", "loopholing",
                 "--real-data", sample_csv, "--runs-dir", str(tmp_path / "runs"),
                 "--results-dir", str(tmp_path / "res")])
    runs = tmp_path / "runs"
    assert step_of(runs / "mlm_base_tied_s1" / "ckpt.pt") == 4
    for m in ("mlm", "loopholing"):
        ck = load_checkpoint(runs / f"{m}_tied_s1" / "ckpt.pt")
        assert ck["step"] == 6 and ck["args"]["init_from"].endswith("mlm_base_tied_s1/ckpt.pt")
    # loopholing makes 1 + 0.5 forward passes per step: matched at round(6 / 1.5) = 4 steps
    assert step_of(runs / "loopholing_tied_s1" / "ckpt_matched.pt") == 4
    assert (runs / "loopholing_tied_s1" / "no_relay.jsonl").exists()
    band = json.loads(open(runs / "mlm_tied_s1" / "real_h40.jsonl").readline())
    assert band["hints"] == 40 and band["n"] == 300
    md = (tmp_path / "res" / "table1.md").read_text()
    assert "protocol finetune" in md and "MLM base run of 4 steps" in md
    real = md.split("## Real hard puzzles by difficulty band")[1].split("##")[0]
    assert "40 clues | originals |" in real and "| Loopholing | tied |" in real
    assert "## The partial board after each pass" in md
    for f in ("legality.png", "gap.png"):
        assert (tmp_path / "res" / f).stat().st_size > 10_000
