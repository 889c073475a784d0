"""
Train a Sudoku masked diffusion model with Relay: the paper's Algorithm 1 (arXiv 2605.22967),
written out line by line, and the three baselines of its Table 1.

    python train_sudoku.py --K 2 --tied                 # relay, CPU defaults on a CPU (~15 min)
    python train_sudoku.py --method mlm --max-iters 20  # any of mlm, rollout, relay_sg, relay
    torchrun --nproc_per_node 8 train_sudoku.py --preset paper   # the paper's run, on GPUs

Methods (SPEC 3): mlm = uniform-rate masking, one pass; rollout = K teacher-forced unmasking
steps, no relay; relay_sg = rollout carrying R(h.detach()); relay = rollout with full BPTT
through h inside the K-step window.
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from model import MASK_ID, SIZES, build_model, encode
from relay import unmask_budget
from sample import evaluate
from data.sudoku import DataError, augment, load_boards

# -----------------------------------------------------------------------------
# settings. A preset fills every flag left unset; 'auto' picks 'cpu' on a CPU and 'paper' on a GPU.
PRESETS = {
    # SPEC 3, the authors' settings: xtiny model, Sudoku-Extreme, batch 512, 300k steps
    "paper": dict(size="paper", data="extreme", batch_size=512, lr=5e-4, warmup=2000,
                  max_iters=300_000, max_minutes=0, eval_interval=5000, eval_n=2000,
                  ckpt_interval=5000, log_interval=100),
    # a 2-core CPU in about 15 minutes, generated puzzles (Departures in the README)
    "cpu": dict(size="cpu", data="builtin", batch_size=64, lr=1e-3, warmup=100,
                max_iters=1200, max_minutes=13.0, eval_interval=250, eval_n=256,
                ckpt_interval=250, log_interval=50),
}

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--method", default="relay", choices=["mlm", "rollout", "relay_sg", "relay"])
p.add_argument("--K", type=int, default=2, help="rollout steps per update (truncated BPTT window)")
tie = p.add_mutually_exclusive_group()
tie.add_argument("--tied", dest="tied", action="store_true", default=True,
                 help="UnEmb shares the embedding matrix (default)")
tie.add_argument("--untied", dest="tied", action="store_false", help="separate output layer")
p.add_argument("--preset", default="auto", choices=["auto", "cpu", "paper"])
p.add_argument("--size", default=None, choices=list(SIZES), help="model size (preset)")
p.add_argument("--pos", default=None, choices=["rope", "rcb"],
               help="positions: rope (paper) or rcb = row+col+box embeddings (size's default)")
p.add_argument("--dropout", type=float, default=None, help="(size's default)")
p.add_argument("--relay-gain", type=float, default=None,
               help="initial gain of R's LayerNorm (size's default; 1 = the authors')")
p.add_argument("--data", default=None,
               help="'builtin' (generated), 'extreme' (Sudoku-Extreme from the hub), or a CSV path")
p.add_argument("--val-data", default=None, help="CSV for validation when --data is a path")
p.add_argument("--clues", default="30-40", help="builtin: clue count or range, e.g. 34 or 30-40")
p.add_argument("--n-train", type=int, default=6000, help="builtin: base training puzzles")
p.add_argument("--n-val", type=int, default=500, help="builtin: validation puzzles")
p.add_argument("--n-test", type=int, default=1000, help="builtin: test puzzles (sample.py)")
p.add_argument("--data-seed", type=int, default=0, help="builtin: generator seed")
p.add_argument("--no-augment", dest="augment", action="store_false",
               help="turn off the symmetry augmentation (SPEC 6)")
p.add_argument("--batch-size", type=int, default=None, help="boards in the pool, per rank")
p.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate")
p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps, then constant")
p.add_argument("--weight-decay", type=float, default=0.01, help="not on norms and biases")
p.add_argument("--grad-clip", type=float, default=0.5)
p.add_argument("--ema-decay", type=float, default=0.9999)
p.add_argument("--tau-train", type=float, default=0.15, help="training tau mean (SPEC 3)")
p.add_argument("--tau-jitter", type=float, default=0.1, help="training tau std, redrawn per step")
p.add_argument("--eval-tau", type=float, default=0.15)
p.add_argument("--max-iters", type=int, default=None, help="optimizer steps")
p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget, 0 = none")
p.add_argument("--eval-interval", type=int, default=None)
p.add_argument("--eval-n", type=int, default=None, help="validation puzzles per evaluation")
p.add_argument("--ckpt-interval", type=int, default=None)
p.add_argument("--log-interval", type=int, default=None)
p.add_argument("--out-dir", default=None, help="default: out/sudoku_<method>_<tied|untied>")
p.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.pt")
p.add_argument("--seed", type=int, default=1)
p.add_argument("--device", default="auto", help="auto | cpu | cuda")
p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")


def resolve_args(argv=None):
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset == "auto":
        args.preset = "paper" if args.device.startswith("cuda") else "cpu"
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    size = SIZES[args.size]
    args.pos = args.pos or size["pos"]
    args.dropout = size["dropout"] if args.dropout is None else args.dropout
    args.relay_gain = size["relay_gain"] if args.relay_gain is None else args.relay_gain
    if args.out_dir is None:
        args.out_dir = f"out/sudoku_{args.method}_{'tied' if args.tied else 'untied'}"
    if args.K < 1:
        raise DataError(f"--K {args.K}: need at least one rollout step")
    return args


# -----------------------------------------------------------------------------
# data: an endless stream of (augmented) training puzzles

class PuzzleStream:
    """Draws training puzzles uniformly with replacement and applies a fresh random symmetry to
    each (SPEC 6). Its numpy Generator is saved in checkpoints, so a resumed run draws the same."""

    def __init__(self, puzzles, solutions, use_augment, rng):
        self.q, self.a, self.use_augment, self.rng = puzzles, solutions, use_augment, rng

    def next(self, n):
        idx = self.rng.integers(0, len(self.q), size=n)
        q, a = self.q[idx], self.a[idx]
        return augment(q, a, self.rng) if self.use_augment else (q, a)


class Pool:
    """The streaming buffer of Algorithm 1: B boards, each with its ground truth x0, its current
    partial board z and its relay state h. Saved whole in checkpoints."""

    def __init__(self, B, C, device):
        self.x0 = torch.zeros(B, 81, dtype=torch.long, device=device)    # (B, 81) solution ids
        self.z = torch.zeros(B, 81, dtype=torch.long, device=device)     # no [MASK]: all refilled
        self.h = torch.zeros(B, 81, C, device=device)                     # (B, 81, C)

    def refill(self, stream):
        """Alg. 1 lines 2-3: boards with no masked cell get a fresh x0, z = clues + [MASK], h = 0."""
        done = ~(self.z == MASK_ID).any(1)
        n = int(done.sum())
        if n:
            q, a = stream.next(n)
            self.x0[done] = encode(a).to(self.x0.device)
            self.z[done] = encode(q).to(self.z.device)
            self.h[done] = 0.0
        return n

    def state_dict(self):
        return dict(x0=self.x0.cpu(), z=self.z.cpu(), h=self.h.cpu())

    def load_state_dict(self, s):
        for k in ("x0", "z", "h"):
            getattr(self, k).copy_(s[k])


def masked_ce(logits, x0, masked):
    """Mean cross-entropy over the cells still masked in the whole pool (SPEC 3); clue and
    revealed cells carry no loss."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # (B, 81)
    return (ce * masked).sum() / masked.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# one optimizer step's loss for each method

def rollout_loss(model, pool, K, tau_draw, use_relay, stop_grad, autocast):
    """Algorithm 1 lines 4-9 on the whole pool. Returns L and the pool's state after K steps."""
    z, h, x0 = pool.z, pool.h, pool.x0
    L = 0.0                                                   # line 4:  L <- 0
    for k in range(K):                                        # line 5:  for k in 0..K-1
        with autocast:                                        # line 6:  h <- f(Emb(z) + R(h))
            logits, h_new = model(z, h if use_relay else None, stop_grad=stop_grad)
        masked = z == MASK_ID
        L = L + masked_ce(logits, x0, masked)                 # line 7:  L <- L + CE(logits, x0)
        reveal = unmask_budget(logits, masked, tau_draw())    # line 8:  U ~ u(. | logits, z)
        z = torch.where(reveal, x0, z)                        # line 9:  z^i <- x0^i, i in U
        h = h_new                                             # relay_sg detaches at the next R
    return L, z, h


def mlm_loss(model, stream, B, rng, device, autocast):
    """The MLM baseline: each blank masked with probability t, t ~ U(0,1) per board."""
    q, a = stream.next(B)
    x0 = encode(a).to(device)
    blank = torch.from_numpy(q == 0).to(device)
    t = torch.from_numpy(rng.random((B, 1))).to(device)
    masked = blank & (torch.from_numpy(rng.random((B, 81))).to(device) < t)
    z = torch.where(masked, MASK_ID, x0)
    with autocast:
        logits, _ = model(z)
    return masked_ce(logits, x0, masked)


# -----------------------------------------------------------------------------

def save_checkpoint(path, obj):
    """Write to a temporary file, then rename: an interrupted save never clobbers the last one."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv=None):
    args = resolve_args(argv)
    # distributed: rank and world size from torchrun's environment; plain python = one rank
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
    else:
        rank, world = 0, 1
    master = rank == 0
    device = torch.device(args.device)
    torch.manual_seed(args.seed + rank)
    rng = np.random.default_rng(args.seed + rank)     # puzzles, symmetries, training tau, MLM t
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    builtin = dict(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, clues=args.clues,
                   seed=args.data_seed, verbose=master)
    if ddp and args.data == "builtin":   # rank 0 generates and caches, the others read the cache
        if master:
            load_boards("builtin", "train", **builtin)
        dist.barrier()
    train_q, train_a = load_boards(args.data, "train", **builtin)
    val_src = args.val_data or args.data
    val_q, val_a = load_boards(val_src, "val", limit=args.eval_n, **builtin)
    stream = PuzzleStream(train_q, train_a, args.augment, rng)

    cfg = dict(SIZES[args.size], tied=args.tied, relay=args.method.startswith("relay"),
               pos=args.pos, dropout=args.dropout, relay_gain=args.relay_gain)
    model = build_model(cfg).to(device)
    ema = copy.deepcopy(model).eval()                 # evaluated and sampled (SPEC 3)
    for q_ in ema.parameters():
        q_.requires_grad_(False)
    decay, no_decay = [], []
    for n_, q_ in model.named_parameters():
        (decay if q_.dim() >= 2 else no_decay).append(q_)   # no decay on norms and biases
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr, betas=(0.9, 0.999))
    pool = Pool(args.batch_size, model.cfg.n_embd, device)
    step, history, elapsed_before = 0, [], 0.0

    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if args.resume:
        if not os.path.exists(ckpt_path):
            raise DataError(f"{ckpt_path}: --resume given but there is no checkpoint")
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["model_config"] != model.cfg.to_dict():
            raise DataError(f"{ckpt_path}: its model config {ck['model_config']} differs from this "
                            f"run's {model.cfg.to_dict()}")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step, history, elapsed_before = ck["step"], ck["history"], ck["elapsed_s"]
        r = ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0]
        rng.bit_generator.state = r["numpy"]
        torch.set_rng_state(r["torch"])
        if device.type == "cuda" and r.get("cuda") is not None:
            torch.cuda.set_rng_state(r["cuda"])
        pool.load_state_dict(ck["pools"][rank])
        if master:
            print(f"resumed {ckpt_path} at step {step}")
    raw_model = model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if master:
        print(f"{args.method} K={args.K} {'tied' if args.tied else 'untied'} | preset {args.preset} | "
              f"{raw_model.num_params() / 1e6:.2f}M params | {len(train_q):,} train puzzles "
              f"({args.data}) | batch {args.batch_size} x {world} rank(s) | device {device}")
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

    def tau_draw():   # training tau: max(0, 0.15 + 0.1 N(0,1)), one value for the pool (SPEC 3)
        return max(0.0, args.tau_train + args.tau_jitter * float(rng.standard_normal()))

    def run_eval():   # EMA weights on held-out puzzles and on base training puzzles; all ranks share
        row = dict(step=step)
        for name, (q, a) in (("val", (val_q, val_a)), ("train", (train_q[:len(val_q)], train_a[:len(val_q)]))):
            shard = slice(rank, None, world)
            m = evaluate(ema, q[shard], a[shard], args.eval_tau, autocast=autocast)
            tot = torch.tensor([m["acc"] * m["n"], m["nfe"] * m["n"], m["legal"] * m["n"], m["n"]],
                               dtype=torch.float64)
            if ddp:
                dist.all_reduce(tot)
            row.update({f"{name}_acc": tot[0].item() / tot[3].item(),
                        f"{name}_nfe": tot[1].item() / tot[3].item(),
                        f"{name}_legal": tot[2].item() / tot[3].item()})
        return row

    def checkpoint():
        rng_state = dict(numpy=rng.bit_generator.state, torch=torch.get_rng_state(),
                         cuda=torch.cuda.get_rng_state() if device.type == "cuda" else None)
        states = [None] * world
        if ddp:
            dist.all_gather_object(states, (pool.state_dict(), rng_state))
        else:
            states = [(pool.state_dict(), rng_state)]
        if master:
            save_checkpoint(ckpt_path, dict(
                model=raw_model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                model_config=raw_model.cfg.to_dict(), args=vars(args), step=step,
                history=history, elapsed_s=elapsed_before + time.time() - t_start,
                pools=[s[0] for s in states], rng=[s[1] for s in states]))

    use_relay = args.method in ("relay", "relay_sg")
    stop_grad = args.method == "relay_sg"
    t_start = time.time()
    deadline = t_start + 60 * args.max_minutes if args.max_minutes else float("inf")
    bar = tqdm(total=args.max_iters, initial=step, disable=not (master and args.progress),
               desc=args.method, dynamic_ncols=True)
    t_log, loss_acc, n_acc = time.time(), 0.0, 0
    losses = []   # this invocation's per-step losses (returned, for tests and scripts)
    while True:
        out_of_time = time.time() > deadline
        if ddp:   # every rank stops at the same step
            flag = torch.tensor([float(out_of_time)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last_step = step >= args.max_iters or out_of_time
        # periodic evaluation and checkpoint, also at the last step
        if step > 0 and (step % args.eval_interval == 0 or last_step):
            if not history or history[-1]["step"] != step:
                row = run_eval()
                history.append(row)
                if master:
                    tqdm.write(f"eval step {step}: val acc {100 * row['val_acc']:.1f}% NFE "
                               f"{row['val_nfe']:.2f} legal {100 * row['val_legal']:.1f}% | train "
                               f"acc {100 * row['train_acc']:.1f}% NFE {row['train_nfe']:.2f}")
                    with open(os.path.join(args.out_dir, "eval.jsonl"), "a") as f:
                        f.write(json.dumps(row) + "\n")
        if step > 0 and (step % args.ckpt_interval == 0 or last_step):
            checkpoint()
        if last_step:
            break

        # learning rate: linear warm-up, then constant (SPEC 3)
        lr = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        if args.method == "mlm":
            loss = mlm_loss(model, stream, args.batch_size, rng, device, autocast)
        else:
            pool.refill(stream)                                              # Alg. 1 lines 2-3
            loss, z, h = rollout_loss(model, pool, args.K, tau_draw, use_relay, stop_grad, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                      # BPTT over K steps
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()                                                           # line 10
        if args.method != "mlm":   # the window is truncated at K: the trajectory goes on next step
            pool.z, pool.h = z, h.detach().float()
        step += 1
        with torch.no_grad():      # EMA with warm-up: decay min(d, (1+n)/(10+n))
            d = min(args.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), raw_model.parameters()):
                pe.lerp_(pm, 1.0 - d)
        losses.append(loss.item())
        loss_acc, n_acc = loss_acc + losses[-1], n_acc + 1
        bar.update(1)
        if master and step % args.log_interval == 0:
            dt = (time.time() - t_log) / n_acc
            left = min(args.max_iters - step, (deadline - time.time()) / dt)
            tqdm.write(f"step {step}/{args.max_iters} | loss {loss_acc / n_acc:.4f} | lr {lr:.2e} "
                       f"| dt {1000 * dt:.0f}ms | {args.batch_size * world / dt:.0f} boards/s "
                       f"| eta {int(left * dt) // 60}m{int(left * dt) % 60:02d}s")
            t_log, loss_acc, n_acc = time.time(), 0.0, 0
    bar.close()
    if master:
        r = history[-1] if history else {}
        print(f"done: {step} steps in {(elapsed_before + time.time() - t_start) / 60:.1f} min | "
              f"val acc {100 * r.get('val_acc', 0):.1f}% NFE {r.get('val_nfe', 0):.2f} "
              f"legal {100 * r.get('val_legal', 0):.1f}% | {ckpt_path}")
    if ddp:
        dist.destroy_process_group()
    return dict(history=history, losses=losses, step=step)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
