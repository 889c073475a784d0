"""
Fine-tune Fast-dLLM v2 with the relay (METHOD.md section 7): the Sudoku recipe of
train_sudoku.py on a pretrained block-diffusion LLM, with the same loop skeleton (diff the two
files: what differs is what the LLM changes, and each such place says so).

    python llm.py --init-tiny T                                        # a tiny random checkpoint
    python train_llm.py --model T --method relay --max-iters 5 --out-dir R
    torchrun --nproc_per_node 2 train_llm.py --preset paper --data data/llm_mix.jsonl \
        --method relay --out-dir out/llm_relay                           # the paper's 1.5B run
    torchrun --nproc_per_node 8 train_llm.py --preset paper-7b --data data/llm_mix.jsonl \
        --method relay --out-dir out/llm_relay_7b                        # 7B: FSDP2 shards it

Methods: sft = vanilla Fast-dLLM v2 SFT (per-block mask rate, complementary copy);
rollout / relay_sg / relay = Algorithm 1 with K=2 forwards over a per-rank streaming buffer,
ground truth revealed at tokens with confidence > tau plus each block's most confident one;
relay carries R(h) at [MASK] positions (relay_sg with h.detach()).
"""
import argparse
import json
import math
import os
import shutil

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (TrainClock, UsageError, add_run_flags, atomic_torch_save, atomic_write,
                    autocast_for, check_replicas, close_distributed, gather_objects, grad_sync,
                    init_distributed, resolve_preset, load_checkpoint, restore_rng, rng_state,
                    reshard_root, run_main, seeded_rng, set_lr, wrap_ddp, wrap_fsdp)
from llm import (FIXTURE, LLMError, STOP_TOKEN, SUB_BLOCK, THRESHOLD, load_relay_lm,
                 save_relay_lm, user_turn)
from relay import unmask_threshold

# -----------------------------------------------------------------------------
# settings. A preset fills every flag left unset; 'auto' picks 'cpu' on a CPU and 'paper' on a GPU.
PRESETS = {
    # the authors' Table 2 run (METHOD.md 7; their finetune_opencode_openmath_bptt.sbatch under
    # HF Trainer): lr 5e-6, AdamW (0.9, 0.999) eps 1e-8, clip 1.0, bf16, 2 GPUs x batch 2 x
    # accumulation 16 = 64 sequences per step (global_batch: the accumulation is it over batch x
    # ranks), rows cut from the left at 2,048 tokens; cosine over 3 epochs of the data with 3 %
    # warm-up, HF's schedule (about 2,811 steps on their 60k rows); a copy kept every 200 steps,
    # the paper's checkpoint is step 200, where this preset stops (--max-iters N --resume goes on
    # toward the horizon); each micro-step advances the one pool of per-device rows (theirs);
    # R's LayerNorm eps 1e-6; the `bd` reveal
    "paper": dict(model="Efficient-Large-Model/Fast_dLLM_v2_1.5B", parallel="ddp", lr=5e-6,
                  weight_decay=0.0, grad_clip=1.0, batch_size=2, global_batch=64, seq_len=2048,
                  max_iters=200, max_minutes=0, grad_ckpt=True, ckpt_interval=50, log_interval=1,
                  schedule="authors", epochs=3.0, keep_interval=200, adam_betas=(0.9, 0.999),
                  adam_eps=1e-8, relay_eps=1e-6, long_rows="truncate-left", pool="shared",
                  reveal="bd"),
    # the same recipe on Fast-dLLM v2 7B (not in the paper): about 16 bytes per parameter of
    # fp32 weights, gradients and AdamW moments, 122 GB at 7.6B, more than any one GPU, so the
    # ranks shard them (FSDP2; USAGE.md, "Training past one GPU's memory")
    "paper-7b": dict(model="Efficient-Large-Model/Fast_dLLM_v2_7B", parallel="fsdp", lr=5e-6,
                     weight_decay=0.0, grad_clip=1.0, batch_size=2, global_batch=64, seq_len=2048,
                     max_iters=200, max_minutes=0, grad_ckpt=True, ckpt_interval=50,
                     log_interval=1, schedule="authors", epochs=3.0, keep_interval=200,
                     adam_betas=(0.9, 0.999), adam_eps=1e-8, relay_eps=1e-6,
                     long_rows="truncate-left", pool="shared", reveal="bd"),
    # CPU runs and the miniature of results/sudoku_llm, whose records these settings reproduce:
    # cosine to zero at --max-iters, AdamW (0.9, 0.95), R's eps 1e-5, long rows dropped, a
    # pool of batch x accumulation rows (each micro-step its own slice)
    "cpu": dict(model="Efficient-Large-Model/Fast_dLLM_v2_1.5B", parallel="ddp", lr=1e-3,
                weight_decay=0.0, grad_clip=1.0, batch_size=2, grad_accum=2, seq_len=128,
                max_iters=20, max_minutes=0, grad_ckpt=False, ckpt_interval=10, log_interval=1,
                schedule="to-max-iters", keep_interval=0, adam_betas=(0.9, 0.95), adam_eps=1e-8,
                relay_eps=1e-5, long_rows="drop", pool="sliced", reveal="bd"),
}
METHODS = ("sft", "rollout", "relay_sg", "relay")
REVEALS = ("bd", "decode_aligned")
POOLS = ("shared", "sliced")
MASK_EPS = 1e-3   # SFT mask rate p = (1 - eps) t + eps

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
g = p.add_argument_group("method")
g.add_argument("--method", default="relay", choices=METHODS, help="objective (default relay)")
g.add_argument("--K", type=int, default=2, help="forwards per update (rollout methods)")
g.add_argument("--tau", type=float, default=THRESHOLD,
               help="confidence threshold that reveals ground truth between forwards")
g.add_argument("--reveal", default=None, choices=REVEALS,
               help="which masked tokens the threshold may reveal between forwards (preset: bd):\n"
                    "bd, anywhere in the 32-block (the paper's Table 2); decode_aligned, only in\n"
                    "the block's earliest 8-token sub-block with a [MASK], as decoding goes")
g.add_argument("--pool", default=None, choices=POOLS,
               help="Alg. 1's pool under gradient accumulation (preset: paper shared, cpu sliced):\n"
                    "shared, the authors': --batch-size rows per rank, every micro-step runs K\n"
                    "forwards on them and refills finished rows from the first rows of its own\n"
                    "micro-batch (the rest of it is skipped); sliced: batch x accumulation rows,\n"
                    "micro-step m trains slice m, so each row advances K forwards per step")
g.add_argument("--relay-gain", type=float, default=0.0,
               help="initial gain of a newly patched R (default 0, the authors': the patched model\n"
                    "equals the base; a non-zero gain is for training from scratch, a departure)")
g.add_argument("--relay-eps", type=float, default=None,
               help="R's LayerNorm eps for a newly patched model (preset: paper 1e-6, cpu 1e-5)")
g = p.add_argument_group("model")
g.add_argument("--model", default=None, help="checkpoint directory or hub id (preset: Fast-dLLM "
               "v2 1.5B or 7B; python llm.py --init-tiny DIR makes a tiny one)")
g.add_argument("--preset", default="auto", choices=["auto", "cpu", "paper", "paper-7b"],
               help="fills every setting left unset (auto: cpu on a CPU, paper on a GPU)")
g.add_argument("--grad-ckpt", type=int, default=None, help="gradient checkpointing 1/0 (preset)")
g = p.add_argument_group("data")
g.add_argument("--data", default=FIXTURE, help="jsonl of {prompt, response} "
               "(data/prepare_llm.py); default: the repository's small fixture")
g.add_argument("--seq-len", type=int, default=None, help="tokens per row, a multiple of the block")
g.add_argument("--long-rows", default=None, choices=("drop", "truncate-left"),
               help="rows over --seq-len: dropped, or cut from the left to their last --seq-len\n"
                    "tokens (the authors'; preset: paper truncate-left, cpu drop)")
g = p.add_argument_group("optimisation")
g.add_argument("--batch-size", type=int, default=None, help="rows per micro-step per rank")
g.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimizer step "
               "(paper presets: their 64 sequences per step over batch x ranks)")
g.add_argument("--parallel", default=None, choices=["ddp", "fsdp"],
               help="under torchrun: ddp, a whole replica per rank, or fsdp, FSDP2's shards of\n"
                    "weights, gradients and AdamW state (preset: paper ddp, paper-7b fsdp)")
g.add_argument("--schedule", default=None, choices=("authors", "to-max-iters"),
               help="learning rate (preset: paper authors, cpu to-max-iters): authors, HF\n"
                    "Trainer's cosine with warm-up over the horizon --epochs of the data make\n"
                    "(lr 0 at step 0, warm-up ceil(warmup-frac x horizon) steps); to-max-iters,\n"
                    "warm-up int(warmup-frac x max-iters) steps from lr/warm-up, cosine to zero\n"
                    "at --max-iters")
g.add_argument("--epochs", type=float, default=None,
               help="passes over the data that set the authors' schedule's horizon (preset: 3)")
g.add_argument("--warmup-frac", type=float, default=0.03, help="warm-up, fraction of the horizon")
g.add_argument("--adam-betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
               help="AdamW betas (preset: paper 0.9 0.999, HF's default; cpu 0.9 0.95)")
g.add_argument("--adam-eps", type=float, default=None, help="AdamW eps (preset: 1e-8)")
g.add_argument("--keep-interval", type=int, default=None,
               help="steps between checkpoints kept for good in <out-dir>/ckpt-<step> (model\n"
                    "only; 0 = none; paper presets: 200, the paper's checkpoint is ckpt-200)")
add_run_flags(p, "default: out/llm_<method>; holds the checkpoint directory ckpt/")


def resolve_args(argv=None):
    args = resolve_preset(p.parse_args(argv), PRESETS)
    if args.out_dir is None:
        args.out_dir = f"out/llm_{args.method}"
    if args.parallel == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise UsageError("--parallel fsdp shards the model over ranks: launch it with torchrun "
                         "--nproc_per_node N (N >= 2); one process trains (and resumes an FSDP "
                         "checkpoint) with --parallel ddp")
    if args.K < 1:
        raise UsageError(f"--K {args.K}: need at least one forward")
    return args


# -----------------------------------------------------------------------------
# data: chat template, labels on the response only, one example per row (no packing)

def load_examples(path, tok, seq_len, block_size, mask_id, long_rows="drop"):
    """Token rows (N, seq_len) padded with the pad token and a response mask (N, seq_len), and
    how many rows were longer than seq_len: dropped, or (long_rows="truncate-left", the
    authors' LMFlow setting) cut to their last seq_len tokens, so the prompt goes first (and,
    past seq_len, the response's start). Errors name the file and line."""
    if seq_len % block_size:
        raise UsageError(f"--seq-len {seq_len} is not a multiple of the block size {block_size}")
    if not os.path.exists(path):
        raise LLMError(f"{path}: no such data file")
    ids, resp, n_long = [], [], 0
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise LLMError(f"{path}:{n}: not JSON ({e.msg})") from None
            for k in ("prompt", "response"):
                if not isinstance(ex.get(k), str):
                    raise LLMError(f"{path}:{n}: missing field {k!r} (need prompt and response)")
            if not ex["response"].strip():
                raise LLMError(f"{path}:{n}: empty response")
            prompt = user_turn(tok, ex["prompt"])
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            r_ids = tok(ex["response"] + STOP_TOKEN, add_special_tokens=False).input_ids
            row, is_resp = p_ids + r_ids, [False] * len(p_ids) + [True] * len(r_ids)
            if len(row) > seq_len:
                n_long += 1
                if long_rows == "drop":
                    continue
                row, is_resp = row[-seq_len:], is_resp[-seq_len:]
            # the stop token's block is completed with [MASK], as decoding leaves it when it
            # stops mid-block (sample_llm.generate): never a clean pad the response could see.
            # A row of at most seq_len tokens still fits with it: seq_len is whole blocks
            n_fill = -len(row) % block_size
            n_pad = seq_len - len(row) - n_fill
            ids.append(row + [mask_id] * n_fill + [tok.pad_token_id] * n_pad)
            resp.append(is_resp + [False] * (n_fill + n_pad))
    if not ids:
        raise LLMError(f"{path}: no example fits in --seq-len {seq_len} ({n_long} too long)")
    return torch.tensor(ids), torch.tensor(resp), n_long


def schedule_horizon(n_rows, batch_size, grad_accum, world, epochs):
    """Optimizer steps in `epochs` passes over n_rows, counted as HF Trainer counts them (the
    authors' run): each rank's sampler holds ceil(n_rows / world) rows, its loader
    ceil(that / batch_size) micro-batches, an epoch floor(those / grad_accum) steps (at least
    1), and the horizon ceil(epochs x steps per epoch). Their 60k rows, 2 ranks, batch 2,
    accumulation 16, 3 epochs: 2,811."""
    per_rank = math.ceil(n_rows / world)
    per_epoch = max(math.ceil(per_rank / batch_size) // grad_accum, 1)
    return math.ceil(epochs * per_epoch)


def learning_rate(step, peak, schedule, warmup_frac, horizon):
    """The learning rate of optimizer step `step` (0-based). 'authors': HF Trainer's
    get_cosine_schedule_with_warmup over `horizon` steps with ceil(warmup_frac x horizon)
    warm-up steps (lr 0 at step 0, as theirs), zero from the horizon on. 'to-max-iters' (the
    CPU miniature's): int(warmup_frac x horizon) warm-up steps starting at peak / warm-up,
    then cosine to zero at the horizon (there --max-iters)."""
    if schedule == "authors":
        warm = math.ceil(warmup_frac * horizon)
        if step < warm:
            return peak * step / max(1, warm)
        progress = (step - warm) / max(1, horizon - warm)
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
    warm = max(1, int(warmup_frac * horizon))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, horizon - warm)))


class ExampleStream:
    """Draws examples with a numpy Generator (its state saved in checkpoints with the other
    RNGs): a shuffled pass over the rows, then another."""

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
        return dict(order=self.order, pos=self.pos)

    def load_state_dict(self, s):
        self.order, self.pos = s["order"], s["pos"]


class StreamingBuffer:
    """Algorithm 1's streaming buffer, per rank: each row's clean tokens x0, response mask, partial
    x_t (z), and detached shifted relay state h. has_h is False for a fresh row: its first forward
    adds no relay (decoding's first pass of a block adds none either; METHOD.md 7's mismatch)."""

    def __init__(self, B, T, C, mask_id, device):
        self.mask_id = mask_id
        self.x0 = torch.zeros(B, T, dtype=torch.long, device=device)
        self.resp = torch.zeros(B, T, dtype=torch.bool, device=device)
        self.z = self.x0.clone()                         # no [MASK]: every row is refilled first
        self.h = torch.zeros(B, T, C, device=device)
        self.has_h = torch.zeros(B, dtype=torch.bool, device=device)

    def refill(self, stream, draw=None):
        """Alg. 1 lines 2-3: rows with no masked response token left get a fresh example, every
        response token masked, h = 0 and has_h = False. draw=None takes one example per such
        row; draw=n (the shared pool: the authors' StreamingBatch) takes a micro-batch of n from
        the stream, fills the finished rows from its first rows and skips the rest."""
        done = ~((self.z == self.mask_id) & self.resp).any(1)    # the fill [MASK]s stay
        n = int(done.sum())
        if draw is not None:
            ids, resp = stream.next(draw)
            n = min(n, draw)
            ids, resp = ids[:n], resp[:n]
            done &= done.cumsum(0) <= n                          # the first n finished rows
        elif n:
            ids, resp = stream.next(n)
        if n:
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


def unwrap(model):
    """The RelayLM inside a DDP wrapper (forward goes through the wrapper, so DDP syncs grads);
    FSDP2 shards in place, so there the model is the RelayLM itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def masked_ce(lm, hs, x0, masked):
    """Mean CE over masked response tokens; lm_head only at those positions (152k wide).
    [MASK] stays inside the softmax, as in Fast-dLLM v2's recipe, so training pushes its logit
    down and a decoder that takes the argmax over the whole vocabulary (the official one) never
    picks it; our decoder and Alg. 1 line 8's confidences exclude it (lm.logits).
    Returns the loss and those confidences' logits (N, V)."""
    logits = lm.lm_head(hs[masked])                                  # (N, V)
    return F.cross_entropy(logits.float(), x0[masked]), lm.exclude_mask(logits)


# -----------------------------------------------------------------------------
# one optimizer micro-step's loss for each method

def rollout_loss(model, buffer, rows, K, tau, *, use_relay, stop_grad, autocast, reveal="bd"):
    """Algorithm 1 lines 4-9 on buffer rows `rows`. Returns L = sum of K means and the new state.
    reveal: 'bd' or 'decode_aligned' (--reveal; relay.unmask_threshold's sub_group)."""
    lm = unwrap(model)
    z, h, has_h, x0 = buffer.z[rows], buffer.h[rows], buffer.has_h[rows], buffer.x0[rows]
    resp = buffer.resp[rows]
    L = 0.0                                                        # line 4:  L <- 0
    for k in range(K):                                             # line 5:  for k in 0..K-1
        is_mask = z == lm.mask_id                  # response [MASK]s and the stop block's fill
        masked = is_mask & resp
        where = is_mask & has_h[:, None] if use_relay else None    # R(h) at [MASK] only
        with autocast:                                             # line 6:  h <- f(Emb(z) + R(h))
            hs = model(z, x0, h if use_relay else None, relay_where=where, stop_grad=stop_grad)
        loss, logits = masked_ce(lm, hs, x0, masked)               # line 7:  L <- L + CE(logits, x0)
        L = L + loss
        with torch.no_grad():                                      # line 8:  U = confidence > tau,
            conf = torch.zeros(masked.shape, device=z.device)      #   plus each block's best
            conf[masked] = logits.float().softmax(-1).amax(-1)
            sub = SUB_BLOCK if reveal == "decode_aligned" else None
            U = unmask_threshold(conf, masked, tau, group=lm.block_size, sub_group=sub)
        z = torch.where(U, x0, z)                                  # line 9:  z^i <- x0^i, i in U
        h, has_h = hs, torch.ones_like(has_h)                      # relay_sg detaches at the next R
    return L, z, h, has_h


def sft_masks(resp, block_size, rng):
    """(2B, T) masks: rows 0..B-1 mask each response token with its block's rate p, rows B..2B-1
    mask exactly the other response tokens (the complementary copy). Prompt and pad: never."""
    B, T = resp.shape
    t = torch.from_numpy(rng.random((B, T // block_size))).float().to(resp.device)
    p_tok = ((1 - MASK_EPS) * t + MASK_EPS).repeat_interleave(block_size, dim=1)   # (B, T)
    m = (torch.from_numpy(rng.random((B, T))).float().to(resp.device) < p_tok) & resp
    return torch.cat([m, resp & ~m])


def sft_loss(model, x0, resp, rng, autocast):
    """The SFT baseline, vanilla Fast-dLLM v2: per 32-block t ~ U(0,1), p = (1 - eps) t + eps,
    each response token masked with probability p; the complementary copy masks the others."""
    lm = unwrap(model)
    masked = sft_masks(resp, lm.block_size, rng)                                    # (2B, T)
    x0_2 = torch.cat([x0, x0])
    x_t = torch.where(masked, lm.mask_id, x0_2)
    with autocast:
        hs = model(x_t, x0_2)
    loss, _ = masked_ce(lm, hs, x0_2, masked)
    return loss


# -----------------------------------------------------------------------------

def save_checkpoint(out_dir, lm, tok, raw_cfg, state, model_state=None, log_path=None):
    """LLM only: out_dir/ckpt is a directory, the model in the layout sample_llm.py loads plus
    state.pt (optimizer, buffer, RNG, step) and the training log so far (log.jsonl: loss, lr,
    R's health). Written to ckpt.tmp, then swapped in, so a crash keeps the last one whole.
    model_state: the gathered full state dict of a sharded model."""
    final, tmp, old = (os.path.join(out_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    save_relay_lm(lm, tok, raw_cfg, tmp, model_state)
    atomic_torch_save(state, os.path.join(tmp, "state.pt"))
    if log_path and os.path.exists(log_path):
        shutil.copy(log_path, os.path.join(tmp, "log.jsonl"))
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def keep_copy(out_dir, step):
    """out_dir/ckpt-<step>: the checkpoint's model and log, kept for good (HF Trainer's
    save_steps; the paper's Table 2 is ckpt-200). No state.pt: it is for evaluation."""
    dest = os.path.join(out_dir, f"ckpt-{step}")
    shutil.rmtree(dest + ".tmp", ignore_errors=True)
    shutil.copytree(os.path.join(out_dir, "ckpt"), dest + ".tmp",
                    ignore=shutil.ignore_patterns("state.pt"))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(dest + ".tmp", dest)


@torch.no_grad()
def relay_health(lm, grad_norm, ctx, fsdp):
    """Is R learning? What the authors' trainer logs every step: R's gradient norm over the
    backbone's (this step's accumulated gradient, before clipping; grad_norm is clipping's
    norm over all parameters), with the mean |gain| and |bias| of R's LayerNorm (zero at the
    start: R(h) = gain * normalised h + bias). None without a relay. Under FSDP2 each rank holds
    a shard of R, so the sums are added over ranks."""
    if lm.relay is None:
        return None
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t
    w, b = lm.relay.norm.weight, lm.relay.norm.bias
    sums = torch.stack([local(w).abs().sum(), local(b).abs().sum(),
                        sum(local(q.grad).float().pow(2).sum() for q in (w, b)
                            if q.grad is not None) + local(w).new_zeros(())]).float()
    if fsdp:
        torch.distributed.all_reduce(sums)
    total = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    r_grad = sums[2].sqrt().item()
    backbone = max(total.item() ** 2 - r_grad ** 2, 0.0) ** 0.5
    return dict(relay_gain=sums[0].item() / w.numel(), relay_bias=sums[1].item() / b.numel(),
                relay_grad=r_grad, backbone_grad=backbone,
                relay_grad_ratio=r_grad / max(backbone, 1e-12))


def gathered_state(model, opt, fsdp):
    """What a checkpoint saves: (the model's full state dict, the optimizer's state). DDP or one
    process: (None: the model saves itself, opt.state_dict()). FSDP2: both gathered whole on
    rank 0 (empty elsewhere), the optimizer's keyed by parameter name, so a run resumes on any
    number of ranks, FSDP2 or not (load_optimizer)."""
    if not fsdp:
        return None, opt.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=opts),
            dict(get_optimizer_state_dict(model, opt, options=opts), by_name=True))


def load_optimizer(opt, model, st, fsdp):
    """The optimizer state of a checkpoint, whichever way it was saved and is resumed: by
    parameter name (FSDP2's, see gathered_state) through torch.distributed.checkpoint's
    set_optimizer_state_dict, which shards it for FSDP2 and fills a plain optimizer otherwise;
    by position (opt.state_dict()) directly, or renamed first when FSDP2 resumes it."""
    saved = dict(st["optimizer"])
    by_name = saved.pop("by_name", False)
    if not by_name and not fsdp:
        return opt.load_state_dict(saved)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if not by_name:
        names = [n for n, q in model.named_parameters() if q.requires_grad]
        saved = dict(state={names[i]: s for i, s in saved["state"].items()},
                     param_groups=[dict(g, params=[names[i] for i in g["params"]])
                                   for g in saved["param_groups"]])
    set_optimizer_state_dict(model, opt, saved, options=StateDictOptions(full_state_dict=True))


def main(argv=None):
    args = resolve_args(argv)
    ctx = init_distributed(args.device)                       # rank and world from torchrun
    device, master = ctx.device, ctx.master
    rng = seeded_rng(args.seed, ctx.rank)             # example order, SFT masks
    autocast = autocast_for(device)
    if args.grad_accum is None:   # LLM: the preset's global batch over batch x ranks
        per_step = args.batch_size * ctx.world
        if args.global_batch % per_step:
            raise UsageError(f"{ctx.world} rank(s) x --batch-size {args.batch_size} does not divide "
                             f"the preset's {args.global_batch} sequences per step; give "
                             f"--grad-accum or another --batch-size")
        args.grad_accum = args.global_batch // per_step
    fsdp = args.parallel == "fsdp"

    # LLM: the model comes first (its tokenizer makes the data); resume reloads it from out_dir
    ckpt_dir = os.path.join(args.out_dir, "ckpt")
    if args.resume and not os.path.isdir(ckpt_dir):
        raise LLMError(f"{ckpt_dir}: --resume given but there is no checkpoint")
    use_relay = args.method in ("relay", "relay_sg")
    stop_grad = args.method == "relay_sg"     # the relay_sg ablation: h.detach() before R
    lm, tok, raw_cfg = load_relay_lm(ckpt_dir if args.resume else args.model, patch=use_relay,
                                     device=device, relay_eps=args.relay_eps,
                                     relay_gain=args.relay_gain)
    if not use_relay:
        lm.relay = None
    if args.grad_ckpt:
        lm.qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, resp, n_long = load_examples(args.data, tok, args.seq_len, lm.block_size, lm.mask_id,
                                      args.long_rows)
    stream = ExampleStream(ids, resp, rng)
    # LLM: the cosine's horizon: the authors' from the data, the miniature's at --max-iters
    horizon = (schedule_horizon(len(ids), args.batch_size, args.grad_accum, ctx.world, args.epochs)
               if args.schedule == "authors" else args.max_iters)
    raw_lm = lm                          # saved (FSDP2 shards it in place; a DDP wrapper trains)
    lm = wrap_fsdp(lm, lm.qwen.model.layers, ctx) if fsdp else wrap_ddp(lm, ctx)

    # LLM: no EMA and no weight-decay groups (the Fast-dLLM v2 recipe). The optimizer comes
    # after the wrapping: FSDP2 replaces the parameters by shards
    opt = torch.optim.AdamW([q for q in raw_lm.parameters() if q.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay, betas=tuple(args.adam_betas),
                            eps=args.adam_eps)
    # LLM: the pool under gradient accumulation (--pool): the authors' one micro-batch of rows
    # that every micro-step advances, or a slice of its own per micro-step
    n_rows = args.batch_size * (args.grad_accum if args.pool == "sliced" else 1)
    buffer = StreamingBuffer(n_rows, args.seq_len, raw_lm.qwen.config.hidden_size, raw_lm.mask_id,
                             device)
    step, elapsed_before = 0, 0.0

    os.makedirs(args.out_dir, exist_ok=True)
    if args.resume:   # LLM: the weights came back through load_relay_lm; state.pt has the rest
        st = load_checkpoint(os.path.join(ckpt_dir, "state.pt"), device)
        for k, old in (("method", None), ("pool", "sliced"), ("reveal", "bd")):   # old: before
            was = st["args"].get(k, old)                             # the flag existed
            if was != getattr(args, k):
                raise LLMError(f"{ckpt_dir}: trained with --{k} {was}, not {getattr(args, k)}")
        load_optimizer(opt, raw_lm, st, fsdp)
        step, elapsed_before = st["step"], st["elapsed_s"]
        own = st["ranks"][ctx.rank if ctx.rank < len(st["ranks"]) else 0]
        restore_rng(own["rng"], rng, device)
        buffer.load_state_dict(own["buffer"])
        stream.load_state_dict(own["stream"])
        if master:
            print(f"resumed {ckpt_dir} at step {step}")
    if master:
        n_params = sum(q.numel() for q in raw_lm.parameters())
        print(f"{args.method} K={args.K} | preset {args.preset} | {n_params / 1e6:.2f}M params | "
              f"{len(ids)} examples ({n_long} over {args.seq_len} tokens "
              f"{'dropped' if args.long_rows == 'drop' else 'cut from the left'}) | "
              f"{args.batch_size} x {args.grad_accum} accum x {ctx.world} rank(s) = "
              f"{args.batch_size * args.grad_accum * ctx.world} sequences/step | pool "
              f"{args.pool} ({n_rows} rows) | reveal {args.reveal} | {'fsdp' if fsdp else 'ddp'} | "
              f"device {device}")
        if args.schedule == "authors":
            print(f"schedule: HF cosine over {horizon:,} steps ({args.epochs:g} epochs of "
                  f"{len(ids):,} rows at {args.batch_size * args.grad_accum * ctx.world} per step), "
                  f"warm-up {math.ceil(args.warmup_frac * horizon)}; this run stops at step "
                  f"{args.max_iters} (lr {learning_rate(args.max_iters, args.lr, args.schedule, args.warmup_frac, horizon):.2e})")
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(dict(vars(args), horizon=horizon), f, indent=1)
    log_path = os.path.join(args.out_dir, "log.jsonl")
    if master:    # a resumed run redoes the steps after its checkpoint: their records go
        kept = []
        if args.resume and os.path.exists(log_path):
            with open(log_path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= step]
        atomic_write(log_path, "".join(kept))

    def checkpoint():
        ranks = gather_objects(dict(buffer=buffer.state_dict(), rng=rng_state(rng, device),
                                    stream=stream.state_dict()), ctx)   # LLM: + example order
        full, optim = gathered_state(raw_lm, opt, fsdp)   # LLM: FSDP2 gathers on rank 0
        msg = check_replicas(raw_lm, ctx, full)
        if master:
            if msg:
                tqdm.write(f"step {step}: {msg}")
            save_checkpoint(args.out_dir, raw_lm, tok, raw_cfg, dict(   # LLM: a directory
                optimizer=optim, args=vars(args), step=step,
                elapsed_s=elapsed_before + clock.elapsed(), ranks=ranks), full, log_path)
            if args.keep_interval and step % args.keep_interval == 0:   # HF's save_steps
                keep_copy(args.out_dir, step)

    lm.train()                          # and stays so: nothing in the loop switches it
    clock = TrainClock(args, step, ctx)
    losses = []                       # this invocation's, one per step (for tests and scripts)
    while True:
        last_step = step >= args.max_iters or clock.out_of_time()
        keep = args.keep_interval and step % args.keep_interval == 0
        if step > 0 and (step % args.ckpt_interval == 0 or last_step or keep):
            checkpoint()
        if last_step:
            break

        lr = set_lr(opt, learning_rate(step, args.lr, args.schedule, args.warmup_frac, horizon))
        if args.method != "sft" and args.pool == "sliced":
            buffer.refill(stream)                                            # Alg. 1 lines 2-3
        loss = 0.0
        for micro in range(args.grad_accum):   # LLM: gradient accumulation, DDP syncs the last
            with grad_sync(lm, ctx, sync=micro == args.grad_accum - 1):
                if args.method == "sft":
                    x0, resp = stream.next(args.batch_size)
                    micro_loss = sft_loss(lm, x0.to(device), resp.to(device), rng, autocast)
                else:
                    if args.pool == "shared":   # Alg. 1 lines 2-3 at every micro-step (theirs)
                        buffer.refill(stream, draw=args.batch_size)
                        rows = slice(None)
                    else:
                        rows = slice(micro * args.batch_size, (micro + 1) * args.batch_size)
                    micro_loss, z, h, has_h = rollout_loss(
                        lm, buffer, rows, args.K, args.tau, use_relay=use_relay,
                        stop_grad=stop_grad, autocast=autocast, reveal=args.reveal)
                (micro_loss / args.grad_accum).backward()                    # BPTT over K forwards
            if args.method != "sft":   # the window is truncated at K: the rows go on next step
                buffer.z[rows], buffer.h[rows], buffer.has_h[rows] = z, h.detach().float(), has_h
            loss += micro_loss.item() / args.grad_accum
        # the optimizer's parameters: under FSDP2 the root's gathered copies stand in for its
        # shards until reshard_root, and the gradients are on the shards
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [q for g in opt.param_groups for q in g["params"]], args.grad_clip)
        opt.step()                                                           # line 10
        health = relay_health(raw_lm, grad_norm, ctx, fsdp)   # R after the step, its gradient
        opt.zero_grad(set_to_none=True)
        reshard_root(lm)                               # LLM: FSDP2 gathers the new weights next
        step += 1
        losses.append(loss)
        if master and step % args.log_interval == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(dict(step=step, loss=loss, lr=lr, **(health or {}))) + "\n")
        clock.step_done(step, losses, lr, args.batch_size * args.grad_accum * ctx.world *
                        args.seq_len, "tok", extra=health and (
                            f"R |gain| {health['relay_gain']:.2e} |bias| {health['relay_bias']:.2e}"
                            f" grad R/backbone {health['relay_grad_ratio']:.2e}"))
    clock.close()
    if master:
        print(f"done: {step} steps in {(elapsed_before + clock.elapsed()) / 60:.1f} min | "
              f"last loss {losses[-1] if losses else float('nan'):.4f} | {ckpt_dir}")
    close_distributed(ctx)
    return dict(losses=losses, step=step, lm=raw_lm)


if __name__ == "__main__":
    run_main(main)
