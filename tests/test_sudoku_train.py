"""Training (Algorithm 1 and the baselines), checkpoints and resume, and the command lines."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_sudoku as T
from conftest import ROOT, SHARED

SAMPLE_CSV = os.path.join(SHARED, "data", "sudoku_extreme_format_sample.csv")


def train(out_dir, *extra, method="relay", iters=6):
    return T.main(["--method", method, "--size", "tiny", "--data", SAMPLE_CSV, "--batch-size", "16",
                   "--max-iters", str(iters), "--eval-interval", "1000", "--eval-n", "16",
                   "--ckpt-interval", "3", "--log-interval", "1000", "--no-progress",
                   "--out-dir", str(out_dir), "--lr", "3e-3", "--warmup", "5", *extra])


@pytest.mark.parametrize("method", ["mlm", "rollout", "relay_sg", "relay"])
def test_short_run_lowers_the_loss(tmp_path, method):
    r = train(tmp_path, method=method, iters=40)
    losses = np.array(r["losses"])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-8:].mean() < 0.9 * losses[:4].mean()
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ck["step"] == 40 and ck["args"]["method"] == method
    assert ck["model_config"]["relay"] == method.startswith("relay")
    assert set(ck) >= {"model", "ema", "optimizer", "pools", "rng", "args", "history"}


@pytest.mark.parametrize("method", ["mlm", "relay"])
def test_resume_gives_the_same_next_losses(tmp_path, method):
    full = train(tmp_path / "full", method=method, iters=6)["losses"]
    train(tmp_path / "split", method=method, iters=3)
    resumed = train(tmp_path / "split", "--resume", method=method, iters=6)
    assert resumed["step"] == 6
    assert resumed["losses"] == full[3:]       # bit-for-bit: pool, RNG, optimizer, EMA restored
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=False)
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_pool_refills_only_finished_boards():
    class Stream:
        def next(self, n):
            q = np.zeros((n, 81), dtype=np.uint8)
            a = np.tile(np.arange(1, 10, dtype=np.uint8), (n, 9))
            return q, a
    pool = T.Pool(4, 8, "cpu")
    assert pool.refill(Stream()) == 4                    # a new pool starts empty: all refilled
    pool.z[1] = pool.x0[1]                               # board 1 solved
    pool.h[:] = 1.0
    assert pool.refill(Stream()) == 1
    assert (pool.h[1] == 0).all() and (pool.h[0] == 1).all()
    assert (pool.z[1] == T.MASK_ID).all()


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_sample_cli_json_and_errors(tmp_path):
    train(tmp_path, iters=3)
    ckpt = str(tmp_path / "ckpt.pt")
    r = run_cli("sample.py", "--ckpt", ckpt, ckpt, "--data", SAMPLE_CSV, "--limit", "6", "--json",
                "--sweep", "--out", str(tmp_path / "sw"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["tau"] for row in rows] == [0.05, 0.10, 0.15, 0.20, 0.25] * 2   # two checkpoints
    assert all({"tau", "n", "acc", "nfe", "legal"} <= set(row) and row["n"] == 6 for row in rows)
    assert rows[:5] == [dict(r, wall_s=rows[i]["wall_s"]) for i, r in enumerate(rows[5:])]
    assert (tmp_path / "sw.png").stat().st_size > 1000 and (tmp_path / "sw.md").exists()
    # bad input: one line on stderr, exit status 2, no traceback
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("source,question,answer,rating\nx,123,456,0\n")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    for args, needle in [
        (("--ckpt", ckpt, "--tau", "1.5"), "--tau 1.5: must lie in [0, 1]"),
        (("--ckpt", str(tmp_path / "missing.pt")), "no such checkpoint"),
        (("--ckpt", str(tmp_path / "junk.pt")), "not a readable checkpoint"),
        (("--ckpt", ckpt, "--data", str(bad_csv)), "bad.csv:2: question has 3 characters"),
    ]:
        r = run_cli("sample.py", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_incompatible_checkpoint_is_refused(tmp_path):
    train(tmp_path, iters=3)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    ck["model_config"]["n_embd"] = 48           # the weights no longer fit the config
    torch.save(ck, tmp_path / "bad.pt")
    r = run_cli("sample.py", "--ckpt", str(tmp_path / "bad.pt"), "--data", SAMPLE_CSV)
    assert r.returncode == 2 and "incompatible checkpoint" in r.stderr
    # resuming with another architecture is refused, and the checkpoint is left as it was
    before = (tmp_path / "ckpt.pt").read_bytes()
    r = run_cli("train_sudoku.py", "--size", "cpu", "--data", SAMPLE_CSV, "--resume",
                "--out-dir", str(tmp_path), "--max-iters", "4", "--no-progress")
    assert r.returncode == 2 and "differs from this run's" in r.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_show_prints_trajectories(tmp_path):
    train(tmp_path, iters=3)
    r = run_cli("sample.py", "--ckpt", str(tmp_path / "ckpt.pt"), "--data", SAMPLE_CSV,
                "--limit", "2", "--show", "1", "--tau", "0.3")
    assert r.returncode == 0, r.stderr
    assert "puzzle 0:" in r.stdout and "pass 1: revealed" in r.stdout and "*" in r.stdout
