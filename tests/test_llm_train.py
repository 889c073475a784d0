"""train_llm.py and llm.py on a tiny random Fast-dLLM v2-layout checkpoint (CPU)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import llm
import train_llm
from common import UserError
from conftest import ROOT

FIX = os.path.join(ROOT, "tests", "fixtures")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    llm.main(["--init-tiny", str(d)])
    return str(d)


def test_loads_like_qwen2_on_the_same_weights(tiny_dir):
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM
    lm, tok, raw = llm.load_relay_lm(tiny_dir)
    assert raw["model_type"] == "Fast_dLLM_Qwen" and lm.relay is None
    assert tok.convert_ids_to_tokens(lm.mask_id) == llm.MASK_TOKEN
    # the config mapping keeps Fast-dLLM v2's rope_theta (1e6): check the rotary table itself
    head_dim = raw["hidden_size"] // raw["num_attention_heads"]
    inv_freq = lm.qwen.model.rotary_emb.inv_freq
    assert torch.allclose(inv_freq[1], torch.tensor(1e6 ** (-2 / head_dim)))
    # an independent load: transformers' own class, the weights by name, its own causal mask
    cfg = Qwen2Config(**{k: raw[k] for k in llm.QWEN2_KEYS if k in raw})
    ref = Qwen2ForCausalLM(cfg).eval()
    missing, unexpected = ref.load_state_dict(load_file(os.path.join(tiny_dir, "model.safetensors")),
                                              strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ids = torch.randint(0, len(tok), (2, 40))
    T = ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    ours = lm.lm_head(lm.run(lm.embed(ids), causal, torch.arange(T)[None].expand(2, -1)))
    assert torch.allclose(ours, ref(ids).logits, atol=1e-5)


def test_zero_initialised_relay_changes_nothing(tiny_dir):
    base, _, _ = llm.load_relay_lm(tiny_dir)
    patched, _, _ = llm.load_relay_lm(tiny_dir, patch=True)
    assert (patched.relay.norm.weight == 0).all() and (patched.relay.norm.bias == 0).all()
    x0 = torch.randint(5, 200, (2, 64))
    z = x0.clone()
    z[:, 40:] = patched.mask_id
    h = torch.randn(2, 64, base.qwen.config.hidden_size)
    where = z == patched.mask_id
    assert torch.equal(patched(z, x0, h, where), base(z, x0))
    with torch.no_grad():
        patched.relay.norm.bias.fill_(0.3)            # a non-zero R does change the output
    assert not torch.allclose(patched(z, x0, h, where), base(z, x0))


def test_training_attention_mask_rule():
    L, bs = 6, 2
    m = llm.training_mask(L, bs)
    for q in range(2 * L):
        for k in range(2 * L):
            qb, kb = (q % L) // bs, (k % L) // bs
            q_noisy, k_noisy = q < L, k < L
            if q_noisy:
                want = (kb == qb) if k_noisy else (kb < qb)
            else:
                want = (not k_noisy) and kb <= qb
            assert m[q, k].item() == want, (q, k)


def test_complementary_masks_partition_the_response():
    rng = np.random.default_rng(0)
    resp = torch.zeros(3, 64, dtype=torch.bool)
    resp[:, 10:50] = True                              # prompt 0..9, response 10..49, pad after
    m = train_llm.sft_masks(resp, 32, rng)
    a, b = m[:3], m[3:]
    assert not (a & b).any()                           # disjoint ...
    assert torch.equal(a | b, resp)                    # ... and together exactly the response
    assert not m[:, :10].any() and not m[:, 50:].any()  # prompt and pad never masked
    assert a.any() and b.any()
    # one rate t per 32-block, not per row: two blocks of a row are masked at unrelated rates
    # (E|t1 - t2| = 1/3 for independent uniforms; a shared t would give binomial noise, ~0.1)
    full = torch.ones(400, 64, dtype=torch.bool)
    m = train_llm.sft_masks(full, 32, np.random.default_rng(1))[:400].float()
    gap = (m[:, :32].mean(1) - m[:, 32:].mean(1)).abs().mean().item()
    assert 0.25 < gap < 0.42


def _two_forward_grad(lm, stop_grad):
    torch.manual_seed(0)
    with torch.no_grad():
        lm.relay.norm.weight.fill_(1.0)
        lm.relay.norm.bias.normal_()
    x0 = torch.randint(5, 200, (1, 64))
    z = x0.clone()
    z[:, 33:] = lm.mask_id
    hs1 = lm(z, x0)
    hs1.retain_grad()
    where = z == lm.mask_id
    hs2 = lm(z, x0, hs1, where, stop_grad)
    loss = torch.nn.functional.cross_entropy(lm.logits(hs2[where]), x0[where])
    loss.backward()
    return hs1.grad


def test_relay_sg_stops_gradient_and_relay_passes_it(tiny_dir):
    lm, _, _ = llm.load_relay_lm(tiny_dir, patch=True)
    assert _two_forward_grad(lm, stop_grad=True) is None
    g = _two_forward_grad(lm, stop_grad=False)
    assert g is not None and g.abs().max() > 0
    assert (g[:, :33] == 0).all()            # R(h) is added only at [MASK] positions


def test_the_training_loss_keeps_mask_in_its_softmax(tiny_dir):
    """Fast-dLLM v2's recipe: the CE's softmax runs over the whole vocabulary, [MASK] included,
    so raising only [MASK]'s logit raises the loss (and training pushes it down); the returned
    logits, used for Alg. 1 line 8's confidences, exclude it as decoding does. Checked against
    log-softmax computed here over the lm_head's raw output."""
    lm, _, _ = llm.load_relay_lm(tiny_dir, dtype=torch.float64)
    torch.manual_seed(0)
    hs = torch.randn(2, 8, lm.qwen.config.hidden_size, dtype=torch.float64)
    x0 = torch.randint(5, 200, (2, 8))
    masked = torch.rand(2, 8) < 0.6
    loss, conf_logits = train_llm.masked_ce(lm, hs, x0, masked)
    raw = hs[masked] @ lm.qwen.lm_head.weight.T
    want = -raw.log_softmax(-1).gather(-1, x0[masked][:, None]).mean()
    assert torch.allclose(loss.double(), want, atol=1e-5)        # the CE runs in fp32
    assert (conf_logits[:, lm.mask_id] == float("-inf")).all()
    others = torch.arange(raw.shape[-1]) != lm.mask_id
    assert torch.equal(conf_logits[:, others], raw[:, others])
    with torch.no_grad():
        lm.qwen.lm_head.weight[lm.mask_id] += 5 * hs[masked].mean(0) / hs[masked].mean(0).norm()
    assert train_llm.masked_ce(lm, hs, x0, masked)[0] > loss


def test_pool_refills_finished_rows_with_zero_state():
    ids = torch.arange(40).view(2, 20) + 5
    resp = torch.zeros(2, 20, dtype=torch.bool)
    resp[:, 8:] = True
    stream = train_llm.ExampleStream(ids, resp, np.random.default_rng(0))
    pool = train_llm.StreamingBuffer(3, 20, 4, mask_id=1, device="cpu")
    assert pool.refill(stream) == 3
    assert ((pool.z == 1) == pool.resp).all()          # fresh rows: every response token masked
    pool.z[0] = pool.x0[0]                              # row 0 finished
    pool.h[:] = 7.0
    pool.has_h[:] = True
    assert pool.refill(stream) == 1
    assert (pool.h[0] == 0).all() and not pool.has_h[0]
    assert (pool.h[1:] == 7).all() and pool.has_h[1:].all()


def train(tiny_dir, out, *extra, method="relay", iters=4):
    return train_llm.main(["--model", tiny_dir, "--method", method, "--max-iters", str(iters),
                    "--out-dir", str(out), "--no-progress", "--ckpt-interval", "2", *extra])


@pytest.mark.parametrize("method", ["sft", "rollout", "relay_sg", "relay"])
def test_every_method_trains_and_saves_a_loadable_checkpoint(tiny_dir, tmp_path, method):
    r = train(tiny_dir, tmp_path, method=method, iters=12)
    assert np.isfinite(r["losses"]).all()
    assert np.mean(r["losses"][-3:]) < np.mean(r["losses"][:2])
    lm, _, raw = llm.load_relay_lm(str(tmp_path / "ckpt"))
    assert (lm.relay is not None) == method.startswith("relay") and raw["relay"] == (lm.relay is not None)
    for k, v in r["lm"].qwen.state_dict().items():
        assert torch.equal(lm.qwen.state_dict()[k], v), k


def test_resume_continues_exactly(tiny_dir, tmp_path):
    full = train(tiny_dir, tmp_path / "a", iters=4)["losses"]
    train(tiny_dir, tmp_path / "b", iters=2)
    resumed = train(tiny_dir, tmp_path / "b", "--resume", iters=4)
    assert resumed["step"] == 4 and resumed["losses"] == full[2:]


def test_torchrun_two_ranks_stay_identical(tiny_dir, tmp_path):
    # --standalone: a free rendezvous port, not the fixed 29500 another job may hold
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train_llm.py", "--model", tiny_dir, "--method", "relay", "--max-iters", "3",
           "--ckpt-interval", "1", "--out-dir", str(tmp_path), "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    what = [l for l in r.stderr.splitlines() if "what()" in l or "Error" in l][:5]
    assert r.returncode == 0, "\n".join(what) + "\n" + r.stderr[-1500:]
    assert r.stdout.count("parameters identical on all 2 ranks") == 3
    assert "2 rank(s) = 8 sequences/step" in r.stdout
    assert (tmp_path / "ckpt" / "relay.safetensors").exists()


def run_cli(*args):
    return subprocess.run([sys.executable, "train_llm.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_bad_inputs_get_one_line_errors(tiny_dir, tmp_path):
    not_qwen = tmp_path / "llama"
    not_qwen.mkdir()
    (not_qwen / "config.json").write_text(json.dumps({"model_type": "llama"}))
    no_mask = tmp_path / "nomask"
    shutil.copytree(tiny_dir, no_mask)
    tj = json.loads((no_mask / "tokenizer.json").read_text())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != llm.MASK_TOKEN]
    tj["model"]["vocab"].pop(llm.MASK_TOKEN)
    (no_mask / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((no_mask / "tokenizer_config.json").read_text())
    tc.pop("added_tokens_decoder", None)
    tc["additional_special_tokens"] = [t for t in tc.get("additional_special_tokens", [])
                                       if t != llm.MASK_TOKEN]
    tc.pop("extra_special_tokens", None)
    (no_mask / "tokenizer_config.json").write_text(json.dumps(tc))
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "hi", "response": "there"}\n{"prompt": "only a prompt"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "hi", "response": "   "}\n')
    cases = [
        (["--model", str(not_qwen)], "is not a Fast-dLLM v2"),
        (["--model", str(tmp_path / "nowhere")], "hub download failed"),
        (["--model", str(no_mask)], "has no |<MASK>| token"),
        (["--model", tiny_dir, "--data", str(missing)], "missing.jsonl:2: missing field 'response'"),
        (["--model", tiny_dir, "--data", str(empty)], "empty.jsonl:1: empty response"),
        (["--model", tiny_dir, "--seq-len", "100"], "--seq-len 100 is not a multiple of the block size 32"),
    ]
    for args, needle in cases:   # in-process: the message names the file, line or flag
        with pytest.raises(UserError) as e:
            train_llm.main([*args, "--max-iters", "1", "--out-dir", str(tmp_path / "o"),
                            "--no-progress"])
        assert needle in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
    # and the script turns it into one line on stderr and exit status 2
    r = run_cli(*cases[3][0], "--max-iters", "1", "--out-dir", str(tmp_path / "o"), "--no-progress")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and cases[3][1] in lines[0]


def test_bench_measures_llm_memory_per_method(tiny_dir):
    import bench
    from llm import FIXTURE
    out = bench.llm_peak_memory(tiny_dir, FIXTURE, 256, 2, 2, 0.85, False, "cpu")
    assert set(out) == {"sft", "relay"} and out["sft"] > 0 and out["relay"] > 0


def test_prepare_llm_from_local_files(tmp_path):
    from data import prepare_llm
    out = tmp_path / "mix.jsonl"
    rows = prepare_llm.main(["--code", os.path.join(FIX, "opencodeinstruct_sample.jsonl"),
                             "--math", os.path.join(FIX, "openmathinstruct2_sample.jsonl"),
                             "--n-code", "100", "--n-math", "3", "--out", str(out)])
    src = [r["source"] for r in rows]
    assert src.count("code") == 6 and src.count("math") == 3   # the two unfit code rows dropped
    assert all("def " in r["response"] for r in rows if r["source"] == "code")
    assert len(out.read_text().splitlines()) == 9


def test_toy_tasks_have_right_answers_and_disjoint_splits():
    """data/toy_tasks.py: every answer recomputed from the prompt's text, splits disjoint,
    the same seed gives the same rows, and each task's answers have the advertised lengths."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("toy_tasks", os.path.join(ROOT, "data", "toy_tasks.py"))
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    rows = {s: toy.generate(s, 60, seed=3) for s in toy.SPLITS}
    prompts = {s: {r["prompt"] for r in rows[s]} for s in rows}
    assert all(len(prompts[s]) == 180 for s in rows)
    assert not (prompts["train"] & prompts["val"] or prompts["train"] & prompts["test"]
                or prompts["val"] & prompts["test"])
    assert toy.generate("test", 60, seed=3) == rows["test"] != toy.generate("test", 60, seed=4)
    for r in rows["train"] + rows["test"]:
        kind, arg = r["prompt"].split(": ")
        kind = kind.split()[0]
        digits = [int(x) for x in arg.split() if x.isdigit()]
        want = {"Add": lambda: f"{digits[0] + digits[1]:05d}",
                "Running": lambda: " ".join(str(sum(digits[:i + 1]) % 10)
                                            for i in range(len(digits))),
                "Rotate": lambda: arg[3:] + arg[:3]}[kind]()
        task = {"Add": "add", "Running": "prefix", "Rotate": "rotate"}[kind]
        assert r["answer"] == r["response"] == want and r["task"] == task
        assert toy.exact_match(f" {want}\n", r["answer"]) and not toy.exact_match(want + "0", want)
    lengths = {t: {len(r["answer"]) for r in rows["train"] if r["task"] == t} for t in toy.TASKS}
    assert lengths == {"add": {5}, "prefix": {23}, "rotate": {12}}     # one layout per task


def test_sudoku_as_text_rows_and_scores(tmp_path):
    """data/sudoku_text.py: every training row is a symmetry of a training puzzle with its
    solution (a legal board agreeing with every clue), the splits share no puzzle, the same
    seed writes the same files; the scores on hand-made answers."""
    from data import sudoku_text
    from data.sudoku import legal
    n = sudoku_text.write_splits(str(tmp_path / "a"), "30-40", copies=3, n_train=12, n_eval=5,
                                 n_val=5, n_test=5)
    assert n == {"train": 36, "val": 5, "test": 5}
    rows = {s: [json.loads(l) for l in open(tmp_path / "a" / f"{s}.jsonl")] for s in n}
    for r in rows["train"] + rows["test"]:
        q, a = r["prompt"], r["answer"]
        assert len(q) == len(a) == 81 and r["response"] == a and r["task"] == "sudoku"
        assert all(c == "0" or c == d for c, d in zip(q, a))             # the clues kept
        assert legal(np.array([[int(c) for c in a]]))[0]
        assert 30 <= sum(c != "0" for c in q) <= 40
    assert len({r["prompt"] for r in rows["train"]}) == 36               # 3 distinct symmetries
    assert not {r["prompt"] for r in rows["test"]} & {r["prompt"] for r in rows["val"]}
    sudoku_text.write_splits(str(tmp_path / "b"), "30-40", copies=3, n_train=12, n_eval=5,
                             n_val=5, n_test=5)
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    # scores: the right answer; one wrong blank; a clue changed (an illegal board, blanks right);
    # a short answer
    r = rows["test"][0]
    blank = [i for i, c in enumerate(r["prompt"]) if c == "0"]
    clue = next(i for i, c in enumerate(r["prompt"]) if c != "0")
    def put(i, d):
        return r["answer"][:i] + d + r["answer"][i + 1:]
    wrong_blank = put(blank[0], str(int(r["answer"][blank[0]]) % 9 + 1))
    wrong_clue = put(clue, str(int(r["answer"][clue]) % 9 + 1))
    exact, cell, ok = sudoku_text.score([r["answer"], wrong_blank, wrong_clue, r["answer"][:80]],
                                        [r] * 4)
    assert exact.tolist() == [True, False, False, False]
    assert cell.tolist() == [1.0, 1 - 1 / len(blank), 1.0, 0.0]
    assert ok.tolist() == [True, False, False, False]


def test_init_tiny_sizes_and_a_character_tokenizer(tmp_path):
    d = str(tmp_path / "m")
    llm.main(["--init-tiny", d, "--vocab-size", "260", "--hidden-size", "32", "--layers", "1",
              "--heads", "2", "--rope-theta", "1e4"])
    lm, tok, _ = llm.load_relay_lm(d)
    cfg = lm.qwen.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, len(tok)) == (32, 1, 2, 260)
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]   # transformers 5
    assert theta == 1e4
    assert len(tok("Sort: 12 7", add_special_tokens=False).input_ids) == 10   # one per character
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "response": "y"}\n{"prompt": "x"}\n')
    with pytest.raises(llm.LLMError, match=f"{bad}:2:"):
        llm.main(["--init-tiny", str(tmp_path / "m2"), "--corpus", str(bad)])
