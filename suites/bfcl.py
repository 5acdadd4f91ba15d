"""BFCL (Berkeley Function Calling Leaderboard) as a suite: its data and our own AST checker.

A suite like the others (tasks.py) with its own `check` and MAX_TURNS = 1: every
problem brings the functions it shows ("schemas"), there are no tools to run,
and the calls of the first turn are the answer. PROBLEMS cycles through the
categories (one of each, then the next of each), so the first n problems
hold about n/5 of every category: `--limit 100` scores 20 per category.

The data ships in the PyPI wheel `bfcl-eval` (installed --no-deps, only its
JSON files are read): bfcl_eval/data/BFCL_v4_<category>.json holds questions
and function docs, possible_answer/ the ground truth as
{function name: {parameter: [allowed values]}}.

Checker rules (following BFCL's AST checker, for Python):
* the number of calls equals the number of ground-truth calls; for
  `parallel` and `parallel_multiple` the calls may come in any order;
* each call names the right function and has every required parameter;
* no parameter outside the function's doc; an optional parameter may be left
  out when "" is among its allowed values;
* each value has the declared type (an int passes where a float is
  declared) and is among the allowed values; strings compare after
  lower-casing and removing spaces and the punctuation ,./-_*^; lists
  element by element; dicts key by key;
* `irrelevance`: correct when the model makes no call at all.
"""
import importlib.util
import json
import os
import re

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
TYPES = {"integer": int, "int": int, "float": float, "number": float, "string": str,
         "boolean": bool, "array": list, "tuple": list, "dict": dict, "object": dict}


def data_dir():
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None:
        raise FileNotFoundError("BFCL data needs the PyPI wheel bfcl-eval: "
                                "pip install --no-deps bfcl-eval  (or: make venv)")
    return os.path.join(spec.submodule_search_locations[0], "data")


def _read_jsonl(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"{path}, line {n}: not valid JSON") from None
    return rows


def load_bfcl(categories=CATEGORIES, limit=None):
    """Problems: {question, category, functions (schemas), ground_truth, teacher_tools}."""
    problems = []
    for cat in categories:
        rows = _read_jsonl(os.path.join(data_dir(), f"BFCL_v4_{cat}.json"))[:limit]
        answers = {}
        path = os.path.join(data_dir(), "possible_answer", f"BFCL_v4_{cat}.json")
        if os.path.exists(path):
            answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(path)}
        for r in rows:
            turn = r["question"][0]
            question = "\n".join(m["content"] for m in turn if m["role"] == "user")
            truth = answers.get(r["id"], [])
            problems.append({"id": r["id"], "category": cat, "question": question,
                             "schemas": r["function"], "ground_truth": truth,
                             "answer": "", "teacher_tools": sorted({next(iter(c)) for c in truth})})
    return problems


def _std(s):
    return re.sub(r"[ ,./\-_*^]", "", s.lower())


def value_ok(value, allowed, kind):
    """Is `value` of the declared type and among the allowed values?"""
    py = TYPES.get(kind)
    if py is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:       # a 310-digit integer: no float equals it
            return False
    if py is int and isinstance(value, bool) or py is float and isinstance(value, bool):
        return False
    if py is not None and not isinstance(value, py):
        return False
    for a in allowed:
        if a == "":
            continue
        if isinstance(value, str) and isinstance(a, str) and _std(value) == _std(a):
            return True
        if isinstance(value, list) and isinstance(a, list) and len(value) == len(a) and all(
                (_std(v) == _std(w)) if isinstance(v, str) and isinstance(w, str) else v == w
                for v, w in zip(value, a)):
            return True
        if isinstance(value, dict) and isinstance(a, dict) and _dict_ok(value, a):
            return True
        if not isinstance(value, (str, list, dict)) and value == a:
            return True
    return False


def _dict_ok(value, allowed):
    """A dict value against {key: [allowed values]}: known keys, allowed values, none missing."""
    if not set(value) <= set(allowed):
        return False
    for k, vals in allowed.items():
        vals = vals if isinstance(vals, list) else [vals]
        if k not in value:
            if "" not in vals:
                return False
        elif not value_ok(value[k], vals, None):
            return False
    return True


def call_ok(call, truth, schemas):
    """One model call {"name", "arguments"} against one ground truth {name: {param: [allowed]}}."""
    name, allowed = next(iter(truth.items()))
    if call.get("name") not in (name, name.replace(".", "_")):
        return False
    doc = next((s for s in schemas if s["name"] == name), None)
    if doc is None:
        return False
    props = doc["parameters"].get("properties", {})
    args = call.get("arguments") or {}
    if not isinstance(args, dict):
        return False
    for p in doc["parameters"].get("required", []):
        if p not in args:
            return False
    for p, v in args.items():
        if p not in props or p not in allowed:
            return False
        if not value_ok(v, allowed[p], props[p].get("type")):
            return False
    for p, vals in allowed.items():  # a parameter the answer needs but the model left out
        if p not in args and "" not in vals:
            return False
    return True


def check(calls, problem):
    """calls: [{"name", "arguments"}] the model made (parsed; None: unparsable). -> correct?"""
    if None in calls:
        return False
    truth = problem["ground_truth"]
    if problem["category"] == "irrelevance" or not truth:
        return not calls
    if len(calls) != len(truth):
        return False
    if problem["category"] in ("parallel", "parallel_multiple"):
        left = list(calls)
        for t in truth:  # order-free: each truth takes a distinct matching call
            hit = next((c for c in left if call_ok(c, t, problem["schemas"])), None)
            if hit is None:
                return False
            left.remove(hit)
        return True
    return all(call_ok(c, t, problem["schemas"]) for c, t in zip(calls, truth))


def _first(vals, kind=None):
    """The first allowed value of the declared type (dicts of allowed values materialised)."""
    for v in vals:
        if isinstance(v, dict):
            return {k: _first(w if isinstance(w, list) else [w]) for k, w in v.items()
                    if (w if isinstance(w, list) else [w]) != [""]}
        if v != "" and value_ok(v, [v], kind):
            return v
    return ""


def answer_as_calls(truth, schemas):
    """A ground truth turned into the calls a perfect model would make: for each parameter
    the first allowed value of the declared type, left out where only "" fits."""
    calls = []
    for t in truth:
        name, allowed = next(iter(t.items()))
        props = next((s for s in schemas if s["name"] == name), {}).get(
            "parameters", {}).get("properties", {})
        args = {p: _first(v, props[p].get("type")) for p, v in allowed.items() if p in props}
        calls.append({"name": name, "arguments": {p: v for p, v in args.items() if v != ""}})
    return calls


def interleave(problems):
    """Problems ordered category by category in turn: any prefix is balanced."""
    by = {}
    for p in problems:
        by.setdefault(p["category"], []).append(p)
    queues = list(by.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


TOOLS = []                      # each problem shows its own functions; none is run
MAX_TURNS = 1
PROBLEMS = interleave(load_bfcl())
