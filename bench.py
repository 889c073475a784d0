"""
Speed and memory figures, measured in one run on this machine. Sudoku (always):
- the fp32 matmul peak (a large square matmul, the best of several timings),
- training throughput (boards/s), achieved FLOP/s and MFU = achieved / that peak, for the CPU
  default size and the paper size, running train_sudoku.py's own rollout/relay step,
- sampler overhead = sampling wall time / (batched passes x one full-batch forward).
The LLM (with --llm-model): peak memory of one training micro-step per method, each in a fresh
process, and cached vs uncached block decoding (same tokens, wall time).

    python bench.py                          # Sudoku: both sizes, relay K=2
    python bench.py --sizes cpu --steps 3
    python bench.py --llm-model T --skip-sudoku   # T: python llm.py --init-tiny T
    python bench.py --fingerprint            # do seeds rerun here repeat ours bit for bit?
"""
import argparse
import json
import multiprocessing
import time

import numpy as np
import torch

from common import autocast_for, load_checkpoint, resolve_device, run_main
from model import N_CELLS, SIZES, build_model, encode
from sample import solve_boards
from data.sudoku import load_boards
import train_sudoku


def matmul_peak(device, n=2048, reps=5):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(size, batch, K, steps, device, puzzles, solutions):
    cfg = dict(SIZES[size], tied=True, relay=True)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    stream = train_sudoku.PuzzleStream(puzzles, solutions, True, rng)
    buffer = train_sudoku.StreamingBuffer(batch, model.cfg.n_embd, device)
    autocast = autocast_for(device)

    def step():
        buffer.refill(stream)
        loss, z, h = train_sudoku.rollout_loss(model, buffer, K, lambda: 0.15, use_relay=True,
                                               stop_grad=False, autocast=autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        buffer.z, buffer.h = z, h.detach().float()

    step()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t) / steps
    flops = 3 * K * batch * model.flops_per_pass()      # forward + backward (2x) per pass
    return dict(size=size, params_M=model.num_params() / 1e6, batch=batch, K=K,
                step_s=dt, boards_per_s=batch / dt, flops=flops / dt), model


def bench_sampler(model, puzzles, tau, device):
    model.eval()
    z_batch = len(puzzles)
    t = time.perf_counter()
    boards, nfe, _ = solve_boards(model, puzzles, tau, batch_size=z_batch)
    sync(device)
    wall = time.perf_counter() - t
    passes = int(nfe.max())                   # batched passes (the batch runs until its last board)
    z = encode(puzzles).to(device)
    h = torch.zeros(len(z), N_CELLS, model.cfg.n_embd, device=device)
    with torch.no_grad():
        model(z, h)
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            model(z, h)
        sync(device)
        fwd = (time.perf_counter() - t) / 3
    return dict(n=len(puzzles), tau=tau, mean_nfe=float(nfe.mean()), passes=passes, wall_s=wall,
                forward_s=fwd, overhead=wall / (passes * fwd))


# -----------------------------------------------------------------------------
# the LLM: peak memory of one training micro-step, cached vs uncached decoding

def llm_peak_memory(model, data, seq_len, batch_size, K, tau, grad_ckpt, device,
                    methods=("sft", "relay")):
    """One training micro-step per method, each in a fresh process; the peak memory of each
    above the loaded model and data (CUDA peak allocation on a GPU; on a CPU the peak resident
    set, VmHWM, reset just before the step). Returns {method: GiB}."""
    settings = dict(model=model, data=data, seq_len=seq_len, batch_size=batch_size, K=K, tau=tau,
                    grad_ckpt=grad_ckpt, device=device)
    out = {}
    for method in methods:
        with multiprocessing.get_context("spawn").Pool(1) as workers:
            out[method] = workers.apply(_llm_micro_step_memory, (settings, method))
    return out


def _llm_micro_step_memory(s, method):
    import train_llm
    from llm import load_relay_lm
    device = torch.device(s["device"])
    lm, tok, _ = load_relay_lm(s["model"], patch=method.startswith("relay"), device=device,
                               dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    if s["grad_ckpt"]:
        lm.qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()
    ids, resp, _ = train_llm.load_examples(s["data"], tok, s["seq_len"], lm.block_size, lm.mask_id)
    rng = np.random.default_rng(0)
    stream = train_llm.ExampleStream(ids, resp, rng)
    buffer = train_llm.StreamingBuffer(s["batch_size"], s["seq_len"], lm.qwen.config.hidden_size,
                                       lm.mask_id, device)
    buffer.refill(stream)
    x0, resp = (t.to(device) for t in stream.next(s["batch_size"]))
    autocast = autocast_for(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_reset()
    if method == "sft":
        loss = train_llm.sft_loss(lm, x0, resp, rng, autocast)
    else:
        loss = train_llm.rollout_loss(lm, buffer, slice(0, s["batch_size"]), s["K"], s["tau"],
                                      use_relay=method.startswith("relay"),
                                      stop_grad=method == "relay_sg", autocast=autocast)[0]
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    return (_proc_status("VmHWM") - base) / 2 ** 30


def _rss_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                 # resets VmHWM to the current RSS (Linux >= 4.0)
    return _proc_status("VmRSS")


def _proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def llm_decode_speed(lm, tok, prompt_tokens, new_tokens, use_relay=True):
    """Cached vs uncached (recompute the prefix every pass) decoding of one prompt made of the
    fixture's responses repeated to `prompt_tokens`, `new_tokens` at most (fewer if the model
    stops): wall time of each and whether the tokens agree."""
    from llm import FIXTURE, THRESHOLD
    from sample_llm import generate
    text = " ".join(json.loads(line)["response"] for line in open(FIXTURE) if line.strip())
    ids = tok(text, add_special_tokens=False).input_ids
    prompt = (ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens]
    times, outs, nfes = {}, {}, {}
    for mode, kw in (("cached", {}), ("uncached", dict(use_cache=False)),
                     ("sub_block", dict(sub_block_cache=True))):
        t = time.time()
        outs[mode], nfe, _ = generate(lm, [prompt], new_tokens, THRESHOLD, use_relay=use_relay, **kw)
        times[mode], nfes[mode] = time.time() - t, int(nfe[0])
    return dict(prompt_tokens=len(prompt), new_tokens=len(outs["cached"][0]), cached_s=times["cached"],
                uncached_s=times["uncached"], speedup=times["uncached"] / times["cached"],
                identical_tokens=outs["cached"] == outs["uncached"], nfe=nfes["cached"],
                sub_block_s=times["sub_block"], sub_block_nfe=nfes["sub_block"],
                sub_block_same_tokens=outs["sub_block"] == outs["cached"])


DECODING_OPTIONS = {   # sample_llm.generate's options: the default, then one departure at a time
    "default": {},
    "--no-first-from-cache": dict(first_from_cache=False),
    "--tau 0.9 (official eval)": dict(tau=0.9),
}


def llm_decoding_nfe(lm, tok, new_tokens):
    """Mean NFE over the fixture's prompts (chat template) under each of DECODING_OPTIONS, both
    counts: ours and the official decoder's (sample_llm.generate)."""
    from llm import FIXTURE
    from sample_llm import generate, user_turn
    rows = [json.loads(line) for line in open(FIXTURE) if line.strip()]
    prompts = [tok(user_turn(tok, r["prompt"]), add_special_tokens=False).input_ids for r in rows]
    out = {}
    for name, kw in DECODING_OPTIONS.items():
        _, ours, official = generate(lm, prompts, new_tokens, **kw)
        out[name] = (float(ours.mean()), float(official.mean()))
    return out, len(prompts)


def training_memory(ranks=(2, 4, 8)):
    """Computed, not measured: GB per GPU of the training state of each REAL_SHAPES model under
    DDP (every rank: fp32 weights, gradients and AdamW's two moments, 16 bytes a parameter) and
    under FSDP2 over N ranks (those 16 bytes / N, plus what FSDP2 gathers in bf16: the root,
    kept from the forward to the backward, and two decoder layers, the running one and the
    prefetched one). Activations are left out: they depend on batch, length and checkpointing."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from llm import REAL_SHAPES
    rows = []
    for name, shape in REAL_SHAPES.items():
        with torch.device("meta"):
            m = Qwen2ForCausalLM(Qwen2Config(**shape))
        total = sum(q.numel() for q in m.parameters())
        layer = sum(q.numel() for q in m.model.layers[0].parameters())
        root = total - layer * len(m.model.layers)
        gathered = 2 * (root + 2 * layer)
        rows.append(dict(model=name, params=total, ddp=16 * total / 1e9,
                         fsdp={n: (16 * total / n + gathered) / 1e9 for n in ranks}))
    return rows


# -----------------------------------------------------------------------------

def code_eval_speed(data_dir, backend="auto", workers=2):
    """Seconds per sample to score every canonical solution of HumanEval+ and MBPP: cold (the
    reference runs computed, in a fresh cache) and warm (the references from that cache)."""
    import tempfile
    import code_eval
    rows = []
    with tempfile.TemporaryDirectory(prefix="relay_references_") as cache:
        code_eval.CACHE_DIR = cache
        for task in ("humaneval_plus", "mbpp"):
            problems = code_eval.load_tasks(task, data_dir=data_dir)
            for state in ("cold", "warm"):
                code_eval._REFERENCES.clear()
                t0 = time.time()
                res = code_eval.evaluate_solutions(problems, [p["canonical"] for p in problems],
                                                   workers, backend=backend)
                dt = time.time() - t0
                ok = sum(bool(r["base"]) and r["plus"] is not False for r in res)
                rows.append(dict(task=task, state=state, n=len(problems), passed=ok, wall_s=dt))
                print(f"code_eval {task} ({code_eval.choose_backend(backend)}, {workers} "
                      f"workers, {state}): {ok}/{len(problems)} canonical pass, {dt:.1f} s, "
                      f"{dt / len(problems):.3f} s/sample", flush=True)
    return rows


# samples built against the evaluator itself (EVALUATION.md, "No sample can stop the run"):
# each writes the worst it can on the answer channel (the runner moved fd 1 to stderr; the
# channel is one of the descriptors above it), for a toy problem with 100 plus inputs
_CHANNEL = ("import json, os\ndef send(b):\n    for fd in range(3, 12):\n        try:\n"
            "            os.write(fd, b)\n        except OSError:\n            pass\n")
HOSTILE = {
    "64 MiB of blank lines": "send(b'\\n' * (64 << 20))",
    "answer lines of 1 MiB (ints), to the output cap": (
        "line = json.dumps({'i': 0, 'out': ['ok', list(range(120000))]}).encode() + b'\\n'\n"
        "send(b''.join(line.replace(b'\"i\": 0', b'\"i\": %d' % i, 1) for i in range(120)))"),
    "a set of 30,000 colliding ints per answer": (
        "P = (1 << 61) - 1\nnode = {'s': [{'i': hex(k * P)} for k in range(1, 30001)]}\n"
        "send(b''.join(json.dumps({'i': i, 'out': ['ok', node]}).encode() + b'\\n' "
        "for i in range(60)))"),
    "1 MiB of nesting per answer": "send((b'[' * (1 << 20) + b'\\n') * 60)",
    "an exception type named with 1 MB": (
        "raise type('E' * (1 << 20), (Exception,), {})()"),
}


def code_eval_hostile(backend="auto", timeout=10.0):
    """Each HOSTILE sample scored in a fresh process: its wall time (the sandbox's included,
    under a timeout of `timeout` + `timeout` s) and that process's peak memory (ru_maxrss),
    against an honest sample's."""
    import os
    import subprocess
    import sys
    import code_eval
    problem = dict(task_id="toy/0", entry_point="add", prompt="def add(a, b):\n",
                   canonical="def add(a, b):\n    return a + b\n",
                   test="def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n",
                   inputs=[[i, i + 1] for i in range(100)], atol=0)
    samples = dict(honest="def add(a, b):\n    return a + b\n",
                   **{name: "def attempt():\n" + "".join("    " + l + "\n" for l in (
                       _CHANNEL + body).splitlines()) + "    return 0\n"
                      "def add(a, b, _=attempt()):\n    return a + b\n"
                      for name, body in HOSTILE.items()})
    backend = code_eval.choose_backend(backend)
    script = ("import json, resource, sys, time\nimport code_eval\n"
              "p, code, backend, timeout = json.loads(sys.stdin.read())\n"
              "code_eval.reference(p, 2 * timeout, backend)\n"       # the reference apart
              "m0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "t = time.time()\nr = code_eval.judge(p, code, timeout, timeout, backend)\n"
              "print(json.dumps(dict(r, wall=time.time() - t, rss0=m0,"
              " rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n")
    rows = []
    for name, code in samples.items():
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             input=json.dumps([problem, code, backend, timeout]),
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        if out.returncode:
            raise RuntimeError(f"{name}: {out.stderr.strip()[-300:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(dict(name=name, **r))
        print(f"{name}: {'pass' if r['plus'] else 'fail'} ({r['reason'][:50]}) | {r['wall']:.1f} s | "
              f"evaluator peak {r['rss'] / 1024:.0f} MB ({(r['rss'] - r['rss0']) / 1024:.0f} MB "
              f"over its size before the sample)", flush=True)
    return rows

# `--fingerprint`'s digest (torch 2.13.0+cpu) on the machine that trained results/hard and
# results/sudoku_llm, one of this project's 2-core AMD EPYCs (others of the kind pick other
# kernels); seed 1 retrained there repeated results/hard's step-600 figures exactly
KNOWN_FINGERPRINTS = {"ae7e58715d2546a1": "the machine that trained results/hard and "
                                          "results/sudoku_llm"}
FINGERPRINT_ARGS = ["--preset", "cpu", "--clues", "26-30", "--method", "relay", "--max-iters", "20",
                    "--eval-interval", "20", "--eval-n", "64", "--seed", "1", "--max-minutes", "0",
                    "--no-progress"]


def fingerprint():
    """Which float kernels this machine's torch picks: 20 Relay steps of the `cpu` preset at one
    thread, then the SHA-256 of the weights (first 16 hex digits). Two machines with the same
    digest train the same seed to the same weights; a different digest means a rerun of a seed
    is a new draw (results/hard/README.md: how far apart such runs end)."""
    import hashlib
    import os
    import subprocess
    import sys
    import tempfile
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="relay_fingerprint_") as out:
        r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(
            __file__)), "train_sudoku.py"), *FINGERPRINT_ARGS, "--out-dir", out], env=env,
            capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"train_sudoku.py exited {r.returncode}: {r.stderr.strip()[-500:]}")
        weights = load_checkpoint(os.path.join(out, "ckpt.pt"))["model"]
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].float().numpy().tobytes())
    digest = h.hexdigest()[:16]
    known = KNOWN_FINGERPRINTS.get(digest)
    print(f"fingerprint {digest} (torch {torch.__version__}): " +
          (f"the kernels of {known}: its seeds should repeat here bit for bit" if known else
           f"not one of ours ({', '.join(KNOWN_FINGERPRINTS)}): a seed rerun here is a new draw"))
    return digest


def bench_sudoku(args, device):
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak(device)
    print(f"fp32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    q, a = load_boards("builtin", "train")
    batches = dict(kv.split(":") for kv in args.batch.split(","))
    for size in args.sizes.split(","):
        r, _ = bench_train(size, int(batches.get(size, 64)), args.K, args.steps, device, q, a)
        print(f"train {size:5s} {r['params_M']:.2f}M params, batch {r['batch']}, relay K={r['K']}: "
              f"{1000 * r['step_s']:.0f} ms/step | {r['boards_per_s']:.0f} boards/s | "
              f"{r['flops'] / 1e9:.1f} GFLOP/s | MFU {100 * r['flops'] / peak:.0f}%")
    import sample
    try:
        model, _ = sample.load_checkpoint_model(args.ckpt or sample.find_latest_checkpoint(),
                                                device)
        what = "trained checkpoint"
    except Exception:
        model, what = build_model(dict(SIZES["cpu"], tied=True, relay=True)).to(device), "random model"
    tq, _ = load_boards("builtin", "test", limit=args.sample_n)
    s = bench_sampler(model, tq, 0.15, device)
    print(f"sampler ({what}, {s['n']} puzzles, tau {s['tau']}): mean NFE {s['mean_nfe']:.2f}, "
          f"{s['passes']} batched passes in {s['wall_s']:.3f} s; one full-batch forward "
          f"{1000 * s['forward_s']:.1f} ms -> overhead {s['overhead']:.2f}")


def bench_llm(args, device):
    from llm import FIXTURE, THRESHOLD
    from sample_llm import load_for_decoding
    mem = llm_peak_memory(args.llm_model, args.llm_data or FIXTURE, args.llm_seq_len,
                          args.llm_batch_size, args.K, THRESHOLD, args.llm_grad_ckpt, str(device),
                          methods=("sft", "relay_sg", "relay"))
    what = "CUDA peak allocation" if device.type == "cuda" else "CPU peak RSS (VmHWM)"
    print(f"LLM one micro-step ({args.llm_batch_size} x {args.llm_seq_len} tokens, {what} above "
          f"the loaded model and data): " + " | ".join(f"{m} {v:.3f} GiB" for m, v in mem.items())
          + f" | relay/sft {mem['relay'] / max(mem['sft'], 1e-12):.3f}")
    lm, tok = load_for_decoding(args.llm_model, str(device))
    per_pass = {}
    for use_relay in (True, False):
        r = llm_decode_speed(lm, tok, args.decode_prompt_tokens, args.decode_new_tokens, use_relay)
        per_pass[use_relay] = r["cached_s"] / max(r["nfe"], 1)   # 0 passes: stopped at once
        print(f"LLM decoding ({'relay' if use_relay else 'no relay'}), prompt {r['prompt_tokens']} "
              f"tokens, {r['new_tokens']} new: cached {r['cached_s']:.2f} s "
              f"({r['new_tokens'] / r['cached_s']:.0f} tokens/s), uncached {r['uncached_s']:.2f} s "
              f"({r['new_tokens'] / r['uncached_s']:.0f} tokens/s) -> {r['speedup']:.1f}x, identical tokens: "
              f"{r['identical_tokens']} | sub-block cache {r['sub_block_s']:.2f} s "
              f"({r['cached_s'] / r['sub_block_s']:.2f}x the cached decoder), NFE "
              f"{r['sub_block_nfe']} vs {r['nfe']}, same tokens: {r['sub_block_same_tokens']}")
    print(f"LLM relay overhead per cached pass: {1000 * per_pass[True]:.1f} ms vs "
          f"{1000 * per_pass[False]:.1f} ms without ({100 * (per_pass[True] / per_pass[False] - 1):+.1f}%)")
    nfe, n = llm_decoding_nfe(lm, tok, args.decode_new_tokens)
    print(f"LLM decoding NFE ({n} fixture prompts, {args.decode_new_tokens} new tokens at most): "
          + " | ".join(f"{k} {a:.1f} (official count {b:.1f})" for k, (a, b) in nfe.items()))
    return mem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_argument_group("Sudoku")
    g.add_argument("--skip-sudoku", action="store_true", help="only the LLM figures")
    g.add_argument("--sizes", default="cpu,paper", help="model sizes to time, comma-separated")
    g.add_argument("--batch", default="cpu:64,paper:64", help="boards per step for each size")
    g.add_argument("--K", type=int, default=2, help="rollout steps per update")
    g.add_argument("--steps", type=int, default=5, help="timed training steps per size")
    g.add_argument("--ckpt", default=None, help="sampler benchmark on this checkpoint "
                   "(default: newest out/*/ckpt.pt, else a random cpu-size model)")
    g.add_argument("--sample-n", type=int, default=256, help="puzzles for the sampler benchmark")
    g = p.add_argument_group("LLM (with --llm-model)")
    g.add_argument("--llm-model", default=None, help="checkpoint directory for the LLM figures")
    g.add_argument("--llm-data", default=None, help="jsonl rows (default: the repo's fixture)")
    g.add_argument("--llm-seq-len", type=int, default=256, help="tokens per training row")
    g.add_argument("--llm-batch-size", type=int, default=2, help="rows per micro-step")
    g.add_argument("--llm-grad-ckpt", type=int, default=0, help="gradient checkpointing 1/0")
    g.add_argument("--decode-prompt-tokens", type=int, default=1024, help="prompt length")
    g.add_argument("--decode-new-tokens", type=int, default=64, help="tokens to decode")
    p.add_argument("--training-memory", action="store_true",
                   help="only print the computed per-GPU training state of the real LLM shapes\n"
                        "under DDP and FSDP2 (train_llm.py --parallel)")
    p.add_argument("--code-eval", default=None, metavar="DIR",
                   help="only time code_eval.py on every canonical solution of HumanEval+ and\n"
                        "MBPP in DIR (cold and warm reference cache)")
    p.add_argument("--code-eval-hostile", action="store_true",
                   help="only score samples built against the evaluator (floods, 1 MiB answer\n"
                        "lines, colliding sets, deep nesting, a huge message): time and memory")
    p.add_argument("--fingerprint", action="store_true",
                   help="only print this machine's kernel fingerprint (20 one-thread Relay steps,\n"
                        "about 40 s): does a seed rerun here repeat ours bit for bit?")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    if args.fingerprint:
        return fingerprint()
    if args.code_eval:
        return code_eval_speed(args.code_eval)
    if args.code_eval_hostile:
        return code_eval_hostile()
    if args.training_memory:
        rows = training_memory()
        ranks = list(rows[0]["fsdp"])
        print("computed, not measured: GB per GPU of fp32 weights + gradients + AdamW moments "
              "(+ FSDP2's bf16 gathered root and two layers), activations excluded")
        print("| model | parameters | DDP | " + " | ".join(f"FSDP2, {n} GPUs" for n in ranks) + " |")
        print("|---|---|---|" + "---|" * len(ranks))
        for r in rows:
            print(f"| {r['model']} | {r['params'] / 1e9:.2f}B | {r['ddp']:.1f} | "
                  + " | ".join(f"{r['fsdp'][n]:.1f}" for n in ranks) + " |")
        return rows
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(0)
    if not args.skip_sudoku:
        bench_sudoku(args, device)
    if args.llm_model:
        return bench_llm(args, device)
    return None


if __name__ == "__main__":
    run_main(main)
