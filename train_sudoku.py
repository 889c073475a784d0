"""
Train a Sudoku masked diffusion model with Relay: the paper's Algorithm 1 (arXiv 2605.22967),
written out line by line, and the three baselines of its Table 1.

    python train_sudoku.py --K 2 --tied                 # relay, CPU defaults on a CPU (~15 min)
    python train_sudoku.py --method mlm --max-iters 20  # any of mlm, rollout, relay_sg, relay
    torchrun --nproc_per_node 8 train_sudoku.py --preset paper   # the paper's run, on GPUs

Methods (METHOD.md section 3): mlm = uniform-rate masking, one pass; rollout = K teacher-forced
unmasking steps, no relay; relay_sg = rollout carrying R(h.detach()); relay = rollout with full
BPTT through h inside the K-step window; loopholing = MLM masks with self-conditioning on the
model's own detached state (Jo et al., arXiv 2510.19304), decoded like relay.

    python train_sudoku.py --method relay --init-from out/sudoku_mlm_tied/ckpt.pt   # fine-tune
"""
import argparse
import copy
import json
import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (TrainClock, UsageError, add_run_flags, atomic_torch_save, autocast_for,
                    check_replicas, close_distributed, gather_objects, init_distributed,
                    resolve_preset, load_checkpoint, restore_rng, rng_state, run_main, seeded_rng,
                    set_lr, wrap_ddp)
from model import MASK_ID, N_CELLS, SIZES, build_model, encode
from relay import unmask_budget
from sample import evaluate
from data.sudoku import BUILTIN, DataError, augment, load_boards

# -----------------------------------------------------------------------------
# settings. A preset fills every flag left unset; 'auto' picks 'cpu' on a CPU and 'paper' on a GPU.
PRESETS = {
    # METHOD.md section 3, the authors' settings: xtiny model, Sudoku-Extreme, batch 512, 300k steps
    "paper": dict(size="paper", data="extreme", batch_size=512, lr=5e-4, warmup=2000,
                  weight_decay=0.01, grad_clip=0.5, max_iters=300_000, max_minutes=0,
                  eval_interval=5000, eval_n=2000, ckpt_interval=5000, log_interval=100,
                  augment=False),
    # a 2-core CPU in about 15 minutes, generated puzzles (METHOD.md 9, Departures)
    "cpu": dict(size="cpu", data="builtin", batch_size=64, lr=1e-3, warmup=100,
                weight_decay=0.01, grad_clip=0.5, max_iters=1200, max_minutes=13.0,
                eval_interval=250, eval_n=256, ckpt_interval=250, log_interval=50,
                augment=True),
}
METHODS = ("mlm", "rollout", "relay_sg", "relay", "loopholing")
ROLLOUT_METHODS = ("rollout", "relay_sg", "relay")    # Algorithm 1 over the streaming buffer
RELAY_METHODS = ("relay_sg", "relay", "loopholing")   # the model has R and decodes carrying h

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
g = p.add_argument_group("method")
g.add_argument("--method", default="relay", choices=METHODS, help="Table 1 row (default relay)")
g.add_argument("--K", type=int, default=2, help="rollout steps per update (truncated BPTT window)")
g.add_argument("--tau-train", type=float, default=0.15, help="training tau mean (METHOD.md 3)")
g.add_argument("--tau-jitter", type=float, default=0.1, help="training tau std, redrawn per step")
g.add_argument("--self-cond", type=float, default=0.5,
               help="loopholing: probability that a board's graded pass reads the state of a first,\n"
                    "gradient-free pass (Jo et al. use 0.5-0.9)")
g.add_argument("--init-from", default=None, metavar="CKPT",
               help="start from this checkpoint's EMA weights, optimizer fresh (a model without R\n"
                    "gets R with weight and bias zero: it starts equal to the source)")
g = p.add_argument_group("model")
tie = g.add_mutually_exclusive_group()
tie.add_argument("--tied", dest="tied", action="store_true", default=True,
                 help="UnEmb shares the embedding matrix (default)")
tie.add_argument("--untied", dest="tied", action="store_false", help="separate output layer")
g.add_argument("--preset", default="auto", choices=["auto", "cpu", "paper"],
               help="fills every setting left unset (auto: cpu on a CPU, paper on a GPU)")
g.add_argument("--size", default=None, choices=list(SIZES), help="model size (preset)")
g.add_argument("--pos", default=None, choices=["rope", "rcb"],
               help="positions: rope (paper) or rcb = row+col+box embeddings (size's default)")
g.add_argument("--dropout", type=float, default=None, help="dropout rate (size's default)")
g.add_argument("--relay-gain", type=float, default=None,
               help="initial gain of R's LayerNorm (size's default; 1 = the authors')")
g = p.add_argument_group("data")
g.add_argument("--data", default=None,
               help="'builtin' (generated), 'extreme' (Sudoku-Extreme from the hub), or a CSV path")
g.add_argument("--val-data", default=None, help="CSV for validation when --data is a path")
g.add_argument("--clues", default=BUILTIN["clues"],
               help="builtin: clue count or range, e.g. 34 or 30-40")
g.add_argument("--n-train", type=int, default=BUILTIN["n_train"], help="builtin: training puzzles")
g.add_argument("--n-val", type=int, default=BUILTIN["n_val"], help="builtin: validation puzzles")
g.add_argument("--n-test", type=int, default=BUILTIN["n_test"],
               help="builtin: test puzzles (sample.py)")
g.add_argument("--data-seed", type=int, default=BUILTIN["seed"], help="builtin: generator seed")
aug = g.add_mutually_exclusive_group()
aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                 help="random symmetry per training puzzle (METHOD.md 6; cpu preset: on)")
aug.add_argument("--no-augment", dest="augment", action="store_false",
                 help="no augmentation (paper preset: off, as the authors trained)")
g = p.add_argument_group("optimisation")
g.add_argument("--batch-size", type=int, default=None, help="boards in the buffer, per rank")
g.add_argument("--warmup", type=int, default=None, help="linear warm-up steps, then constant")
g.add_argument("--ema-decay", type=float, default=0.9999, help="EMA of the weights (evaluated)")
g = p.add_argument_group("periodic evaluation")
g.add_argument("--eval-tau", type=float, default=0.15, help="tau of the periodic evaluation")
g.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations")
g.add_argument("--eval-n", type=int, default=None, help="validation puzzles per evaluation")
add_run_flags(p, "default: out/sudoku_<method>_<tied|untied>; holds ckpt.pt, eval.jsonl")


def resolve_args(argv=None):
    args = resolve_preset(p.parse_args(argv), PRESETS)
    size = SIZES[args.size]
    args.pos = args.pos or size["pos"]
    args.dropout = size["dropout"] if args.dropout is None else args.dropout
    args.relay_gain = size["relay_gain"] if args.relay_gain is None else args.relay_gain
    if args.out_dir is None:
        args.out_dir = f"out/sudoku_{args.method}_{'tied' if args.tied else 'untied'}"
    if args.K < 1:
        raise UsageError(f"--K {args.K}: need at least one rollout step")
    if not 0.0 <= args.self_cond <= 1.0:
        raise UsageError(f"--self-cond {args.self_cond}: a probability, in [0, 1]")
    return args


# -----------------------------------------------------------------------------
# data: an endless stream of (augmented) training puzzles

class PuzzleStream:
    """Draws training puzzles uniformly with replacement and applies a fresh random symmetry to
    each (METHOD.md 6). Its numpy Generator is saved in checkpoints, so a resumed run draws the
    same."""

    def __init__(self, puzzles, solutions, use_augment, rng):
        self.q, self.a, self.use_augment, self.rng = puzzles, solutions, use_augment, rng

    def next(self, n):
        idx = self.rng.integers(0, len(self.q), size=n)
        q, a = self.q[idx], self.a[idx]
        return augment(q, a, self.rng) if self.use_augment else (q, a)


class StreamingBuffer:
    """Algorithm 1's streaming buffer: B boards, each with its ground truth x0, its current
    partial board z and its relay state h. Saved whole in checkpoints."""

    def __init__(self, B, C, device):
        self.x0 = torch.zeros(B, N_CELLS, dtype=torch.long, device=device)  # (B, 81) solution ids
        self.z = torch.zeros(B, N_CELLS, dtype=torch.long, device=device)   # no [MASK]: all refilled
        self.h = torch.zeros(B, N_CELLS, C, device=device)                  # (B, 81, C)

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
    """Mean cross-entropy over the cells still masked in the whole buffer (METHOD.md 3); clue and
    revealed cells carry no loss."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # (B, 81)
    return (ce * masked).sum() / masked.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# one optimizer step's loss for each method

def rollout_loss(model, buffer, K, tau_draw, *, use_relay, stop_grad, autocast):
    """Algorithm 1 lines 4-9 on the whole buffer. Returns L and the buffer's state after K steps."""
    z, h, x0 = buffer.z, buffer.h, buffer.x0
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


def mlm_batch(stream, B, rng, device):
    """B fresh boards, each blank masked with probability t, t ~ U(0,1) per board.
    Returns x0 (B, 81) solution ids, masked (B, 81) bool, z (B, 81) the masked boards."""
    q, a = stream.next(B)
    x0 = encode(a).to(device)
    blank = torch.from_numpy(q == 0).to(device)
    t = torch.from_numpy(rng.random((B, 1))).to(device)
    masked = blank & (torch.from_numpy(rng.random((B, N_CELLS))).to(device) < t)
    return x0, masked, torch.where(masked, MASK_ID, x0)


def mlm_loss(model, stream, B, rng, device, autocast):
    """The MLM baseline: one pass on mlm_batch's boards, no relay."""
    x0, masked, z = mlm_batch(stream, B, rng, device)
    with autocast:
        logits, _ = model(z)
    return masked_ce(logits, x0, masked)


def loopholing_loss(model, stream, B, rng, device, autocast, p_self_cond):
    """The Loopholing baseline (Jo et al., arXiv 2510.19304), in this model: MLM's masks, and
    self-conditioning instead of a rollout. Each board, with probability p_self_cond, first gets
    a gradient-free pass with h = 0 on the same z; its graded pass then reads that pass's state
    (detached). The other boards' graded pass reads h = 0, as a decode's first pass does. Unlike
    relay, no unmasking step separates the two passes and no gradient flows through h."""
    x0, masked, z = mlm_batch(stream, B, rng, device)
    self_cond = torch.from_numpy(rng.random(B) < p_self_cond).to(device)           # (B,)
    h = torch.zeros(B, N_CELLS, model_width(model), device=device)
    if self_cond.any():
        with torch.no_grad(), autocast:
            _, h_first = model(z[self_cond], h[self_cond])
        h[self_cond] = h_first.float()
    with autocast:
        logits, _ = model(z, h)
    return masked_ce(logits, x0, masked)


def model_width(model):
    return (model.module if hasattr(model, "module") else model).cfg.n_embd


def init_from_checkpoint(model, path, device):
    """Load `path`'s EMA weights into `model` (the fine-tune protocol). The architectures must
    agree except for R: a source without R leaves R with weight and bias zero, so R(h) = 0 and
    the model computes exactly what the source did; R of a source is dropped by a model without
    one. Returns the source's step."""
    ck = load_checkpoint(path, device)
    src = {k: v for k, v in ck["model_config"].items() if k != "relay"}
    own = {k: v for k, v in model.cfg.to_dict().items() if k != "relay"}
    if src != own:
        raise DataError(f"{path}: its model {src} differs from this run's {own} (other than R)")
    state = {k: v for k, v in ck["ema"].items() if not k.startswith("relay.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("relay.") for k in missing), (missing, unexpected)
    if model.relay is not None:
        if ck["model_config"]["relay"]:
            model.relay.load_state_dict({k[len("relay."):]: v for k, v in ck["ema"].items()
                                         if k.startswith("relay.")})
        else:
            model.relay.zero_()
    return ck["step"]


# -----------------------------------------------------------------------------

def periodic_eval(ema, step, val, train, args, ctx, autocast):
    """Sudoku only (the LLM is evaluated after training): the EMA weights decode the held-out
    puzzles and as many base training puzzles at args.eval_tau, each rank a shard, the sums
    all-reduced. The master prints the row and appends it to <out_dir>/eval.jsonl."""
    row = dict(step=step)
    n = len(val[0])
    for name, (q, a) in (("val", val), ("train", (train[0][:n], train[1][:n]))):
        shard = slice(ctx.rank, None, ctx.world)
        m = evaluate(ema, q[shard], a[shard], args.eval_tau, autocast=autocast)
        tot = torch.tensor([m["acc"] * m["n"], m["nfe"] * m["n"], m["legal"] * m["n"], m["n"]],
                           dtype=torch.float64, device=ctx.device)
        if ctx.ddp:
            torch.distributed.all_reduce(tot)
        row.update({f"{name}_acc": tot[0].item() / tot[3].item(),
                    f"{name}_nfe": tot[1].item() / tot[3].item(),
                    f"{name}_legal": tot[2].item() / tot[3].item()})
    if ctx.master:
        tqdm.write(f"eval step {step}: val acc {100 * row['val_acc']:.1f}% NFE "
                   f"{row['val_nfe']:.2f} legal {100 * row['val_legal']:.1f}% | train "
                   f"acc {100 * row['train_acc']:.1f}% NFE {row['train_nfe']:.2f}")
        with open(os.path.join(args.out_dir, "eval.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def main(argv=None):
    args = resolve_args(argv)
    ctx = init_distributed(args.device)                       # rank and world from torchrun
    device, master = ctx.device, ctx.master
    rng = seeded_rng(args.seed, ctx.rank)             # puzzles, symmetries, training tau, MLM t
    autocast = autocast_for(device)

    # data: training puzzles as a stream; validation puzzles for the periodic evaluation
    builtin = dict(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, clues=args.clues,
                   seed=args.data_seed, verbose=master)
    if ctx.ddp and args.data == "builtin":   # rank 0 generates and caches, the others read it
        if master:
            load_boards("builtin", "train", **builtin)
        torch.distributed.barrier()
    train_q, train_a = load_boards(args.data, "train", **builtin)
    val_src = args.val_data or args.data
    val_q, val_a = load_boards(val_src, "val", limit=args.eval_n, **builtin)
    stream = PuzzleStream(train_q, train_a, args.augment, rng)

    # model, its EMA (evaluated and sampled, METHOD.md 3), optimizer, buffer
    use_relay = args.method in ("relay", "relay_sg")     # the rollout carries h
    stop_grad = args.method == "relay_sg"     # the relay_sg ablation: h.detach() before R
    cfg = dict(SIZES[args.size], tied=args.tied, relay=args.method in RELAY_METHODS,
               pos=args.pos, dropout=args.dropout, relay_gain=args.relay_gain)
    model = build_model(cfg).to(device)
    if args.init_from and not args.resume:
        src_step = init_from_checkpoint(model, args.init_from, device)
        if master:
            print(f"initialised from {args.init_from} (EMA weights at step {src_step})")
    ema = copy.deepcopy(model).eval()
    for q_ in ema.parameters():
        q_.requires_grad_(False)
    decay, no_decay = [], []
    for n_, q_ in model.named_parameters():
        (decay if q_.dim() >= 2 else no_decay).append(q_)   # weight decay not on norms, biases
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr, betas=(0.9, 0.999))
    buffer = StreamingBuffer(args.batch_size, model.cfg.n_embd, device)
    step, history, elapsed_before = 0, [], 0.0

    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if args.resume:
        if not os.path.exists(ckpt_path):
            raise DataError(f"{ckpt_path}: --resume given but there is no checkpoint")
        ck = load_checkpoint(ckpt_path, device)
        if ck["model_config"] != model.cfg.to_dict():
            raise DataError(f"{ckpt_path}: its model config {ck['model_config']} differs from this "
                            f"run's {model.cfg.to_dict()}")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step, history, elapsed_before = ck["step"], ck["history"], ck["elapsed_s"]
        ranks = ck.get("ranks") or [dict(buffer=b, rng=r)       # checkpoints before the "ranks"
                                    for b, r in zip(ck["pools"], ck["rng"])]   # key (34ab736)
        own = ranks[ctx.rank if ctx.rank < len(ranks) else 0]
        restore_rng(own["rng"], rng, device)
        buffer.load_state_dict(own["buffer"])
        if master:
            print(f"resumed {ckpt_path} at step {step}")
    raw_model = model                                 # saved and averaged; the DDP wrapper trains
    model = wrap_ddp(model, ctx)
    if master:
        print(f"{args.method} K={args.K} {'tied' if args.tied else 'untied'} | preset {args.preset} | "
              f"{raw_model.num_params() / 1e6:.2f}M params | {len(train_q):,} train puzzles "
              f"({args.data}) | batch {args.batch_size} x {ctx.world} rank(s) | device {device}")
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

    def lr_at(it):    # linear warm-up, then constant (METHOD.md 3)
        return args.lr * min(1.0, (it + 1) / max(args.warmup, 1))

    def tau_draw():   # training tau: max(0, 0.15 + 0.1 N(0,1)), one value for the buffer
        return max(0.0, args.tau_train + args.tau_jitter * float(rng.standard_normal()))

    def checkpoint():
        ranks = gather_objects(dict(buffer=buffer.state_dict(), rng=rng_state(rng, device)), ctx)
        msg = check_replicas(raw_model, ctx)
        if master:
            if msg:
                tqdm.write(f"step {step}: {msg}")
            atomic_torch_save(dict(
                model=raw_model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                model_config=raw_model.cfg.to_dict(), args=vars(args), step=step,
                history=history, elapsed_s=elapsed_before + clock.elapsed(),
                ranks=ranks), ckpt_path)

    model.train()                       # and stays so: evaluation decodes with other weights
    clock = TrainClock(args, step, ctx)
    losses = []                       # this invocation's, one per step (for tests and scripts)
    while True:
        last_step = step >= args.max_iters or clock.out_of_time()
        # Sudoku only: periodic evaluation of the EMA weights, also at the last step
        if step > 0 and (step % args.eval_interval == 0 or last_step):
            if not history or history[-1]["step"] != step:
                history.append(periodic_eval(ema, step, (val_q, val_a), (train_q, train_a),
                                             args, ctx, autocast))
        if step > 0 and (step % args.ckpt_interval == 0 or last_step):
            checkpoint()
        if last_step:
            break

        lr = set_lr(opt, lr_at(step))
        if args.method == "mlm":
            loss = mlm_loss(model, stream, args.batch_size, rng, device, autocast)
        elif args.method == "loopholing":
            loss = loopholing_loss(model, stream, args.batch_size, rng, device, autocast,
                                   args.self_cond)
        else:
            buffer.refill(stream)                                            # Alg. 1 lines 2-3
            loss, z, h = rollout_loss(model, buffer, args.K, tau_draw, use_relay=use_relay,
                                      stop_grad=stop_grad, autocast=autocast)
        loss.backward()                                                      # BPTT over K steps
        if args.method in ROLLOUT_METHODS:   # the window is truncated at K: the trajectory
            buffer.z, buffer.h = z, h.detach().float()             # goes on at the next step
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()                                                           # line 10
        opt.zero_grad(set_to_none=True)
        step += 1
        with torch.no_grad():      # Sudoku only: EMA with warm-up, decay min(d, (1+n)/(10+n))
            d = min(args.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), raw_model.parameters()):
                pe.lerp_(pm, 1.0 - d)
        losses.append(loss.item())
        clock.step_done(step, losses, lr, args.batch_size * ctx.world, "boards")
    clock.close()
    if master:
        last = history[-1] if history else {}
        print(f"done: {step} steps in {(elapsed_before + clock.elapsed()) / 60:.1f} min | "
              f"val acc {100 * last.get('val_acc', 0):.1f}% NFE {last.get('val_nfe', 0):.2f} "
              f"legal {100 * last.get('val_legal', 0):.1f}% | {ckpt_path}")
    close_distributed(ctx)
    return dict(history=history, losses=losses, step=step)


if __name__ == "__main__":
    run_main(main)
