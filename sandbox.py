"""
A sandbox for running untrusted Python programs (code_eval.py's generated code). One entry point:

    result = sandbox.run(["-c", source, "arg"], stdin=b"...", timeout=10, mem_bytes=1 << 30)

runs the interpreter with those arguments in a fresh, size-capped, writable work directory and
returns its exit status, its stdout (up to a cap) and the tail of its stderr. The kernel is the
boundary (EVALUATION.md):
- namespaces: PID, mount, network, IPC, UTS (and user, when the caller is not root);
- the filesystem: a new root that holds only the interpreter's own files (its standard library,
  an empty site-packages with numpy bound in), the system's shared libraries, a minimal /dev and
  /proc, a work directory and /tmp (tmpfs, capped); no host /tmp, /run, /var, /home, /etc;
- an unprivileged user: as root, uid 65534 with no capabilities and no_new_privs;
- a seccomp filter: keyrings, new namespaces, mount, io_uring, userfaultfd, bpf, perf_event_open,
  ptrace and friends fail with EPERM, and so do file locks and file watches (inotify, fanotify,
  dnotify), through which two samples running at once could signal to each other;
- one cgroup (created under the caller's own) capping the memory and processes of the whole tree,
  rlimits per process, a wall-clock timeout, everything killed at the end.
bubblewrap builds it when installed; otherwise util-linux's `unshare` and LAUNCHER below build the
same from the same mount plan. With neither, nothing runs unless the caller asks for `none`.
"""
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import namedtuple

from common import UserError

NOBODY = 65534                   # the unprivileged uid/gid programs run as when we are root
WORK = "/w"                      # the work directory inside
WORK_BYTES = 64 << 20            # its size cap (tmpfs)
TMP_BYTES = 16 << 20             # /tmp inside
MAX_PROCS = 64                   # processes and threads of one program's whole tree
KEEP_STDERR = 8 << 10            # bytes of stderr kept (the tail; the rest is read, dropped)
BACKENDS = ("bwrap", "unshare")
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": WORK, "TMPDIR": "/tmp",
       "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
PYTHON_FLAGS = ["-s", "-P"]      # no user site, no script dir on sys.path (the env is ours)

Result = namedtuple("Result", "returncode timed_out stdout stdout_over stderr wall_s peak_bytes "
                              "backend stdout_at")


class SandboxError(UserError):
    """No isolation is available: say what to install, or which flag accepts the risk."""


# -----------------------------------------------------------------------------
# what the sandbox shows: one mount plan for both backends

def _interpreter():
    """What the interpreter needs, at their real paths: (its executable, its standard library
    dirs, its shared libpython if it has one, the site-packages dir its `site` module reads)."""
    bp = os.path.realpath(sys.base_prefix)
    paths = sysconfig.get_paths(vars=dict(base=bp, platbase=bp, installed_base=bp,
                                          installed_platbase=bp))
    stdlib = sorted({os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")})
    so = os.path.join(sysconfig.get_config_var("LIBDIR") or "",
                      sysconfig.get_config_var("INSTSONAME") or "")
    shared = [os.path.realpath(so)] if os.path.isfile(so) else []
    return os.path.realpath(sys.executable), stdlib, shared, paths["purelib"]


def _allowed_packages():
    """The third-party packages benchmark programs may import: numpy (and its bundled libs)."""
    import importlib.util
    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        return []
    d = os.path.realpath(list(spec.submodule_search_locations)[0])
    return [p for p in (d, d + ".libs") if os.path.isdir(p)]


def _system_libs():
    """The shared-library directories: the multiarch ones where the system has them (Debian),
    else /lib and /usr/lib; the dynamic loader's dirs; their symlinks, as on the host."""
    arch = sysconfig.get_config_var("MULTIARCH")
    dirs = ([f"/lib/{arch}", f"/usr/lib/{arch}"] if arch and os.path.isdir(f"/usr/lib/{arch}")
            else ["/lib", "/usr/lib"]) + ["/lib64", "/usr/lib64"]
    binds, links = [], []
    for d in dirs:
        if not os.path.exists(d):
            continue
        top = "/" + d.strip("/").split("/")[0]
        if os.path.islink(top):                 # /lib -> usr/lib (merged /usr)
            links.append((os.readlink(top), top))
        real = os.path.realpath(d)
        if real not in binds:
            binds.append(real)
    return binds, sorted(set(links))


def mount_plan():
    """[(op, *args)] in order: ro (bind read-only), tmpfs (path, bytes), symlink (target, path),
    dev, proc. The interpreter's files sit at their own paths (its RUNPATH and prefix then
    hold); its site-packages is an empty tmpfs with only numpy bound in (a distribution's
    dist-packages elsewhere is not there at all)."""
    exe, stdlib, shared, site_dir = _interpreter()
    libs, links = _system_libs()
    plan = [("ro", d, d) for d in libs] + [("symlink", t, p) for t, p in links]
    plan += [("ro", p, p) for p in [exe, *stdlib, *shared] if not any(
        p.startswith(d + "/") for d in libs)]      # a libpython in the system's lib dir
    plan.append(("tmpfs", site_dir, 1 << 20))
    plan += [("ro", p, os.path.join(site_dir, os.path.basename(p))) for p in _allowed_packages()]
    if os.path.exists("/etc/ld.so.cache"):
        plan.append(("ro", "/etc/ld.so.cache", "/etc/ld.so.cache"))
    if os.geteuid() == 0 and shutil.which("setpriv"):
        plan.append(("ro", os.path.realpath(shutil.which("setpriv")), "/usr/bin/setpriv"))
    return plan + [("dev",), ("proc",), ("tmpfs", WORK, WORK_BYTES), ("tmpfs", "/tmp", TMP_BYTES)]


# -----------------------------------------------------------------------------
# seccomp: a classic BPF program, built here (no libseccomp needed)

DENIED = ("ptrace", "mount", "umount2", "pivot_root", "chroot", "acct", "swapon", "swapoff",
          "reboot", "init_module", "finit_module", "delete_module", "kexec_load", "add_key",
          "request_key", "keyctl", "unshare", "setns", "perf_event_open", "name_to_handle_at",
          "open_by_handle_at", "process_vm_readv", "process_vm_writev", "bpf", "userfaultfd",
          "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree", "move_mount",
          "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
          # two samples run at once bind the same host files (the interpreter, its libraries,
          # /dev/null): a lock or a watch on one is seen by the other, a channel between them
          "flock", "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init",
          "fanotify_mark")
# fcntl's commands that lock or watch (the same channel): F_GETLK, F_SETLK, F_SETLKW, their
# open-file-description forms, leases and dnotify
FCNTL_DENIED = (5, 6, 7, 36, 37, 38, 1024, 1025, 1026)
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYSCALLS = {   # name: (x86_64 from arch/x86/entry/syscalls, aarch64 from asm-generic)
    "ptrace": (101, 117), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "acct": (163, 89), "swapon": (167, 224), "swapoff": (168, 225),
    "reboot": (169, 142), "init_module": (175, 105), "delete_module": (176, 106),
    "kexec_load": (246, 104), "add_key": (248, 217), "request_key": (249, 218),
    "keyctl": (250, 219), "unshare": (272, 97), "perf_event_open": (298, 241),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "setns": (308, 268),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "finit_module": (313, 273),
    "bpf": (321, 280), "userfaultfd": (323, 282), "clone": (56, 220),
    # numbered alike on every architecture (the calls added since Linux 5.1)
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "clone3": (435, 435),
    "mount_setattr": (442, 442),
    "flock": (73, 32), "fcntl": (72, 25), "inotify_init": (253, None),   # aarch64 has only init1
    "inotify_init1": (294, 26), "inotify_add_watch": (254, 27), "fanotify_init": (300, 262),
    "fanotify_mark": (301, 263),
}
CLONE_NEW = 0x7E020080           # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET, NEWTIME
EPERM, ENOSYS = 1, 38


def seccomp_filter(machine=None):
    """The filter's bytes (struct sock_filter[]): DENIED fail with EPERM, clone with any
    namespace flag with EPERM, fcntl with a command of FCNTL_DENIED with EPERM, clone3 with
    ENOSYS (its flags sit in memory a filter cannot read; glibc then falls back to clone),
    another architecture's calls kill the process."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        raise SandboxError(f"no seccomp syscall table for {machine}: the sandbox is built for "
                           f"{', '.join(AUDIT_ARCH)}")
    arch, column = AUDIT_ARCH[machine], list(AUDIT_ARCH).index(machine)
    nrs = {name: numbers[column] for name, numbers in SYSCALLS.items()}
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    # (op, jump if true, jump if false, k), jumps by label (None: the next instruction)
    prog = [(LD, None, None, 4), (JEQ, None, "kill", arch), (LD, None, None, 0)]
    if machine == "x86_64":                  # the x32 ABI's numbers (bit 30), its own table
        prog.append((JGE, "eperm", None, 0x40000000))
    prog += [(JEQ, "eperm", None, nrs[n]) for n in DENIED if nrs[n] is not None]
    prog += [(JEQ, "enosys", None, nrs["clone3"]), (JEQ, "clone", None, nrs["clone"]),
             (JEQ, "fcntl", None, nrs["fcntl"]),
             ("allow", RET, 0x7FFF0000),
             ("clone", LD, 16),                        # args[0], low 32 bits: the flags
             (JSET, "eperm", "allow_clone", CLONE_NEW), ("allow_clone", RET, 0x7FFF0000),
             ("fcntl", LD, 24)]                        # args[1], low 32 bits: the command
    prog += [(JEQ, "eperm", None, cmd) for cmd in FCNTL_DENIED]
    prog += [("allow_fcntl", RET, 0x7FFF0000),
             ("enosys", RET, 0x50000 | ENOSYS), ("eperm", RET, 0x50000 | EPERM),
             ("kill", RET, 0x80000000)]      # every jump is forward, as BPF requires
    labels = {ins[0]: i for i, ins in enumerate(prog) if isinstance(ins[0], str)}
    out = []
    for i, ins in enumerate(prog):
        if isinstance(ins[0], str):
            out.append((ins[1], 0, 0, ins[2]))
            continue
        op, jt, jf, k = ins
        off = [0 if j is None else labels[j] - i - 1 for j in (jt, jf)]
        assert min(off) >= 0
        out.append((op, *off, k))
    return b"".join(struct.pack("=HBBI", *ins) for ins in out)


# -----------------------------------------------------------------------------
# the fallback's first process: as root in the new namespaces (or the mapped root of a user
# namespace when the caller is not root), build the new root from the plan, pivot into it, drop
# to NOBODY, load the seccomp filter, exec the interpreter.

LAUNCHER = r'''
import ctypes, json, os, struct, sys
plan, uid, filt, argv, env = json.loads(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
RDONLY, NOSUID, NODEV, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
def check(r, what):
    if r != 0:
        sys.exit("sandbox: %s: %s" % (what, os.strerror(ctypes.get_errno())))
def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + target)
check(libc.mount(None, b"/", None, ctypes.c_ulong(REC | PRIVATE), None), "private /")
fds = {op[1]: os.open(op[1], os.O_PATH) for op in plan if op[0] == "ro"}
for dev in ("null", "zero", "full", "random", "urandom"):
    fds["/dev/" + dev] = os.open("/dev/" + dev, os.O_PATH)
R = "/tmp"                      # the new root: a tmpfs over /tmp, in this namespace only
mount("tmpfs", R, "tmpfs", NOSUID | NODEV, "size=4m,mode=755")
def place(path, is_dir):
    full = R + path
    os.makedirs(full if is_dir else os.path.dirname(full), exist_ok=True)
    if not is_dir and not os.path.exists(full):
        open(full, "w").close()
    return full
def bind(fd, path, is_dir, flags):
    full = place(path, is_dir)
    mount("/proc/self/fd/%d" % fd, full, None, BIND | REC)
    mount(None, full, None, REMOUNT | BIND | flags)
for op in plan:
    if op[0] == "ro":
        bind(fds[op[1]], op[2], os.path.isdir("/proc/self/fd/%d" % fds[op[1]]), RDONLY | NOSUID | NODEV)
    elif op[0] == "symlink":
        os.makedirs(os.path.dirname(R + op[2]), exist_ok=True)
        os.symlink(op[1], R + op[2])
    elif op[0] == "tmpfs":
        mount("tmpfs", place(op[1], True), "tmpfs", NOSUID | NODEV, "size=%d,mode=%s" % (op[2], "1777" if op[1] in ("/w", "/tmp") else "755"))
    elif op[0] == "dev":
        for dev in ("null", "zero", "full", "random", "urandom"):
            bind(fds["/dev/" + dev], "/dev/" + dev, False, NOSUID)
    elif op[0] == "proc":
        mount("proc", place("/proc", True), "proc", NOSUID | NODEV | 8)
os.mkdir(R + "/.old")
mount(None, R, None, REMOUNT | RDONLY | NOSUID | NODEV)
os.chdir(R)
check(libc.syscall(155 if os.uname().machine == "x86_64" else 41, b".", b".old"), "pivot_root")
check(libc.umount2(b"/.old", 2), "umount the old root")
os.chdir("/w")
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
prog = ctypes.create_string_buffer(filt)
fprog = struct.pack("HxxxxxxP", len(filt) // 8, ctypes.addressof(prog))
check(libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0), "seccomp")
os.execve(argv[0], argv, env)
'''


def _command(backend, args, seccomp_fd):
    """The command line that runs the interpreter with `args` inside `backend`'s isolation."""
    root = os.geteuid() == 0
    argv = [_interpreter()[0], *PYTHON_FLAGS, *args]
    if backend == "bwrap":
        # as root: bwrap builds the namespaces and mounts with no user namespace, then setpriv
        # drops to NOBODY with no capabilities and no way back; as a user: a user namespace
        cmd = ["bwrap", *(["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                           "--unshare-cgroup-try"] if root else ["--unshare-all"]),
               "--die-with-parent", "--new-session", "--clearenv"]
        read_only, plan = [], mount_plan()
        # bwrap would give the parents it creates its source's modes (/root: 0700); the
        # unprivileged user must traverse them
        made = set()
        for op in plan:
            if op[0] in ("ro", "tmpfs"):
                parts = os.path.dirname(op[2] if op[0] == "ro" else op[1]).strip("/").split("/")
                for n in range(1, len(parts) + 1):
                    d = "/" + "/".join(parts[:n])
                    if parts[0] and d not in made:
                        made.add(d)
                        cmd += ["--perms", "0755", "--dir", d]
        for op in plan:
            if op[0] == "ro":
                cmd += ["--ro-bind", op[1], op[2]]
            elif op[0] == "symlink":
                cmd += ["--symlink", op[1], op[2]]
            elif op[0] == "tmpfs":
                cmd += ["--perms", "1777" if op[1] in (WORK, "/tmp") else "0755",
                        "--size", str(op[2]), "--tmpfs", op[1]]
                if op[1] not in (WORK, "/tmp"):
                    read_only.append(op[1])    # once what is bound into it is there
            else:
                cmd += [f"--{op[0]}", f"/{op[0]}"]
        for path in read_only:
            cmd += ["--remount-ro", path]
        for k, v in ENV.items():
            cmd += ["--setenv", k, v]
        drop = (["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] if root else [])
        return cmd + ["--chdir", WORK, "--seccomp", str(seccomp_fd), "--", *drop, *argv]
    if backend == "unshare":
        return (["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc",
                 "--uts", "--mount-proc", *([] if root else ["--user", "--map-root-user"]), "--",
                 sys.executable, "-I", "-c", LAUNCHER, json.dumps(mount_plan()),
                 str(NOBODY if root else -1), seccomp_filter().hex(), json.dumps(argv),
                 json.dumps(ENV)])
    return [sys.executable, *PYTHON_FLAGS, *args]   # none: no isolation at all


# -----------------------------------------------------------------------------
# one cgroup per program, under the caller's own

class TreeLimit:
    """A cgroup around one program's whole process tree: one memory cap and one process cap for
    all of it (an rlimit is per process: three children could each take the cap). cgroup v2
    where mounted, else v1's memory and pids controllers, each under the group this process is
    in; none when not permitted (the rlimits alone then)."""

    def __init__(self, mem_bytes, max_procs=MAX_PROCS):
        self.dirs, name = [], f"relay_eval_{os.getpid()}_{secrets.token_hex(4)}"
        own = {}
        try:
            for line in open("/proc/self/cgroup"):
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                for c in (ctrls.split(",") if ctrls else [""]):
                    own[c] = path
        except OSError:
            pass
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        plan = ([("/sys/fs/cgroup", own.get("", "/"), {"memory.max": mem_bytes,
                                                       "pids.max": max_procs})] if v2 else
                [("/sys/fs/cgroup/memory", own.get("memory", "/"),
                  {"memory.limit_in_bytes": mem_bytes}),
                 ("/sys/fs/cgroup/pids", own.get("pids", "/"), {"pids.max": max_procs})])
        try:
            for mount, path, limits in plan:
                parent = os.path.join(mount, path.lstrip("/"))
                if not os.path.isdir(parent):   # a cgroup namespace: the mount is our group
                    parent = mount
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


# -----------------------------------------------------------------------------
# choosing a backend

_WORKS = {}


def _backend_works(backend):
    """Whether `backend` can build its sandbox here (tried once per process: a kernel without
    unprivileged namespaces, or a container without the capability, fails here rather than
    mid-evaluation)."""
    if backend not in _WORKS:
        needs = {"bwrap": ["bwrap"] + (["setpriv"] if os.geteuid() == 0 else []),
                 "unshare": ["unshare"]}[backend]
        try:
            _WORKS[backend] = all(shutil.which(n) for n in needs) and run(
                ["-c", "print('ok')"], backend=backend, timeout=30).stdout == b"ok\n"
        except (OSError, SandboxError):
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


# -----------------------------------------------------------------------------
# running one program

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


def _drain(fd, keep, out, head=False, t0=None):
    """Read fd to its end, keeping the first (head) or last `keep` bytes: a program that floods
    its output cannot grow the evaluator's memory. out: [bytes, overflowed, arrivals]; with
    head, arrivals lists (bytes kept so far, seconds since t0) after each read: when each part
    of the output reached us, by our clock."""
    chunks, size, over, arrivals = [], 0, False, []
    t0 = time.time() if t0 is None else t0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        if head:
            take = chunk[:max(0, keep - size)]
            chunks.append(take)
            size += len(take)
            over |= len(take) < len(chunk)
            if take:
                arrivals.append((size, time.time() - t0))
        else:
            chunks.append(chunk)
            size += len(chunk)
            while size - len(chunks[0]) >= keep:       # the tail alone still holds `keep`
                size -= len(chunks.pop(0))
    data = b"".join(chunks)
    out += [data if head else data[-keep:], over, arrivals]


def _feed(fd, data):
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError:                     # it stopped reading (exited): nothing more to say
        pass


def run(args, stdin=b"", timeout=10.0, mem_bytes=1 << 30, backend="auto", max_stdout=64 << 20):
    """Run the interpreter with `args` in the sandbox (backend 'none': unprotected, in a fresh
    temporary directory). stdin: bytes written to it; stdout: kept up to max_stdout bytes
    (stdout_over says there was more); stderr: its last KEEP_STDERR bytes."""
    if backend == "auto":
        backend = choose_backend()
    limit = TreeLimit(mem_bytes)
    work = tempfile.mkdtemp(prefix="relay_eval_") if backend == "none" else None
    seccomp_r = None
    if backend == "bwrap":
        seccomp_r, w = os.pipe()
        os.write(w, seccomp_filter())
        os.close(w)
    runs_as = NOBODY if os.geteuid() == 0 and backend != "none" else os.getuid()
    nproc = _processes_of(runs_as) + 4 * MAX_PROCS

    def child_setup():
        os.setsid()                    # its own process group, killed as one
        limit.attach()
        # per process (memory, CPU, file size, no core dumps) and per user (processes: what the
        # sandbox's user runs already plus a margin; the cgroup's cap is tighter)
        for res, v in ((resource.RLIMIT_AS, mem_bytes), (resource.RLIMIT_CPU, int(timeout) + 1),
                       (resource.RLIMIT_FSIZE, WORK_BYTES), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, nproc)):
            resource.setrlimit(res, (v, v))

    t0, timed_out = time.time(), False
    try:
        proc = subprocess.Popen(_command(backend, args, seccomp_r), cwd=work or "/",
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=child_setup,
                                pass_fds=(seccomp_r,) if seccomp_r is not None else (),
                                env=dict(ENV, HOME=work) if work else dict(ENV))
    except BaseException:
        limit.close()
        if work:
            subprocess.run(["rm", "-rf", "--", work])
        raise
    finally:
        if seccomp_r is not None:
            os.close(seccomp_r)
    outs = {"stdout": [], "stderr": []}
    threads = [threading.Thread(target=_drain, args=(proc.stdout.fileno(), max_stdout,
                                                     outs["stdout"], True, t0), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr.fileno(), KEEP_STDERR,
                                                     outs["stderr"]), daemon=True),
               threading.Thread(target=_feed, args=(os.dup(proc.stdin.fileno()), stdin),
                                daemon=True)]
    proc.stdin.close()
    for t in threads:
        t.start()
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
    for t in threads:
        t.join(timeout=5)
    proc.stdout.close()
    proc.stderr.close()
    if work:                           # rm, not Python recursion: a 5,000-deep tree is fine
        subprocess.run(["rm", "-rf", "--", work])
    out, err = outs["stdout"] or [b"", False, []], outs["stderr"] or [b"", False, []]
    return Result(proc.returncode, timed_out, out[0], out[1], err[0], time.time() - t0, peak,
                  backend, out[2])
