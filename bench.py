"""
Speed figures for the Sudoku scripts, measured in one run on this machine:
- the fp32 matmul peak (a large square matmul, the best of several timings),
- training throughput (boards/s), achieved FLOP/s and MFU = achieved / that peak, for the CPU
  default size and the paper size, running train_sudoku.py's own rollout/relay step,
- sampler overhead = sampling wall time / (batched passes x one full-batch forward).

    python bench.py                 # both sizes, relay K=2
    python bench.py --sizes cpu --steps 3
"""
import argparse
import contextlib
import time

import numpy as np
import torch

from model import SIZES, build_model
from sample import solve_boards
from data.sudoku import load_boards
import train_sudoku as T


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
    stream = T.PuzzleStream(puzzles, solutions, True, rng)
    pool = T.Pool(batch, model.cfg.n_embd, device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def step():
        pool.refill(stream)
        loss, z, h = T.rollout_loss(model, pool, K, lambda: 0.15, True, False, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        pool.z, pool.h = z, h.detach().float()

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
    from model import encode
    z = encode(puzzles).to(device)
    h = torch.zeros(len(z), 81, model.cfg.n_embd, device=device)
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="cpu,paper")
    p.add_argument("--batch", default="cpu:64,paper:64", help="boards per step for each size")
    p.add_argument("--K", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--ckpt", default=None, help="sampler benchmark on this checkpoint "
                   "(default: newest out/*/ckpt.pt, else a random cpu-size model)")
    p.add_argument("--sample-n", type=int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak(device)
    print(f"fp32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    q, a = load_boards("builtin", "train", n_train=6000, n_val=500, n_test=1000, clues="30-40",
                       seed=0)
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
    tq, _ = load_boards("builtin", "test", limit=args.sample_n, n_train=6000, n_val=500,
                        n_test=1000, clues="30-40", seed=0)
    s = bench_sampler(model, tq, 0.15, device)
    print(f"sampler ({what}, {s['n']} puzzles, tau {s['tau']}): mean NFE {s['mean_nfe']:.2f}, "
          f"{s['passes']} batched passes in {s['wall_s']:.3f} s; one full-batch forward "
          f"{1000 * s['forward_s']:.1f} ms -> overhead {s['overhead']:.2f}")


if __name__ == "__main__":
    main()
