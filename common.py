"""
Set-up that every script shares, in one place: the one-line error exit, the device and its
autocast, the distributed context torchrun hands us, RNG state for exact resume, and writes that
go to a temporary name first. The training loops themselves stay written out in their scripts.
"""
import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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
# device and precision

def resolve_device(name="auto"):
    """'auto' is cuda when a GPU is visible, else cpu; anything else is passed through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


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


def check_replicas(model, ctx):
    """DDP keeps the replicas identical; check it at each checkpoint, since a silent drift would
    waste a run. Returns the message to log (None on one rank)."""
    if not ctx.ddp:
        return None
    sums = gather_objects(sum(q.double().sum().item() for q in model.parameters()), ctx)
    if len(set(sums)) != 1:
        raise RuntimeError(f"parameters differ across ranks: {sums}")
    return f"parameters identical on all {ctx.world} ranks"


def close_distributed(ctx):
    if ctx.ddp:
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


def atomic_torch_save(obj, path):
    atomic(lambda tmp: torch.save(obj, tmp), path)


def save_figure(fig, path, dpi=120):
    atomic(lambda tmp: fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:]), path)


def log_line(step, max_iters, loss, lr, dt, rate, unit, left_s):
    """The one fixed-format training log line both trainers print."""
    left_s = max(0, int(left_s))
    return (f"step {step}/{max_iters} | loss {loss:.4f} | lr {lr:.2e} | dt {1000 * dt:.0f}ms | "
            f"{rate:.0f} {unit}/s | eta {left_s // 60}m{left_s % 60:02d}s")
