"""The authors' 1.5B recipe in train_llm.py (METHOD.md 7 and 9): their schedule, their pool under
gradient accumulation, left truncation, the decode-aligned reveal, R's health in the log, and
eval_llm.py's evaluation length. Tiny random checkpoint, CPU."""
import json
import math
import os

import numpy as np
import pytest
import torch

import eval_llm
import llm
import train_llm
from common import load_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    llm.main(["--init-tiny", str(d)])
    return str(d)


def paper(tiny_dir, out, *extra, iters=4, method="relay"):
    """The paper preset, shrunk to the tiny model: only the sizes change."""
    return train_llm.main(["--preset", "paper", "--device", "cpu", "--model", tiny_dir,
                           "--method", method, "--seq-len", "128", "--grad-accum", "2",
                           "--grad-ckpt", "0", "--max-iters", str(iters), "--out-dir", str(out),
                           "--no-progress", *extra])


def log_of(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


# -----------------------------------------------------------------------------
# the schedule

def test_the_authors_schedule_is_hf_trainers_cosine():
    from transformers import get_cosine_schedule_with_warmup
    # their run: 60,000 rows, 2 ranks x batch 2 x accumulation 16, 3 epochs (HF's count)
    horizon = train_llm.schedule_horizon(60000, 2, 16, 2, 3.0)
    assert horizon == 2811 and math.ceil(0.03 * horizon) == 85
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
    factor = get_cosine_schedule_with_warmup(opt, num_warmup_steps=85,
                                             num_training_steps=horizon).lr_lambdas[0]
    steps = (0, 1, 84, 85, 86, 200, 1000, horizon - 1, horizon)
    want = {step: 5e-6 * factor(step) for step in steps}      # what HF's scheduler sets
    for step in steps:
        ours = train_llm.learning_rate(step, 5e-6, "authors", 0.03, horizon)
        assert ours == pytest.approx(want[step], rel=1e-12, abs=1e-20), step
    assert want[0] == 0.0 and want[85] == 5e-6 and want[horizon] == 0.0
    assert 4.8e-6 < want[200] < 5e-6                    # the paper's checkpoint: lr still high


def test_the_miniatures_schedule_is_unchanged():
    # cosine to zero at max-iters, int(3 %) warm-up starting at peak / warm-up (results/sudoku_llm)
    lr = [train_llm.learning_rate(s, 3e-4, "to-max-iters", 0.03, 300) for s in range(300)]
    assert lr[0] == 3e-4 / 9 and lr[8] == 3e-4 and lr[9] == 3e-4
    assert lr[299] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 290 / 291)))


def test_the_paper_preset_trains_on_that_schedule_and_keeps_step_checkpoints(tiny_dir, tmp_path):
    from transformers import get_cosine_schedule_with_warmup
    r = paper(tiny_dir, tmp_path, "--keep-interval", "2", "--epochs", "4")
    args = json.load(open(tmp_path / "args.json"))
    # the fixture's 12 rows, 1 rank x batch 2 x accumulation 2: 6 loader batches, 3 steps an
    # epoch, 12 in 4 epochs; warm-up ceil(0.36) = 1
    assert args["horizon"] == 12 and args["adam_betas"] == [0.9, 0.999]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
    f = get_cosine_schedule_with_warmup(opt, 1, 12).lr_lambdas[0]
    assert [rec["lr"] for rec in log_of(tmp_path)] == pytest.approx([5e-6 * f(s) for s in range(4)])
    assert log_of(tmp_path)[0]["lr"] == 0.0                # HF's first step moves nothing
    for step in (2, 4):                                   # HF's save_steps: kept, no state.pt
        kept = tmp_path / f"ckpt-{step}"
        assert (kept / "relay.safetensors").exists() and not (kept / "state.pt").exists()
        assert [rec["step"] for rec in map(json.loads, open(kept / "log.jsonl"))][-1] == step
    st = load_checkpoint(str(tmp_path / "ckpt" / "state.pt"))
    assert st["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert json.load(open(tmp_path / "ckpt" / "config.json"))["relay_eps"] == 1e-6
    lm, _, _ = llm.load_relay_lm(str(tmp_path / "ckpt-2"))
    assert lm.relay.norm.eps == 1e-6                      # the authors' eps comes back on load
    assert r["step"] == 4


def test_the_paper_preset_resumes_exactly_past_its_stop(tiny_dir, tmp_path):
    full = paper(tiny_dir, tmp_path / "a", iters=4)["losses"]
    paper(tiny_dir, tmp_path / "b", iters=2)                 # the preset's stop, then onward
    resumed = paper(tiny_dir, tmp_path / "b", "--resume", iters=4)
    assert resumed["losses"] == full[2:]
    assert [r["step"] for r in log_of(tmp_path / "b")] == [1, 2, 3, 4]


# -----------------------------------------------------------------------------
# rows longer than seq_len

def test_long_rows_are_cut_from_the_left(tiny_dir, tmp_path):
    _, tok, _ = llm.load_relay_lm(tiny_dir)
    prompt, response = "p" * 40, "r" * 70       # one token per character in the tiny tokenizer
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": prompt, "response": response}) + "\n"
                    + json.dumps({"prompt": "short", "response": "fine"}) + "\n")
    p_ids = tok(llm.user_turn(tok, prompt), add_special_tokens=False).input_ids
    r_ids = tok(response + llm.STOP_TOKEN, add_special_tokens=False).input_ids
    assert len(p_ids) + len(r_ids) > 96 > len(r_ids)
    ids, resp, n_long = train_llm.load_examples(str(data), tok, 96, 32, 999, "truncate-left")
    assert n_long == 1 and ids.shape == (2, 96)
    # by hand: the last 96 tokens of prompt + response, the response mask with them, no fill
    want = (p_ids + r_ids)[-96:]
    assert ids[0].tolist() == want
    assert resp[0].tolist() == [False] * (96 - len(r_ids)) + [True] * len(r_ids)
    ids, resp, n_long = train_llm.load_examples(str(data), tok, 96, 32, 999, "drop")
    assert n_long == 1 and ids.shape == (1, 96)


# -----------------------------------------------------------------------------
# the pool under gradient accumulation

def rows_file(tmp_path, n=10, words=1):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"row {i}", "response": f"answer {i} " * words})
                            + "\n" for i in range(n)))
    return str(path)


def traced(monkeypatch, pool, finish_at_call=None):
    """train_llm.rollout_loss replaced by a stand-in that records which examples each call
    (= micro-step) trains on, and reveals everything of its first row at call `finish_at_call`."""
    calls = []
    def fake(model, buffer, rows, K, tau, **kw):
        x0, z = buffer.x0[rows], buffer.z[rows].clone()
        calls.append(x0.clone())
        if len(calls) == finish_at_call:
            z[0] = x0[0]
        p = next(train_llm.unwrap(model).parameters())
        return p.sum() * 0 + 1.0, z, buffer.h[rows] + 0, torch.ones(z.shape[0], dtype=torch.bool)
    monkeypatch.setattr(train_llm, "rollout_loss", fake)
    return calls


@pytest.mark.parametrize("pool", ["shared", "sliced"])
def test_pool_under_accumulation_matches_a_hand_trace(tiny_dir, tmp_path, monkeypatch, pool):
    calls = traced(monkeypatch, pool, finish_at_call=2)
    data = rows_file(tmp_path)
    train_llm.main(["--model", tiny_dir, "--method", "relay", "--data", data, "--seq-len", "64",
                    "--batch-size", "2", "--grad-accum", "3", "--pool", pool, "--max-iters", "1",
                    "--out-dir", str(tmp_path / "o"), "--no-progress", "--seed", "1"])
    lm, tok, _ = llm.load_relay_lm(tiny_dir)
    ids, _, _ = train_llm.load_examples(data, tok, 64, 32, lm.mask_id)
    which = [[next(i for i in range(len(ids)) if torch.equal(ids[i], r)) for r in c] for c in calls]
    o = np.random.default_rng(1).permutation(10).tolist()       # the stream's order (seed 1)
    if pool == "shared":
        # micro 1: the first micro-batch fills both slots; micro 2: nothing finished, its
        # micro-batch (o2, o3) is skipped, slot 0 finishes; micro 3: slot 0 takes o4 (the first
        # row of its micro-batch), o5 is skipped, slot 1 goes on: o1 gets 3 x K = 6 forwards
        assert which == [[o[0], o[1]], [o[0], o[1]], [o[4], o[1]]]
    else:
        # one refill per step of 2 x 3 rows, micro-step m trains its own slice: K forwards each
        assert which == [[o[0], o[1]], [o[2], o[3]], [o[4], o[5]]]


def test_pool_shared_refill_takes_the_first_rows_of_the_micro_batch():
    ids = torch.arange(60).view(6, 10) + 5
    resp = torch.zeros(6, 10, dtype=torch.bool)
    resp[:, 4:] = True
    class Stream:                                   # hands out rows 0, 1, 2, ... in order
        pos = 0
        def next(self, n):
            out = list(range(self.pos, self.pos + n))
            self.pos += n
            return ids[out], resp[out]
    stream = Stream()
    pool = train_llm.StreamingBuffer(2, 10, 4, mask_id=1, device="cpu")
    assert pool.refill(stream, draw=2) == 2 and pool.x0[:, 0].tolist() == [5, 15]
    assert pool.refill(stream, draw=2) == 0 and stream.pos == 4     # rows 2 and 3 skipped
    pool.z[1] = pool.x0[1]                                           # slot 1 finished
    assert pool.refill(stream, draw=2) == 1 and stream.pos == 6
    assert pool.x0[:, 0].tolist() == [5, 45]                         # row 4 in, row 5 skipped


# -----------------------------------------------------------------------------
# the decode-aligned reveal in training

def test_decode_aligned_training_reveals_sub_block_by_sub_block(tiny_dir, tmp_path):
    # tau 0: every masked token is over the threshold, so `bd` would reveal a whole block per
    # forward; decode_aligned reveals, per 32-block, the earliest 8-token sub-block holding a
    # response [MASK]: after one step (K = 2 forwards), the first two such sub-blocks
    data = rows_file(tmp_path, words=20)
    out = tmp_path / "o"
    train_llm.main(["--model", tiny_dir, "--method", "relay", "--data", data, "--seq-len", "160",
                    "--batch-size", "2", "--grad-accum", "1", "--tau", "0.0", "--reveal",
                    "decode_aligned", "--max-iters", "1", "--out-dir", str(out), "--no-progress"])
    buf = load_checkpoint(str(out / "ckpt" / "state.pt"))["ranks"][0]["buffer"]
    for x0, resp, z in zip(buf["x0"], buf["resp"], buf["z"]):
        revealed = [j for j in range(160) if resp[j] and z[j] == x0[j]]
        want = []
        for b in range(0, 160, 32):                # by hand: sub-blocks with a response token
            subs = [[j for j in range(s, s + 8) if resp[j]] for s in range(b, b + 32, 8)]
            want += sum([s for s in subs if s][:2], [])
        assert revealed == sorted(want), (revealed, want)
        assert 0 < len(revealed) < int(resp.sum())            # bd at tau 0 would reveal all
        assert int(resp.sum()) > 32                           # the answer spans two blocks


# -----------------------------------------------------------------------------
# R's health

def test_the_log_shows_whether_r_moves(tiny_dir, tmp_path):
    r = train_llm.main(["--model", tiny_dir, "--method", "relay", "--max-iters", "3",
                        "--out-dir", str(tmp_path), "--no-progress", "--lr", "1e-3"])
    recs = log_of(tmp_path)
    # by hand: R starts at zero, and AdamW's first step moves each element by the learning
    # rate (its update m / sqrt(v) is the gradient's sign); step 0's lr is 1e-3 / 1
    assert recs[0]["relay_gain"] == pytest.approx(1e-3, rel=1e-3)
    assert recs[0]["relay_bias"] == pytest.approx(1e-3, rel=1e-3)
    # the last record is R as saved
    w = r["lm"].relay.norm.weight
    assert recs[-1]["relay_gain"] == pytest.approx(w.abs().mean().item(), rel=1e-6)
    assert all(0 < rec["relay_grad_ratio"] < 1 and rec["relay_grad"] > 0 for rec in recs)
    for rec in recs:
        assert rec["relay_grad_ratio"] == pytest.approx(rec["relay_grad"] / rec["backbone_grad"])
    # a method without R logs no R
    train_llm.main(["--model", tiny_dir, "--method", "rollout", "--max-iters", "1",
                    "--out-dir", str(tmp_path / "ro"), "--no-progress"])
    assert "relay_gain" not in log_of(tmp_path / "ro")[0]


def test_eval_defaults_to_the_authors_length():
    args = eval_llm.parser().parse_args(["--model", "m", "--task", "humaneval"])
    assert args.max_new_tokens == 2048


def test_relay_gain_sets_a_new_rs_initial_gain_only(tiny_dir, tmp_path):
    lm, _, _ = llm.load_relay_lm(tiny_dir, patch=True, relay_gain=0.125)
    assert (lm.relay.norm.weight == 0.125).all() and (lm.relay.norm.bias == 0).all()
    r = train_llm.main(["--model", tiny_dir, "--method", "relay", "--max-iters", "1", "--lr", "0",
                        "--relay-gain", "0.125", "--out-dir", str(tmp_path), "--no-progress"])
    assert (r["lm"].relay.norm.weight == 0.125).all()
    # a saved R is loaded as saved, whatever relay_gain says
    lm, _, _ = llm.load_relay_lm(str(tmp_path / "ckpt"), patch=True, relay_gain=0.5)
    assert (lm.relay.norm.weight == 0.125).all()
