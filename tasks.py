"""Task suites (tools + problems) and answer checking.

A suite is a plain Python module with two names:

    TOOLS     typed functions with Google-style docstrings; their JSON schemas
              are generated with transformers.utils.get_json_schema
    PROBLEMS  dicts with "question", "answer" (a string) and "teacher_tools"
              (the tool names a reference solution uses); optional "split"
              ("train"/"test", else a stable hash of the question picks one) and
              "schemas" (tools shown for this problem only, as BFCL's entries bring)

and two optional ones:

    check(calls, problem) -> bool   scores the parsed tool calls instead of the
                                    boxed answer (BFCL: the calls are the answer)
    MAX_TURNS                       assistant turns per rollout (BFCL: 1)

`load_suite("math")` loads the built-in suites/math.py; `load_suite("path/to/my_suite.py")`
loads yours, and works everywhere a built-in name does (--suite). Problems may also live in a
JSONL file, one problem a line, beside a .py of the same name that holds TOOLS:
`load_suite("path/to/my_suite.jsonl")` reads both.

Answers: the last \\boxed{...} of a response is its answer. Numbers compare as
numbers (3 = 3.0 = 3.00, 1/2 = 0.5, "$1,200" = 1200) and a gold written with d
decimals accepts anything that rounds to it (4.02336 matches 4.0234); other
answers compare after lower-casing and removing punctuation, articles and
extra spaces.
"""
import hashlib
import importlib
import os
import random
import re
import string
from dataclasses import dataclass, field

from transformers.utils import get_json_schema

from suites import SuiteError, suite_file
from tools import parse_tool_calls

SUITES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suites")
BUILTIN_SUITES = sorted(f[:-3] for f in os.listdir(SUITES_DIR)
                        if f.endswith(".py") and not f.startswith("_"))
TEST_FRACTION = 0.2  # for suites whose problems carry no "split"


@dataclass
class Suite:
    name: str
    tools: dict                      # name -> function
    problems: list                   # dicts: question, answer, teacher_tools, ...
    schemas: list = field(default_factory=list)  # JSON schemas shown to the model
    check: object = None             # check(calls, problem) -> bool, else the boxed answer counts
    max_turns: int = None            # the suite's own limit on assistant turns

    def split(self, which):
        """Problems of the "train" or "test" split."""
        return [p for p in self.problems if problem_split(p) == which]

    def valid_tools(self, problem):
        """The one definition of a valid tool, used by the reward and the metrics alike: a tool
        shown to this problem (its own "schemas", else the suite's TOOLS). A name the model
        calls outside this set is a hallucination, even if another problem shows it."""
        return shown_tool_names(problem, self.tools)

    def is_correct(self, rollout):
        """The one definition of correct, for the reward and the metrics: the suite's check of
        the parsed calls where it has one (BFCL: the calls are the answer), else the last
        \\boxed{} answer against the gold (answers_match)."""
        if self.check:
            return bool(self.check(parse_tool_calls("".join(rollout.turns)), rollout.problem))
        return answers_match(rollout.answer, rollout.problem["answer"])


def shown_tool_names(problem, default):
    """Names of the tools a problem shows: its own schemas' names, else `default`'s."""
    if "schemas" in problem:
        return {s.get("function", s)["name"] for s in problem["schemas"]}
    return set(default)


def problem_split(p):
    if "split" in p:
        return p["split"]
    h = int(hashlib.sha1(p["question"].encode()).hexdigest(), 16) % 1000
    return "test" if h < TEST_FRACTION * 1000 else "train"


def unique_problems(make_problem, n, seed):
    """n problems with distinct questions from a generator make_problem(rng), seeded."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        p = make_problem(rng)
        if p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
    return out


def load_suite(name_or_path):
    """A built-in suite's name, a suite .py file, or a problems .jsonl beside its tools .py
    -> Suite; a file that does not load raises SuiteError naming the file (and line)."""
    if name_or_path in BUILTIN_SUITES:
        try:
            module = importlib.import_module("suites." + name_or_path)
        except FileNotFoundError as e:     # a suite whose data is not installed (BFCL's wheel)
            raise SuiteError(f"suite {name_or_path}: {e}") from None
    elif name_or_path.endswith((".py", ".jsonl")):
        module = suite_file(name_or_path)                # suites/__init__.py
    else:
        raise SuiteError(f"unknown suite '{name_or_path}': use one of "
                         f"{BUILTIN_SUITES}, a suite .py file or a problems .jsonl")
    return suite_from_module(name_or_path, module)


def suite_from_module(name, module):
    """Check TOOLS and PROBLEMS and build a Suite, naming the first bad entry."""
    tools = getattr(module, "TOOLS", None)
    problems = getattr(module, "PROBLEMS", None)
    if not isinstance(tools, (list, tuple)) or not all(callable(t) for t in tools):
        raise SuiteError(f"suite {name}: TOOLS must be a list of functions")
    if not isinstance(problems, (list, tuple)) or not problems:
        raise SuiteError(f"suite {name}: PROBLEMS must be a non-empty list of dicts")
    names = {t.__name__ for t in tools}
    for i, p in enumerate(problems):
        if not isinstance(p, dict):
            raise SuiteError(f"suite {name}: PROBLEMS[{i}] is not a dict")
        for key in ("question", "answer", "teacher_tools"):
            if key not in p:
                raise SuiteError(f"suite {name}: PROBLEMS[{i}] lacks '{key}'")
        if not isinstance(p["answer"], str):
            raise SuiteError(f"suite {name}: PROBLEMS[{i}]['answer'] must be a string")
        unknown = set(p["teacher_tools"]) - shown_tool_names(p, names)
        if unknown:
            raise SuiteError(f"suite {name}: PROBLEMS[{i}] names unknown tools {sorted(unknown)}")
    try:
        schemas = [get_json_schema(t) for t in tools]
    except Exception as e:  # transformers raises its own error type for bad docstrings
        raise SuiteError(f"suite {name}: cannot build a tool schema: {e}") from None
    check = getattr(module, "check", None)
    if check is not None and not callable(check):
        raise SuiteError(f"suite {name}: check must be a function check(calls, problem)")
    return Suite(name, {t.__name__: t for t in tools}, list(problems), schemas, check,
                 getattr(module, "MAX_TURNS", None))


# ----------------------------------------------------------------------------
# Answer checking

def extract_boxed(text):
    """Content of the last \\boxed{...} (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unclosed


_FRAC = re.compile(r"^\\d?frac\{([^{}]+)\}\{([^{}]+)\}$")


def parse_number(s):
    """'$1,200' -> 1200.0, '1/2' -> 0.5, '\\frac{3}{4}' -> 0.75, '50%' stays 50; else None."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s.strip())
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").strip()
    s = s.replace("\\!", "").replace("{,}", "")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = _FRAC.match(s) or re.fullmatch(r"([-+]?[\d.]+)\s*/\s*([-+]?[\d.]+)", s)
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _decimals(gold):
    m = re.fullmatch(r"\s*[-+]?\$?[\d,]*\.(\d+)\s*", gold)
    return len(m.group(1)) if m else None


def normalize_text(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def answers_match(pred, gold):
    """True when the predicted answer equals the gold one (see the module docstring)."""
    if pred is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        if abs(p - g) <= 1e-9 * max(1.0, abs(g)):
            return True
        d = _decimals(gold)  # gold written with d decimals: accept what rounds to it
        return d is not None and abs(p - g) <= 0.5 * 10 ** -d + 1e-12
    if g is not None:
        return False  # a numeric gold needs a number ("1,2" is not 12)
    return normalize_text(pred) == normalize_text(gold) != ""
