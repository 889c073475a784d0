"""train_llm.py --parallel fsdp (FSDP2, torch's fully_shard) on 2 CPU ranks with gloo: the same
losses and weights as DDP on the same data, as one process where every rank sees the same rows,
checkpoints that resume on 1 or 2 ranks, and one-line errors for bad use."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import llm
import train_llm
from common import UserError
from conftest import ROOT

# fp32 on a CPU: FSDP2 reduce-scatters and all-gathers where DDP all-reduces, so sums run in
# another order; measured after 4 steps: losses within 1e-6, weights within 1.2e-7, except the
# attention's key biases (1.5e-6): their gradient is zero in exact arithmetic (a shift shared
# by every key cancels in the softmax), so what AdamW steps on is rounding noise, up to lr a step
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-6
CPU_LR, STEPS = 1e-3, 4


def same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        tol = CPU_LR * STEPS if k.endswith("k_proj.bias") else WEIGHT_TOL
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max())

# runs train_llm.main under torchrun and writes rank 0's losses where RESULT says
WORKER = """
import json, os, sys
sys.path.insert(0, {root!r})
import train_llm
r = train_llm.main(sys.argv[1:])
if int(os.environ.get("RANK", "0")) == 0:
    json.dump(r["losses"], open(os.environ["RESULT"], "w"))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random checkpoint, and a data file whose rows are all one example: then every
    rank, and one process, train on exactly the same tokens (the relay methods draw no random
    masks), so their runs must agree."""
    d = tmp_path_factory.mktemp("fsdp")
    llm.main(["--init-tiny", str(d / "tiny")])
    row = json.loads(open(llm.FIXTURE).readline())
    (d / "same.jsonl").write_text(json.dumps(row) + "\n")
    (d / "worker.py").write_text(WORKER.format(root=ROOT))
    return d


def run(setup, out, *args, ranks=2, method="relay", iters=4, data=None):
    """train_llm.py on `ranks` processes (torchrun) or one; returns rank 0's losses."""
    result = out.parent / (out.name + f"_losses{iters}.json")
    argv = ["--model", str(setup / "tiny"), "--method", method, "--max-iters", str(iters),
            "--ckpt-interval", "2", "--out-dir", str(out), "--no-progress",
            "--data", str(data or setup / "same.jsonl"), *args]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable])
    r = subprocess.run(launch + [str(setup / "worker.py"), *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1", RESULT=str(result)))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(result.read_text()), r.stdout


def weights(out):
    ck = out / "ckpt"
    w = load_file(str(ck / "model.safetensors"))
    if (ck / "relay.safetensors").exists():
        w.update({"relay." + k: v for k, v in load_file(str(ck / "relay.safetensors")).items()})
    return w


def close(a, b, tol):
    return all(abs(x - y) <= tol for x, y in zip(a, b)) and len(a) == len(b)


@pytest.fixture(scope="module")
def fsdp_relay(setup, tmp_path_factory):
    """Relay (K = 2 forwards, BPTT through the sharded model) for 4 steps on 2 FSDP2 ranks."""
    out = tmp_path_factory.mktemp("fsdp_relay") / "run"
    losses, log = run(setup, out, "--parallel", "fsdp")
    return out, losses, log


def test_fsdp_sft_equals_ddp(setup, tmp_path):
    """sft draws its masks per rank: compared with DDP on the same 2 ranks and data."""
    ddp, _ = run(setup, tmp_path / "ddp", "--parallel", "ddp", method="sft", data=llm.FIXTURE)
    fsdp, log = run(setup, tmp_path / "fsdp", "--parallel", "fsdp", method="sft", data=llm.FIXTURE)
    assert "gathered model equals its 2 shards" in log and "| fsdp |" in log
    assert close(fsdp, ddp, LOSS_TOL) and len(set(fsdp)) > 1, (fsdp, ddp)    # and it trained
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "fsdp")
    assert "relay.norm.weight" not in a
    same_weights(a, b)


def test_fsdp_relay_equals_one_process(setup, tmp_path, fsdp_relay):
    """On the one-example data every rank computes what one process does, so 2 FSDP2 ranks must
    give one process's losses and weights; the checkpoint loads like any other."""
    out, fsdp, log = fsdp_relay
    assert "gathered model equals its 2 shards" in log and len(set(fsdp)) > 1
    one, _ = run(setup, tmp_path / "one", ranks=1)
    assert close(fsdp, one, LOSS_TOL), (fsdp, one)
    a, b = weights(tmp_path / "one"), weights(out)
    assert "relay.norm.weight" in a and a["relay.norm.weight"].abs().sum() > 0     # R trained
    same_weights(a, b)
    lm, _, _ = llm.load_relay_lm(str(out / "ckpt"))
    assert lm.relay is not None
    # gradient checkpointing composes with the sharding: the same losses
    ckpt, _ = run(setup, tmp_path / "gc", "--parallel", "fsdp", "--grad-ckpt", "1")
    assert close(ckpt, fsdp, LOSS_TOL), (ckpt, fsdp)


def test_fsdp_checkpoint_resumes_on_one_and_two_ranks(setup, tmp_path, fsdp_relay):
    """Saved on 2 FSDP2 ranks at step 2 and resumed to step 4 on one process, and the other way
    round: the next losses are the uninterrupted run's. (The two directions load the
    optimizer's state by name into a plain optimizer and, renamed, into FSDP2's shards: 2 -> 2
    ranks composes the two.)"""
    full = fsdp_relay[1]
    run(setup, tmp_path / "half", "--parallel", "fsdp", iters=2)
    one, log = run(setup, tmp_path / "half", "--resume", ranks=1)
    assert "resumed" in log and close(one, full[2:], LOSS_TOL), (one, full)
    run(setup, tmp_path / "single", ranks=1, iters=2)       # its optimizer state renamed by name
    back, _ = run(setup, tmp_path / "single", "--parallel", "fsdp", "--resume")
    assert close(back, full[2:], LOSS_TOL), (back, full)


def test_bad_parallel_use_gets_one_line(setup, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError, match="launch it with torchrun") as e:
        train_llm.main(["--model", str(setup / "tiny"), "--parallel", "fsdp",
                        "--out-dir", str(tmp_path)])
    assert "\n" not in str(e.value)
    # the paper presets split 64 sequences per step over batch x ranks: 3 does not divide them
    with pytest.raises(UserError, match="does not divide the preset's 64 sequences") as e:
        train_llm.main(["--model", str(setup / "tiny"), "--preset", "paper", "--device", "cpu",
                        "--batch-size", "3", "--out-dir", str(tmp_path)])
    assert "\n" not in str(e.value)


def test_training_memory_table_counts_the_real_shapes():
    """bench.py --training-memory: the parameter counts of the real shapes are the published
    ones (Qwen2.5-1.5B: 1.54B, Qwen2.5-7B: 7.62B), DDP holds 16 bytes a parameter, and FSDP2's
    share falls with the ranks."""
    import bench
    rows = {r["model"]: r for r in bench.training_memory()}
    assert round(rows["fast-dllm-v2-1.5b"]["params"] / 1e9, 2) == 1.54
    assert round(rows["fast-dllm-v2-7b"]["params"] / 1e9, 2) == 7.62
    for r in rows.values():
        assert r["ddp"] == 16 * r["params"] / 1e9
        assert r["fsdp"][2] > r["fsdp"][4] > r["fsdp"][8] > r["ddp"] / 8
