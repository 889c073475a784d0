"""
Fine-tune Fast-dLLM v2 with the relay (SPEC 7): the Sudoku recipe of train_sudoku.py on a
pretrained block-diffusion LLM, with the same loop skeleton (diff the two files).

    python train_llm.py --init-tiny T                                  # a tiny random checkpoint
    python train_llm.py --model T --method relay --max-iters 5 --out-dir R
    torchrun --nproc_per_node 2 train_llm.py --preset paper --model Efficient-Large-Model/Fast_dLLM_v2_1.5B \
        --data data/llm_mix.jsonl --method relay --out-dir out/llm_relay

Methods: sft = vanilla Fast-dLLM v2 SFT (per-block mask rate, complementary copy);
rollout / relay_sg / relay = Algorithm 1 with K=2 forwards over a per-rank pool, ground truth
revealed at tokens with confidence > tau plus each block's most confident one; relay carries
R(h) at [MASK] positions (relay_sg with h.detach()).
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from llm import LLMError, STOP_TOKEN, init_tiny, load_relay_lm, save_relay_lm
from relay import unmask_threshold

PRESETS = {
    # SPEC 7: lr 5e-6 cosine, 3% warm-up, clip 1.0, bf16, 2 GPUs x batch 2 x accumulation 16
    # (64 sequences per step), length 2048, 200 steps reported
    "paper": dict(lr=5e-6, batch_size=2, grad_accum=16, seq_len=2048, max_iters=200,
                  grad_ckpt=True, ckpt_interval=50, log_interval=1),
    "cpu": dict(lr=1e-3, batch_size=2, grad_accum=2, seq_len=128, max_iters=20,
                grad_ckpt=False, ckpt_interval=10, log_interval=1),
}
MASK_EPS = 1e-3   # SFT mask rate p = (1 - eps) t + eps

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--init-tiny", default=None, metavar="DIR",
               help="write a tiny random Fast-dLLM v2-layout checkpoint to DIR and exit")
p.add_argument("--model", default="Efficient-Large-Model/Fast_dLLM_v2_1.5B",
               help="checkpoint directory or hub id")
p.add_argument("--method", default="relay", choices=["sft", "rollout", "relay_sg", "relay"])
p.add_argument("--K", type=int, default=2, help="forwards per update (rollout methods)")
p.add_argument("--tau", type=float, default=0.85, help="reveal threshold between forwards")
p.add_argument("--data", default=None, help="jsonl of {prompt, response} (data/prepare_llm.py);"
               " default: the repository's small fixture")
p.add_argument("--preset", default="auto", choices=["auto", "cpu", "paper"])
p.add_argument("--seq-len", type=int, default=None, help="tokens per row, a multiple of the block")
p.add_argument("--batch-size", type=int, default=None, help="rows per micro-step per rank")
p.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimizer step")
p.add_argument("--lr", type=float, default=None)
p.add_argument("--warmup-frac", type=float, default=0.03, help="warm-up, fraction of max-iters")
p.add_argument("--weight-decay", type=float, default=0.0)
p.add_argument("--grad-clip", type=float, default=1.0)
p.add_argument("--max-iters", type=int, default=None)
p.add_argument("--max-minutes", type=float, default=0, help="wall-clock budget, 0 = none")
p.add_argument("--grad-ckpt", type=int, default=None, help="gradient checkpointing 1/0 (preset)")
p.add_argument("--ckpt-interval", type=int, default=None)
p.add_argument("--log-interval", type=int, default=None)
p.add_argument("--out-dir", default=None, help="default: out/llm_<method>")
p.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt")
p.add_argument("--seed", type=int, default=1)
p.add_argument("--device", default="auto")
p.add_argument("--measure-memory", action="store_true",
               help="peak memory of one micro-step for sft and for relay, then exit")
p.add_argument("--no-progress", dest="progress", action="store_false")

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures",
                       "llm_mix.jsonl")


def resolve_args(argv=None):
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset == "auto":
        args.preset = "paper" if args.device.startswith("cuda") else "cpu"
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.data = args.data or FIXTURE
    args.out_dir = args.out_dir or f"out/llm_{args.method}"
    return args


# -----------------------------------------------------------------------------
# data: chat template, labels on the response only, one example per row (no packing)

def load_examples(path, tok, seq_len, block_size):
    """Token rows (N, seq_len) padded with the pad token and a response mask (N, seq_len).
    Rows longer than seq_len are dropped (counted). Errors name the file and line."""
    if seq_len % block_size:
        raise LLMError(f"--seq-len {seq_len} is not a multiple of the block size {block_size}")
    if not os.path.exists(path):
        raise LLMError(f"{path}: no such data file")
    ids, resp, dropped = [], [], 0
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise LLMError(f"{path}:{n}: not JSON ({e.msg})") from None
            for k in ("prompt", "response"):
                if not isinstance(r.get(k), str):
                    raise LLMError(f"{path}:{n}: missing field {k!r} (need prompt and response)")
            if not r["response"].strip():
                raise LLMError(f"{path}:{n}: empty response")
            prompt = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                             tokenize=False, add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            r_ids = tok(r["response"] + STOP_TOKEN, add_special_tokens=False).input_ids
            if len(p_ids) + len(r_ids) > seq_len:
                dropped += 1
                continue
            ids.append(p_ids + r_ids + [tok.pad_token_id] * (seq_len - len(p_ids) - len(r_ids)))
            resp.append([False] * len(p_ids) + [True] * len(r_ids) +
                        [False] * (seq_len - len(p_ids) - len(r_ids)))
    if not ids:
        raise LLMError(f"{path}: no example fits in --seq-len {seq_len} ({dropped} too long)")
    return torch.tensor(ids), torch.tensor(resp), dropped


class ExampleStream:
    """Draws examples with a numpy Generator (saved in checkpoints): a shuffled pass, then another."""

    def __init__(self, ids, resp, rng):
        self.ids, self.resp, self.rng, self.order, self.pos = ids, resp, rng, [], 0

    def next(self, n):
        out = []
        for _ in range(n):
            if self.pos >= len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.ids)).tolist(), 0
            out.append(self.order[self.pos])
            self.pos += 1
        return self.ids[out], self.resp[out]

    def state_dict(self):
        return dict(rng=self.rng.bit_generator.state, order=self.order, pos=self.pos)

    def load_state_dict(self, s):
        self.rng.bit_generator.state, self.order, self.pos = s["rng"], s["order"], s["pos"]


class Pool:
    """Algorithm 1's streaming buffer, per rank: each row's clean tokens x0, response mask, partial
    x_t, and detached shifted relay state h. has_h is False for a fresh row: its first forward
    adds no relay (decoding's first pass of a block adds none either; SPEC 7's mismatch fixed)."""

    def __init__(self, B, L, C, mask_id, device):
        self.mask_id = mask_id
        self.x0 = torch.zeros(B, L, dtype=torch.long, device=device)
        self.resp = torch.zeros(B, L, dtype=torch.bool, device=device)
        self.z = self.x0.clone()                         # no [MASK]: every row is refilled first
        self.h = torch.zeros(B, L, C, device=device)
        self.has_h = torch.zeros(B, dtype=torch.bool, device=device)

    def refill(self, stream):
        """Rows with no masked response token left get a fresh example, every response token
        masked (Alg. 1 line 3), h = 0 and has_h = False."""
        done = ~(self.z == self.mask_id).any(1)
        n = int(done.sum())
        if n:
            ids, resp = stream.next(n)
            ids, resp = ids.to(self.x0.device), resp.to(self.x0.device)
            self.x0[done], self.resp[done] = ids, resp
            self.z[done] = torch.where(resp, self.mask_id, ids)
            self.h[done] = 0.0
            self.has_h[done] = False
        return n

    def state_dict(self):
        return {k: getattr(self, k).cpu() for k in ("x0", "resp", "z", "h", "has_h")}

    def load_state_dict(self, s):
        for k, v in s.items():
            getattr(self, k).copy_(v)


# -----------------------------------------------------------------------------
# the objectives

def unwrap(model):
    """The RelayLM inside a DDP wrapper (forward goes through the wrapper, so DDP syncs grads)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def masked_ce(lm, hs, x0, masked):
    """Mean CE over masked response tokens; lm_head only at those positions."""
    logits = lm.logits(hs[masked])                        # (N, V): 152k wide, so only here
    return F.cross_entropy(logits.float(), x0[masked]), logits


def sft_masks(resp, block_size, rng):
    """(2B, L) masks: rows 0..B-1 mask each response token with its block's rate p, rows B..2B-1
    mask exactly the other response tokens (the complementary copy). Prompt and pad: never."""
    B, L = resp.shape
    t = torch.from_numpy(rng.random((B, L // block_size))).float().to(resp.device)
    p_tok = ((1 - MASK_EPS) * t + MASK_EPS).repeat_interleave(block_size, dim=1)   # (B, L)
    m = (torch.from_numpy(rng.random((B, L))).float().to(resp.device) < p_tok) & resp
    return torch.cat([m, resp & ~m])


def sft_loss(model, x0, resp, rng, autocast):
    """Vanilla Fast-dLLM v2 SFT: per 32-block t ~ U(0,1), p = (1 - eps) t + eps, each response
    token masked with probability p; the complementary copy masks the other response tokens."""
    lm = unwrap(model)
    masked = sft_masks(resp, lm.block_size, rng)                                    # (2B, L)
    x0_2 = torch.cat([x0, x0])
    x_t = torch.where(masked, lm.mask_id, x0_2)
    with autocast:
        hs = model(x_t, x0_2)
    loss, _ = masked_ce(lm, hs, x0_2, masked)
    return loss


def rollout_loss(model, pool, rows, K, tau, use_relay, stop_grad, autocast):
    """Algorithm 1 lines 4-9 on pool rows `rows`. Returns L = sum of K means and the new state."""
    lm = unwrap(model)
    z, h, has_h, x0 = pool.z[rows], pool.h[rows], pool.has_h[rows], pool.x0[rows]
    L = 0.0                                                        # line 4
    for k in range(K):                                             # line 5
        masked = z == lm.mask_id
        where = masked & has_h[:, None] if use_relay else None
        with autocast:                                             # line 6: f(Emb(z) + R(h))
            hs = model(z, x0, h if use_relay else None, where, stop_grad)
        loss, logits = masked_ce(lm, hs, x0, masked)               # line 7
        L = L + loss
        with torch.no_grad():                                      # line 8: confidence > tau
            conf = torch.zeros(masked.shape, device=z.device)      #   plus each block's best
            conf[masked] = logits.float().softmax(-1).amax(-1)
            reveal = unmask_threshold(conf, masked, tau, group=lm.block_size)
        z = torch.where(reveal, x0, z)                             # line 9: ground truth
        h, has_h = hs, torch.ones_like(has_h)
    return L, z, h, has_h


# -----------------------------------------------------------------------------

def save_checkpoint(out_dir, lm, tok, raw_cfg, state):
    """out_dir/ckpt holds the model in the layout sample_llm.py loads plus state.pt (optimizer,
    pool, RNG, step). Written to ckpt.tmp, then swapped in, so a crash keeps the last one whole."""
    final, tmp, old = (os.path.join(out_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    save_relay_lm(lm, tok, raw_cfg, tmp)
    torch.save(state, os.path.join(tmp, "state.pt"))
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def peak_memory_step(args):
    """One training micro-step for sft and for relay, each in a fresh process; peak memory of each
    (CUDA peak allocation on a GPU; on a CPU the peak resident set, VmHWM, reset before the step)."""
    import multiprocessing as mp
    out = {}
    for method in ("sft", "relay"):
        with mp.get_context("spawn").Pool(1) as workers:
            out[method] = workers.apply(_measure_one, (vars(args), method))
    ratio = out["relay"] / max(out["sft"], 1e-12)
    what = "CUDA peak allocation" if args.device.startswith("cuda") else "CPU peak RSS (VmHWM)"
    print(f"one micro-step ({args.batch_size} x {args.seq_len} tokens, {what} above the loaded "
          f"model and data): sft {out['sft']:.3f} GiB | relay K={args.K} {out['relay']:.3f} GiB | "
          f"relay/sft {ratio:.3f}")
    return out


def _measure_one(argd, method):
    args = argparse.Namespace(**argd)
    device = torch.device(args.device)
    lm, tok, raw = load_relay_lm(args.model, patch=method == "relay", device=device,
                                 dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.grad_ckpt:
        lm.qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()
    ids, resp, _ = load_examples(args.data, tok, args.seq_len, lm.block_size)
    rng = np.random.default_rng(0)
    stream = ExampleStream(ids, resp, rng)
    pool = Pool(args.batch_size, args.seq_len, lm.qwen.config.hidden_size, lm.mask_id, device)
    pool.refill(stream)
    x0, r = (t.to(device) for t in stream.next(args.batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_reset()
    if method == "sft":
        loss = sft_loss(lm, x0, r, rng, contextlib.nullcontext())
    else:
        loss = rollout_loss(lm, pool, slice(0, args.batch_size), args.K, args.tau, True, False,
                            contextlib.nullcontext())[0]
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    return (_rss_peak() - base) / 2 ** 30


def _rss_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                 # resets VmHWM to the current RSS (Linux >= 4.0)
    return _proc_status("VmRSS")


def _rss_peak():
    return _proc_status("VmHWM")


def _proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def main(argv=None):
    args = resolve_args(argv)
    if args.init_tiny:
        corpus = [json.loads(l)["prompt"] + " " + json.loads(l)["response"]
                  for l in open(FIXTURE) if l.strip()]
        init_tiny(args.init_tiny, corpus * 20, seed=args.seed)
        print(f"wrote a tiny random Fast-dLLM v2-layout checkpoint to {args.init_tiny}")
        return None
    if args.measure_memory:
        return peak_memory_step(args)
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
    rng = np.random.default_rng(args.seed + rank)     # examples, SFT masks
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    ckpt_dir = os.path.join(args.out_dir, "ckpt")
    src = ckpt_dir if args.resume else args.model
    if args.resume and not os.path.isdir(ckpt_dir):
        raise LLMError(f"{ckpt_dir}: --resume given but there is no checkpoint")
    use_relay = args.method in ("relay", "relay_sg")
    lm, tok, raw_cfg = load_relay_lm(src, patch=use_relay, device=device)
    if not use_relay:
        lm.relay = None
    if args.grad_ckpt:
        lm.qwen.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, resp, dropped = load_examples(args.data, tok, args.seq_len, lm.block_size)
    stream = ExampleStream(ids, resp, rng)
    opt = torch.optim.AdamW([q for q in lm.parameters() if q.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay, betas=(0.9, 0.95))
    rows = args.batch_size * args.grad_accum      # one pool slice per micro-step
    pool = Pool(rows, args.seq_len, lm.qwen.config.hidden_size, lm.mask_id, device)
    step, elapsed_before = 0, 0.0
    if args.resume:
        st = torch.load(os.path.join(ckpt_dir, "state.pt"), map_location=device, weights_only=False)
        if st["args"]["method"] != args.method:
            raise LLMError(f"{ckpt_dir}: trained with --method {st['args']['method']}, "
                           f"not {args.method}")
        opt.load_state_dict(st["optimizer"])
        step, elapsed_before = st["step"], st["elapsed_s"]
        r = st["ranks"][rank]
        stream.load_state_dict(r["stream"])
        torch.set_rng_state(r["torch"])
        pool.load_state_dict(r["pool"])
        if master:
            print(f"resumed {ckpt_dir} at step {step}")
    raw_lm = lm
    if ddp:
        lm = torch.nn.parallel.DistributedDataParallel(
            lm, device_ids=[device.index] if device.type == "cuda" else None)
    if master:
        n_params = sum(q.numel() for q in raw_lm.parameters())
        print(f"{args.method} | {n_params / 1e6:.2f}M params | {len(ids)} examples ({dropped} over "
              f"{args.seq_len} tokens dropped) | {args.batch_size} x {args.grad_accum} accum x "
              f"{world} rank(s) = {rows * world} sequences/step | device {device}")

    def lr_at(it):    # linear warm-up, then cosine to zero (SPEC 7)
        warm = max(1, int(args.warmup_frac * args.max_iters))
        if it < warm:
            return args.lr * (it + 1) / warm
        return args.lr * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, args.max_iters - warm)))

    def checkpoint():
        r = dict(stream=stream.state_dict(), torch=torch.get_rng_state(), pool=pool.state_dict())
        ranks = [None] * world
        if ddp:
            dist.all_gather_object(ranks, r)
        else:
            ranks = [r]
        if ddp:   # DDP keeps replicas identical; check it, since a silent drift wastes a run
            sums = [None] * world
            dist.all_gather_object(sums, sum(q.double().sum().item() for q in raw_lm.parameters()))
            if master:
                if len(set(sums)) != 1:
                    raise RuntimeError(f"parameters differ across ranks: {sums}")
                tqdm.write(f"step {step}: parameters identical on all {world} ranks")
        if master:
            save_checkpoint(args.out_dir, raw_lm, tok, raw_cfg, dict(
                optimizer=opt.state_dict(), step=step, args=vars(args), ranks=ranks,
                elapsed_s=elapsed_before + time.time() - t_start))

    stop_grad = args.method == "relay_sg"
    t_start = time.time()
    deadline = t_start + 60 * args.max_minutes if args.max_minutes else float("inf")
    bar = tqdm(total=args.max_iters, initial=step, disable=not (master and args.progress),
               desc=args.method, dynamic_ncols=True)
    t_log, losses = time.time(), []
    while True:
        out_of_time = time.time() > deadline
        if ddp:
            flag = torch.tensor([float(out_of_time)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last_step = step >= args.max_iters or out_of_time
        if step > 0 and (step % args.ckpt_interval == 0 or last_step):
            checkpoint()
        if last_step:
            break

        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        lm.train()
        if args.method != "sft":
            pool.refill(stream)                                           # Alg. 1 lines 2-3
        total = 0.0
        for micro in range(args.grad_accum):
            # gradients are all-reduced on the last micro-step only
            sync = contextlib.nullcontext() if (not ddp or micro == args.grad_accum - 1) else lm.no_sync()
            with sync:
                if args.method == "sft":
                    x0, r = stream.next(args.batch_size)
                    loss = sft_loss(lm, x0.to(device), r.to(device), rng, autocast)
                else:
                    sl = slice(micro * args.batch_size, (micro + 1) * args.batch_size)
                    loss, z, h, has_h = rollout_loss(lm, pool, sl, args.K, args.tau,
                                                     use_relay, stop_grad, autocast)
                (loss / args.grad_accum).backward()                       # BPTT over K forwards
                if args.method != "sft":   # window truncated at K: the rows go on next step
                    pool.z[sl], pool.h[sl], pool.has_h[sl] = z, h.detach().float(), has_h
            total += loss.item() / args.grad_accum
        torch.nn.utils.clip_grad_norm_(lm.parameters(), args.grad_clip)
        opt.step()                                                        # line 10
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(total)
        bar.update(1)
        if master and step % args.log_interval == 0:
            dt = (time.time() - t_log) / args.log_interval
            left = (args.max_iters - step) * dt
            tqdm.write(f"step {step}/{args.max_iters} | loss {total:.4f} | lr {lr:.2e} | dt "
                       f"{1000 * dt:.0f}ms | {rows * world * args.seq_len / dt:.0f} tok/s | "
                       f"eta {int(left) // 60}m{int(left) % 60:02d}s")
            t_log = time.time()
    bar.close()
    if master:
        print(f"done: {step} steps | last loss {losses[-1] if losses else float('nan'):.4f} | {ckpt_dir}")
    if ddp:
        dist.destroy_process_group()
    return dict(losses=losses, step=step, lm=raw_lm)


if __name__ == "__main__":
    try:
        main()
    except LLMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
