"""Training (Algorithm 1 and the baselines), checkpoints and resume, and the command lines."""
import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import model as model_lib
import train_sudoku
from common import UserError, load_checkpoint
from data import sudoku
from conftest import ROOT, SHARED

SAMPLE_CSV = os.path.join(SHARED, "data", "sudoku_extreme_format_sample.csv")


def train(out_dir, *extra, method="relay", iters=6):
    return train_sudoku.main(["--method", method, "--size", "tiny", "--data", SAMPLE_CSV, "--batch-size", "16",
                   "--max-iters", str(iters), "--eval-interval", "1000", "--eval-n", "16",
                   "--ckpt-interval", "3", "--log-interval", "1000", "--no-progress",
                   "--out-dir", str(out_dir), "--lr", "3e-3", "--warmup", "5", *extra])


@pytest.mark.parametrize("method", train_sudoku.METHODS)
def test_short_run_lowers_the_loss(tmp_path, method):
    r = train(tmp_path, method=method, iters=40)
    losses = np.array(r["losses"])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-8:].mean() < 0.9 * losses[:4].mean()
    ck = load_checkpoint(tmp_path / "ckpt.pt")
    assert ck["step"] == 40 and ck["args"]["method"] == method
    assert ck["model_config"]["relay"] == (method in train_sudoku.RELAY_METHODS)
    assert set(ck) >= {"model", "ema", "optimizer", "ranks", "args", "history"}
    assert set(ck["ranks"][0]) == {"buffer", "rng"}


@pytest.mark.parametrize("method", ["mlm", "relay"])
def test_resume_gives_the_same_next_losses(tmp_path, method):
    full = train(tmp_path / "full", method=method, iters=6)["losses"]
    train(tmp_path / "split", method=method, iters=3)
    resumed = train(tmp_path / "split", "--resume", method=method, iters=6)
    assert resumed["step"] == 6
    assert resumed["losses"] == full[3:]       # bit-for-bit: pool, RNG, optimizer, EMA restored
    a = load_checkpoint(tmp_path / "full" / "ckpt.pt")
    b = load_checkpoint(tmp_path / "split" / "ckpt.pt")
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_pool_refills_only_finished_boards():
    class Stream:
        def next(self, n):
            q = np.zeros((n, 81), dtype=np.uint8)
            a = np.tile(np.arange(1, 10, dtype=np.uint8), (n, 9))
            return q, a
    pool = train_sudoku.StreamingBuffer(4, 8, "cpu")
    assert pool.refill(Stream()) == 4                    # a new pool starts empty: all refilled
    pool.z[1] = pool.x0[1]                               # board 1 solved
    pool.h[:] = 1.0
    assert pool.refill(Stream()) == 1
    assert (pool.h[1] == 0).all() and (pool.h[0] == 1).all()
    assert (pool.z[1] == train_sudoku.MASK_ID).all()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """One tiny relay run of 3 steps, shared by the sampler tests (its directory is relay_a)."""
    d = tmp_path_factory.mktemp("runs") / "relay_a"
    train(d, iters=3)
    return d / "ckpt.pt"


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_sample_cli_json_and_errors(tmp_path, tiny_ckpt):
    import sample
    ckpt = str(tiny_ckpt)
    r = run_cli("sample.py", "--ckpt", ckpt, ckpt, "--data", SAMPLE_CSV, "--limit", "6", "--json",
                "--sweep", "--out", str(tmp_path / "sw"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["tau"] for row in rows] == [0.05, 0.10, 0.15, 0.20, 0.25] * 2   # two checkpoints
    assert all({"tau", "n", "acc", "nfe", "legal"} <= set(row) and row["n"] == 6 for row in rows)
    # the same checkpoint twice: the same figures, told apart in the label
    same = lambda r: {k: v for k, v in r.items() if k not in ("wall_s", "label")}
    assert [same(r) for r in rows[:5]] == [same(r) for r in rows[5:]]
    assert rows[0]["label"] != rows[5]["label"] and rows[5]["label"].endswith("#2 @3")
    assert (tmp_path / "sw.png").stat().st_size > 1000 and (tmp_path / "sw.md").exists()
    # bad input: one line naming the problem (in-process), and as a script: that line on
    # stderr, exit status 2, no traceback
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("source,question,answer,rating\nx,123,456,0\n")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    cases = [
        (["--ckpt", ckpt, "--tau", "1.5"], "--tau 1.5: must lie in [0, 1]"),
        (["--ckpt", str(tmp_path / "missing.pt")], "no such checkpoint"),
        (["--ckpt", str(tmp_path / "junk.pt")], "not a readable checkpoint"),
        (["--ckpt", ckpt, "--data", str(bad_csv)], "bad.csv:2: question has 3 characters"),
    ]
    for args, needle in cases:
        with pytest.raises(UserError) as e:
            sample.main(args)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    r = run_cli("sample.py", *cases[3][0])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and cases[3][1] in lines[0]


def test_compared_checkpoints_of_one_method_stay_apart(tmp_path, tiny_ckpt):
    """Two runs of the same method (issue 19): distinct labels naming run and step, one line each
    in the figure, a step column in the table."""
    import matplotlib.pyplot as plt
    import sample
    train(tmp_path / "relay_b", iters=6)
    rows = sample.main(["--ckpt", str(tiny_ckpt),
                        str(tmp_path / "relay_b" / "ckpt.pt"), "--data", SAMPLE_CSV, "--limit", "4",
                        "--sweep", "--out", str(tmp_path / "cmp")])
    labels = list(dict.fromkeys(r["label"] for r in rows))
    assert labels == ["relay (tied) relay_a @3", "relay (tied) relay_b @6"]
    assert [r["step"] for r in rows] == [3] * 5 + [6] * 5
    fig = sample.sweep_figure(rows, "t")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and lines[0].get_color() != lines[1].get_color()
    assert [len(l.get_xdata()) for l in lines] == [5, 5]
    plt.close(fig)
    md = (tmp_path / "cmp.md").read_text().splitlines()
    assert md[0].startswith("| model | step | tau |")
    assert md[2].startswith("| relay (tied) relay_a @3 | 3 | 0.05 |")
    assert md[7].startswith("| relay (tied) relay_b @6 | 6 | 0.05 |")
    # same run name under two parents: one more directory each; a second file of a run keeps
    # its file name; the same path twice is numbered
    assert sample.run_names(["x/r1/ckpt.pt", "y/r1/ckpt.pt", "y/r1/ckpt_matched.pt"]) == \
        ["x/r1", "y/r1", "y/r1/ckpt_matched.pt"]
    assert sample.run_names(["a/ckpt.pt", "a/ckpt.pt"])[1].endswith("a #2")


def test_incompatible_checkpoint_is_refused(tmp_path, tiny_ckpt):
    import sample
    shutil.copyfile(tiny_ckpt, tmp_path / "ckpt.pt")
    ck = load_checkpoint(tmp_path / "ckpt.pt")
    ck["model_config"]["n_embd"] = 48           # the weights no longer fit the config
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="incompatible checkpoint"):
        sample.main(["--ckpt", str(tmp_path / "bad.pt"), "--data", SAMPLE_CSV])
    # resuming with another architecture is refused, and the checkpoint is left as it was
    before = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(UserError, match="differs from this run's"):
        train_sudoku.main(["--size", "cpu", "--data", SAMPLE_CSV, "--resume", "--out-dir",
                           str(tmp_path), "--max-iters", "4", "--no-progress"])
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_show_prints_trajectories(tiny_ckpt, capsys):
    import sample
    sample.main(["--ckpt", str(tiny_ckpt), "--data", SAMPLE_CSV, "--limit", "2", "--show", "1",
                 "--tau", "0.3"])
    out = capsys.readouterr().out
    assert "puzzle 0:" in out and "pass 1: revealed" in out and "*" in out


# -----------------------------------------------------------------------------
# the fine-tune protocol and the Loopholing baseline (issue 11)

def test_init_from_an_mlm_checkpoint_starts_equal_to_it(tmp_path):
    train(tmp_path / "mlm", method="mlm", iters=4)
    src_ck = load_checkpoint(tmp_path / "mlm" / "ckpt.pt")
    src = model_lib.build_model(src_ck["model_config"])
    src.load_state_dict(src_ck["ema"])
    cfg = dict(src_ck["model_config"], relay=True)
    relay_model = model_lib.build_model(cfg)
    train_sudoku.init_from_checkpoint(relay_model, str(tmp_path / "mlm" / "ckpt.pt"), "cpu")
    assert (relay_model.relay.norm.weight == 0).all() and (relay_model.relay.norm.bias == 0).all()
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 10, (5, 81), generator=g)
    h = torch.randn(5, 81, cfg["n_embd"], generator=g) * 3
    src.eval(), relay_model.eval()
    with torch.no_grad():
        want, _ = src(z)
        got, _ = relay_model(z, h)             # any h: R(h) = 0, so exactly the source's logits
    assert torch.equal(got, want)
    # a relay source into a model without R: R is dropped, the rest loads
    train(tmp_path / "relay", iters=2)
    plain = model_lib.build_model(cfg | dict(relay=False))
    train_sudoku.init_from_checkpoint(plain, str(tmp_path / "relay" / "ckpt.pt"), "cpu")
    rck = load_checkpoint(tmp_path / "relay" / "ckpt.pt")
    assert torch.equal(plain.wte.weight, rck["ema"]["wte.weight"])
    # another architecture is refused with one line
    wide = model_lib.build_model(cfg | dict(n_embd=48, n_head=2))
    with pytest.raises(UserError, match="differs from this run's"):
        train_sudoku.init_from_checkpoint(wide, str(tmp_path / "mlm" / "ckpt.pt"), "cpu")
    # the command line: a fine-tuned relay run from the MLM checkpoint
    r = train(tmp_path / "ft", "--init-from", str(tmp_path / "mlm" / "ckpt.pt"), iters=3)
    assert r["step"] == 3 and load_checkpoint(tmp_path / "ft" / "ckpt.pt")["args"]["init_from"]


def test_loopholing_reads_the_state_of_a_gradient_free_first_pass():
    """With --self-cond 1 every board gets a first pass (no grad, h = 0) and the graded pass
    reads its state; with 0 one graded pass with h = 0. Recorded by wrapping the model."""
    cfg = dict(model_lib.SIZES["tiny"], tied=True, relay=True)
    base = model_lib.build_model(cfg)
    calls = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cfg = base, base.cfg

        def forward(self, z, h=None, stop_grad=False):
            logits, h_new = self.inner(z, h)
            calls.append(dict(z=z.clone(), h=None if h is None else h.clone(),
                              grad=torch.is_grad_enabled(), out=h_new.detach().clone()))
            return logits, h_new

    q, a = sudoku.read_csv(SAMPLE_CSV, limit=8)
    for p, n_calls in ((1.0, 2), (0.0, 1)):
        calls.clear()
        stream = train_sudoku.PuzzleStream(q, a, False, np.random.default_rng(0))
        loss = train_sudoku.loopholing_loss(Recorder(), stream, 8, np.random.default_rng(1),
                                            "cpu", contextlib.nullcontext(), p)
        assert len(calls) == n_calls and loss.requires_grad
        if p == 1.0:
            first, graded = calls
            assert not first["grad"] and graded["grad"]
            assert torch.equal(first["z"], graded["z"]) and (first["h"] == 0).all()
            assert torch.equal(graded["h"], first["out"])       # the first pass's state, detached
        else:
            assert (calls[0]["h"] == 0).all()


class _Evil:
    def __reduce__(self):   # unpickling this would run a shell command
        return (os.system, (f"touch {_Evil.canary}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, tiny_ckpt):
    import sample
    _Evil.canary = str(tmp_path / "pwned")
    ck = torch.load(tiny_ckpt, weights_only=True)
    ck["history"] = [_Evil()]
    torch.save(ck, tmp_path / "evil.pt")
    for load in (lambda: sample.main(["--ckpt", str(tmp_path / "evil.pt"), "--data", SAMPLE_CSV]),
                 lambda: train_sudoku.main(["--size", "tiny", "--data", SAMPLE_CSV, "--init-from",
                                            str(tmp_path / "evil.pt"), "--max-iters", "1",
                                            "--out-dir", str(tmp_path / "o"), "--no-progress"])):
        with pytest.raises(UserError, match="refused, it would load the Python object") as e:
            load()
        assert "\n" not in str(e.value)
    assert not os.path.exists(_Evil.canary)
