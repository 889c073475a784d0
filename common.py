"""
Set-up that every script shares, in one place: the one-line error exit, the device and its
autocast, the distributed context torchrun hands us, RNG state for exact resume, and writes that
go to a temporary name first. The training loops themselves stay written out in their scripts.
"""
import contextlib
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


# -----------------------------------------------------------------------------
# errors: bad input stops a script with one line naming the file, line or flag, and exit 2

class UserError(ValueError):
    """Bad input a user can fix. Subclasses say where it came from (DataError: a Sudoku file,
    LLMError: a checkpoint or data file of the LLM scripts, EvalError: a benchmark file)."""


class UsageError(UserError):
    """A bad flag or combination of flags (not a bad file)."""


def run_main(main):
    """Run a script's main(); a UserError becomes `error: <message>` on stderr and exit status 2,
    with no traceback (nothing half-written: every write below is atomic)."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# -----------------------------------------------------------------------------
# device

def resolve_device(name="auto"):
    """'auto' is cuda when a GPU is visible, else cpu; anything else is passed through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# -----------------------------------------------------------------------------
# settings: the flags both trainers share, and presets that fill what is left unset

def add_run_flags(parser, out_dir_help):
    """The flags both trainers share, under one header; None means 'the preset's value'."""
    g = parser.add_argument_group("optimizer, budget, checkpoints, output, device")
    g.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate (preset)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (preset)")
    g.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip (preset)")
    g.add_argument("--max-iters", type=int, default=None, help="optimizer steps (preset)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget in minutes, 0 = none (preset)")
    g.add_argument("--ckpt-interval", type=int, default=None, help="steps between checkpoints")
    g.add_argument("--log-interval", type=int, default=None, help="steps between log lines")
    g.add_argument("--out-dir", default=None, help=out_dir_help)
    g.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out-dir (exact: the same next losses)")
    g.add_argument("--seed", type=int, default=1, help="torch and numpy seed (+ rank)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    return g


def resolve_preset(args, presets):
    """'auto' device and preset resolved (a GPU gets 'paper', a CPU 'cpu'), then every flag the
    user left unset (None) filled from the preset."""
    args.device = resolve_device(args.device)
    if args.preset == "auto":
        args.preset = "paper" if args.device.startswith("cuda") else "cpu"
    for k, v in presets[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


# -----------------------------------------------------------------------------
# precision

def autocast_for(device):
    """bf16 autocast on a GPU (the authors' setting); full fp32 on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -----------------------------------------------------------------------------
# distributed: rank and world size come from torchrun's environment; plain python is one rank

@dataclass
class DistContext:
    ddp: bool
    rank: int
    world: int
    device: torch.device

    @property
    def master(self):
        return self.rank == 0


def init_distributed(device):
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, one GPU
    per local rank, gloo on CPUs."""
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext(False, 0, 1, torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return DistContext(True, dist.get_rank(), dist.get_world_size(), torch.device(device))


def wrap_ddp(model, ctx):
    if not ctx.ddp:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def wrap_fsdp(model, blocks, ctx):
    """FSDP2 (torch's fully_shard): each module of `blocks` (the decoder layers), then the root
    with what is left (embeddings, final norm, R), sharded in place over the ranks, so a rank
    holds 1/world of the parameters, gradients and AdamW moments. On a GPU the layers compute in
    bf16 and reduce gradients in fp32; on a CPU everything stays fp32. The root's parameters
    stay gathered from the forward to the backward (FSDP2's rule for the root), so the loss may
    call its lm_head after the forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if ctx.device.type == "cuda" else MixedPrecisionPolicy())
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    # Alg. 1's K forwards run the root K times before one backward; the root's parameters must
    # outlive the first backward segment, so they stay gathered until reshard_root()
    model.set_reshard_after_backward(False, recurse=False)
    return model


def reshard_root(model):
    """After the optimizer step (wrap_fsdp): drop the root's gathered parameters, now stale, so
    the next forward gathers the updated shards."""
    if is_fsdp(model):
        model.reshard()


def is_fsdp(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def grad_sync(model, ctx, sync):
    """Gradient accumulation: sync=False holds the gradients on this rank (DDP's no_sync,
    FSDP2's set_requires_gradient_sync(False)); the last micro-step syncs them."""
    if not ctx.ddp or sync:
        yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def any_rank(flag, ctx):
    """True on every rank if it is True on any (so all ranks stop at the same step)."""
    if not ctx.ddp:
        return flag
    t = torch.tensor([float(flag)], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj, ctx):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.ddp:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def check_replicas(model, ctx, full_state=None):
    """DDP keeps the replicas identical; check it at each checkpoint, since a silent drift would
    waste a run. FSDP2 keeps one copy in shards, which differ by design: there the model gathered
    on rank 0 (full_state) must hold exactly the shards' parameters (the sums agree to fp64
    rounding). Returns the message to log (None on one rank)."""
    if not ctx.ddp:
        return None
    if is_fsdp(model):
        names = [n for n, _ in model.named_parameters()]     # a tied weight once
        local = sum(q.to_local().double().sum().item() for q in model.parameters())
        t = torch.tensor([local], dtype=torch.float64,
                         device=ctx.device if ctx.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        if not full_state:                           # ranks other than 0 hold no gathered copy
            return None
        gathered = sum(full_state[n].double().sum().item() for n in names)
        if abs(gathered - t.item()) > 1e-9 * max(1.0, abs(gathered)):
            raise RuntimeError(f"the gathered model ({gathered}) differs from its shards "
                               f"({t.item()})")
        return f"gathered model equals its {ctx.world} shards"
    sums = gather_objects(sum(q.double().sum().item() for q in model.parameters()), ctx)
    if len(set(sums)) != 1:
        raise RuntimeError(f"parameters differ across ranks: {sums}")
    return f"parameters identical on all {ctx.world} ranks"


def close_distributed(ctx):
    """Leave the process group together: a barrier first, so no rank tears its connections down
    while another still talks to it."""
    if ctx.ddp:
        dist.barrier()
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# RNG state, saved in every checkpoint so a resumed run draws exactly what it would have drawn

def rng_state(rng, device):
    return dict(numpy=rng.bit_generator.state, torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state() if torch.device(device).type == "cuda" else None)


def restore_rng(state, rng, device):
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if torch.device(device).type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])


def seeded_rng(seed, rank):
    """Seed torch and return the numpy Generator of this rank (seed + rank, as nanoGPT does)."""
    torch.manual_seed(seed + rank)
    return np.random.default_rng(seed + rank)


# -----------------------------------------------------------------------------
# writes: to a temporary name, then renamed, so an interrupted write never leaves a half file

def atomic(write, path):
    """write(tmp_path) then rename tmp_path to path."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def atomic_write(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic(write, path)


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: tensors and plain Python data only, so a shared .pt
    file cannot run code while it is read (pickle can). A file that asks for any other Python
    object is refused, naming it; anything unreadable gets one line too."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
        if unsafe:
            raise UserError(f"{path}: refused, it would load the Python object {unsafe.group(1)}"
                            f" (only tensors and plain data are read)") from None
        raise UserError(f"{path}: not a readable checkpoint (not a torch file of tensors and "
                        f"plain data)") from None
    except Exception as e:   # truncated, a zip that is not torch's, ...
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def atomic_torch_save(obj, path):
    atomic(lambda tmp: torch.save(obj, tmp), path)


def save_figure(fig, path, dpi=120):
    atomic(lambda tmp: fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:]), path)


def finish_plot(fig, ax, path, xlabel, ylabel, title, xlabel_size=None):
    """One accuracy-vs-NFE panel's labels, grid and legend; the figure written atomically and
    closed (table1.py and table2.py's frontiers)."""
    ax.set_xlabel(xlabel, fontsize=xlabel_size)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    finish_figure(fig, path)


def finish_figure(fig, path, suptitle=None):
    """The figure's title, a tight layout, written atomically and closed."""
    import matplotlib.pyplot as plt
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


# -----------------------------------------------------------------------------
# the wall-clock side of a training loop, the same in both trainers

class TrainClock:
    """The --max-minutes deadline, the tqdm bar, and the fixed-format log line
    (step/total, loss, lr, dt, items/s, eta) every log_interval steps. Started where the loop
    starts; `elapsed()` is this invocation's time, which checkpoints add to earlier ones."""

    def __init__(self, args, step, ctx):
        self.args, self.ctx = args, ctx
        self.t_start = time.time()
        self.deadline = (self.t_start + 60 * args.max_minutes if args.max_minutes
                         else float("inf"))
        self.bar = tqdm(total=args.max_iters, initial=step, desc=args.method, dynamic_ncols=True,
                        disable=not (ctx.master and args.progress))
        self.t_log, self.step_log = self.t_start, step

    def elapsed(self):
        return time.time() - self.t_start

    def out_of_time(self):
        return any_rank(time.time() > self.deadline, self.ctx)   # all ranks stop at one step

    def step_done(self, step, losses, lr, items_per_step, unit, extra=None):
        """After optimizer step `step`: advance the bar; on a log step print the mean loss since
        the last log line, the time per step and the items (boards, tokens) per second, then
        `extra` (a string) if given."""
        self.bar.update(1)
        if not (self.ctx.master and step % self.args.log_interval == 0):
            return
        n = step - self.step_log
        dt = (time.time() - self.t_log) / n
        left = max(0, int(dt * min(self.args.max_iters - step, (self.deadline - time.time()) / dt)))
        tqdm.write(f"step {step}/{self.args.max_iters} | loss {sum(losses[-n:]) / n:.4f} | "
                   f"lr {lr:.2e} | dt {1000 * dt:.0f}ms | {items_per_step / dt:.0f} {unit}/s | "
                   f"eta {left // 60}m{left % 60:02d}s" + (f" | {extra}" if extra else ""))
        self.t_log, self.step_log = time.time(), step

    def close(self):
        self.bar.close()
