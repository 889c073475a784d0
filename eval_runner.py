"""
The one program that runs inside code_eval.py's sandboxes (standard library only; code_eval.py
hands this file's text to `python -c`). It never decides a verdict where a candidate's code has
run: it moves plain data in and out, and code_eval.py compares.

    reference  the canonical program, then the benchmark's own tests on it with the entry point
               recorded: every call's arguments and the canonical outputs (base); the canonical
               outputs on the plus inputs (plus)
    candidate  sanitise the sample, import it as module `candidate`, call the entry point on the
               recorded arguments and the plus inputs, write each output (or the type of what it
               raised) as plain data
    replay     the benchmark's tests again, in the canonical program's namespace (its helpers,
               its builtins), with the entry point answering from a candidate's decoded outputs:
               the tests' own assertions judge them, in a process no candidate code has entered

Request: one JSON object on stdin. Answer: JSON lines on stdout, which the program moves to
another descriptor before any benchmark or candidate code runs (their prints go to stderr).
"""
import ast
import collections
import hashlib
import json
import os
import re
import sys
import types
import warnings

MAX_DEPTH = 100                # nesting of one value, in and out
MAX_NODES = 5_000_000          # values in one output
DIGEST_OVER = 1 << 20          # an output whose encoding is longer crosses as its SHA-256


class NotPlain(Exception):
    """A value that is not plain data (or too deep, or too large) to cross a process boundary."""


# -----------------------------------------------------------------------------
# plain data: None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset and
# collections.Counter (MBPP/40 and /88 return one), checked by exact type (never isinstance or
# __eq__: a subclass or an object that equals everything is not plain). Arguments only, never
# outputs: an object of a class the benchmark's own program defines (MBPP/367's tree nodes)
# crosses as its attributes and arrives as a types.SimpleNamespace. JSON with tags: ints below 2**63 as JSON numbers, larger ones in hex (linear both ways,
# no digit limit), floats by float.hex (exact, nan and inf included), set elements sorted by
# their encoding (one text per value).

SMALL = 1 << 63
_Counter, _Namespace = collections.Counter, types.SimpleNamespace   # before any candidate runs

def encode(x, objects=False):
    """x as JSON-ready tagged data; objects: let benchmark-defined objects cross (arguments)."""
    budget = [MAX_NODES]

    def enc(v, depth):
        budget[0] -= 1
        if depth > MAX_DEPTH or budget[0] < 0:
            raise NotPlain("nested deeper than %d or larger than %d values" % (MAX_DEPTH, MAX_NODES))
        t = type(v)
        if v is None or t is bool or t is str or t is int and -SMALL < v < SMALL:
            return v
        if t is int:
            return {"i": hex(v)}
        if t is float:
            return {"f": v.hex()}
        if t is bytes:
            return {"y": v.hex()}
        if t is list:                   # scalars inline: a million-int list in about a second
            budget[0] -= len(v)
            return [e if type(e) is str or type(e) is int and -SMALL < e < SMALL
                    else enc(e, depth + 1) for e in v]
        if t is tuple:
            return {"t": [enc(e, depth + 1) for e in v]}
        if t is dict:
            return {"d": [[enc(k, depth + 1), enc(e, depth + 1)] for k, e in v.items()]}
        if t is complex:
            return {"c": [v.real.hex(), v.imag.hex()]}
        if t is _Counter:
            return {"C": [[enc(k, depth + 1), enc(e, depth + 1)] for k, e in v.items()]}
        if objects and t.__module__ == "reference" and type(getattr(v, "__dict__", None)) is dict:
            return {"n": [[k, enc(e, depth + 1)] for k, e in vars(v).items()]}
        if t is set or t is frozenset:
            items = sorted((enc(e, depth + 1) for e in v), key=_text)
            return {"s" if t is set else "z": items}
        raise NotPlain("a %s.%s is not plain data" % (t.__module__, t.__qualname__))
    return enc(x, 0)


def _text(node):
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def digest(node):
    return hashlib.sha256(_text(node).encode("utf-8", "surrogatepass")).hexdigest()


def answer(value):
    """["ok", encoded], or ["digest", SHA-256 of the encoding] when that is over DIGEST_OVER
    (HumanEval+ has outputs of 300 MB in all): a large output must then equal the reference's
    exactly, and a forged digest is no easier than the right answer."""
    node = encode(value)
    text = _text(node)
    if len(text) > DIGEST_OVER:
        return ["digest", hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()]
    return ["ok", node]


def decode(node, objects=False):
    """encode's inverse. Anything else (a forged line) raises ValueError: the evaluator calls
    this on what a candidate's process wrote (objects=False: no namespaces)."""
    def dec(n, depth):
        if depth > MAX_DEPTH:
            raise ValueError("nested deeper than %d" % MAX_DEPTH)
        t = type(n)
        if n is None or t is bool or t is str or t is int and -SMALL < n < SMALL:
            return n
        if t is list:
            return [dec(e, depth + 1) for e in n]
        if t is not dict or len(n) != 1:
            raise ValueError("not an encoded value")
        (tag, v), = n.items()
        if tag == "c" and type(v) is list and len(v) == 2 and all(type(p) is str for p in v):
            return complex(float.fromhex(v[0]), float.fromhex(v[1]))
        if tag in ("i", "f", "y") and type(v) is not str:
            raise ValueError("not an encoded value")
        if tag == "i":
            return int(v, 16)
        if tag == "f":
            return float.fromhex(v)
        if tag == "y":
            return bytes.fromhex(v)
        if type(v) is not list:
            raise ValueError("not an encoded value")
        if tag == "t":
            return tuple(dec(e, depth + 1) for e in v)
        if tag in ("d", "C", "n"):
            if not all(type(kv) is list and len(kv) == 2 for kv in v):
                raise ValueError("not an encoded mapping")
            if tag == "n":
                if not objects or not all(type(k) is str for k, _ in v):
                    raise ValueError("not an encoded value")
                return _Namespace(**{k: dec(e, depth + 1) for k, e in v})
            d = {dec(k, depth + 1): dec(e, depth + 1) for k, e in v}
            return _Counter(d) if tag == "C" else d
        if tag == "s":
            return {dec(e, depth + 1) for e in v}
        if tag == "z":
            return frozenset(dec(e, depth + 1) for e in v)
        raise ValueError("unknown tag %r" % tag)
    return dec(node, 0)


# -----------------------------------------------------------------------------
# sanitising, as EvalPlus does: the imports, and the top-level functions, classes and plain
# assignments the entry point reaches, in their order, as written. Only ever run in here:
# parsing hostile text can take deep recursion, much memory or long time, all bounded by the
# sandbox and its timeout.

def _parse(code):
    with warnings.catch_warnings():     # no SyntaxWarnings for '\w' in benchmark strings
        warnings.simplefilter("ignore")
        return ast.parse(code)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _lines(code):
    """code's lines as Python's tokenizer counts them, each with its end: only \\n, \\r\\n and
    \\r end a line (str.splitlines also splits at a form feed, U+2028, NEL and more, which may
    stand inside a string literal)."""
    return _LINE.findall(code)


def _parse_prefix(code):
    """The longest prefix of `code`, in whole lines, that parses (a completion cut off by the
    token budget usually ends mid-statement). Each failure cuts before the line the parser
    stopped at, so text after a first error costs one parse, not one per line."""
    if "\0" in code:                    # no prefix holding a NUL parses
        lines = _lines(code[:code.index("\0")])
        code = "".join(lines if lines and lines[-1].endswith(("\n", "\r")) else lines[:-1])
    lines = _lines(code)
    n = len(lines)
    while n > 0:
        text = "".join(lines[:n])
        text += "" if text.endswith(("\n", "\r")) else "\n"
        try:
            return text, _parse(text)
        except SyntaxError as e:
            n = min(n - 1, (e.lineno or n) - 1)
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


def sanitize(code, entry_point):
    """Every other top-level statement goes (a __main__ block, prints, calls, input())."""
    code, tree = _parse_prefix(code)
    lines = _lines(code)
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
    keep, frontier = set(), {entry_point}
    while frontier:                             # the dependency closure of the entry point
        new = {node for node, names in defines.items() if node not in keep and names & frontier}
        keep |= new
        frontier = set().union(*(used[node] for node in new)) if new else set()
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or node in keep:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            out.append("".join(lines[first - 1:node.end_lineno]))
    return "".join(part if part.endswith(("\n", "\r")) else part + "\n" for part in out) or "\n"


# -----------------------------------------------------------------------------
# the three modes

def _module(source, name):
    ns = {"__name__": name}
    exec(compile(source, name + ".py", "exec"), ns)
    return ns


def _raised(e):
    return ["raise", type(e).__name__]


def _run_tests(test, ns):
    """The benchmark's tests in a copy of the program's namespace (the entry point's own
    recursive calls keep reaching the real function), with a fixed random stream: HumanEval/38
    draws its inputs from `random` unseeded, and replay must draw the same ones."""
    import random
    random.seed(0)
    exec(compile(test, "tests.py", "exec"), ns)


def reference(req, emit):
    ns = _module(req["program"], "reference")
    fn, calls = ns[req["entry_point"]], []

    def recorder(*args, **kwargs):
        line = {"call": encode([list(args), kwargs], objects=True)}   # before fn may mutate them
        calls.append(line)
        try:
            out = fn(*args, **kwargs)
        except BaseException as e:
            line["out"] = _raised(e)
            raise
        line["out"] = answer(out)
        return out
    if req["test"].strip():
        _run_tests(req["test"], dict(ns, **{req["entry_point"]: recorder}))
    for line in calls:
        emit(line)
    for x in req["inputs"]:
        try:
            emit({"plus": answer(fn(*decode(x)))})
        except NotPlain:
            raise
        except BaseException as e:
            emit({"plus": _raised(e)})


def candidate(req, emit):
    code = sanitize(req["code"], req["entry_point"])
    with open("candidate.py", "w") as f:
        f.write(code)
    sys.path.insert(0, os.getcwd())
    import importlib
    fn = getattr(importlib.import_module("candidate"), req["entry_point"])
    for i, call in enumerate(req["calls"]):
        args, kwargs = decode(call, objects=True)
        try:
            out = answer(fn(*args, **kwargs))
        except NotPlain as e:
            out = ["not plain", str(e)]
        except BaseException as e:      # SystemExit and KeyboardInterrupt too: its answer
            out = _raised(e)
        emit({"i": i, "out": out})


class Raised(Exception):
    """What the tests see where the candidate raised an exception that is not a builtin."""


def replay(req, emit):
    import builtins
    ns = _module(req["program"], "reference")
    calls, outs, done = req["calls"], req["outputs"], [0]

    def answer(*args, **kwargs):
        i = done[0]
        if i >= len(calls) or _text(encode([list(args), kwargs], objects=True)) != _text(calls[i]):
            raise AssertionError("the tests called %s differently than in the reference run "
                                 "(call %d)" % (req["entry_point"], i))
        done[0] += 1
        kind, v = outs[i]
        if kind == "ok":
            return decode(v)
        if kind == "digest":            # large: the canonical's own output, if it is that
            if v == req["reference_outputs"][i][1]:
                return ns[req["entry_point"]](*args, **kwargs)
            raise AssertionError("call %d: an output over %d bytes that is not the reference's"
                                 % (i, DIGEST_OVER))
        cls = getattr(builtins, str(v), None)
        raise (cls if isinstance(cls, type) and issubclass(cls, BaseException) else Raised)(v)
    _run_tests(req["test"], dict(ns, **{req["entry_point"]: answer}))
    if done[0] != len(calls):
        raise AssertionError("the tests made fewer calls than in the reference run")
    emit({"passed": True})


def references(req, emit):
    """reference() for many problems in one process (the canonical code is trusted); each
    problem's lines carry its index, and a problem that fails does not stop the others."""
    for k, sub in enumerate(req["problems"]):
        try:
            reference(sub, lambda obj: emit(dict(obj, p=k)))
            emit({"p": k, "done": True})
        except Exception as e:          # noqa: BLE001 -- that problem's own failure
            emit({"p": k, "error": ("%s: %s" % (type(e).__name__, e))[:300]})


MODES = {"reference": reference, "references": references, "candidate": candidate,
         "replay": replay}


def main():
    sys.setrecursionlimit(10_000)
    out = os.fdopen(os.dup(1), "w")           # the answer's channel, before any program runs
    os.dup2(2, 1)                             # the programs' prints: stderr (its tail is kept)
    req = json.loads(sys.stdin.read())
    sys.stdin.close()

    def emit(obj):
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()
    try:
        MODES[sys.argv[1]](req, emit)
    except BaseException as e:
        tb, where = e.__traceback__, ""
        while tb is not None:               # the benchmark's line that failed, if any
            if tb.tb_frame.f_code.co_filename == "tests.py":
                where = " (tests line %d)" % tb.tb_lineno
            tb = tb.tb_next
        emit({"error": ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")[:300] + where})
        out.flush()
        os._exit(1)
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
