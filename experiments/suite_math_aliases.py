"""An experiment on the warm start: the `math` suite with its tools under other names.

    python train.py --preset cpu --method sft --steps 18 --eval-n 0 \
        --suite experiments/suite_math_aliases.py --out runs/warm-alias
    python evaluate.py --model runs/warm-alias --suite math,shop,dates,lookup --trained-on math \
        --max-new-tokens 64 --max-total-tokens 192

Why: after SFT on `math`, the 135M student calls `divide` on a date question whatever
tools its prompt lists, even when the question names the tool to use or the prompt lists
that one tool alone (README, "How much of that is luck of the warm start"). It learned
twelve names, not to read
a tool list. Here every problem lists the twelve calculator tools under names drawn for
that problem (`divide` may be `quotient`, `split_evenly`, ...; the paper's name among
them) in a shuffled order, and its reference solution calls them by those names, so a
student that imitates it has to read the list to name a tool. The problems, the answers
and the splits are `math`'s own; no alias is the name of an out-of-domain suite's tool
(tests/test_aliases.py). Not the paper's set-up: a warm-start variant to measure.
"""
import functools
import random

from transformers.utils import get_json_schema

from suites import math as base

ALIASES = {
    "add": ["add", "plus", "add_numbers", "sum_two", "increase_by"],
    "subtract": ["subtract", "minus", "take_away", "difference", "decrease_by"],
    "multiply": ["multiply", "times", "multiplied", "multiply_numbers", "scale_by"],
    "divide": ["divide", "quotient", "divide_numbers", "split_evenly", "ratio"],
    "sum_numbers": ["sum_numbers", "total", "sum_list", "add_all", "list_sum"],
    "floor": ["floor", "round_down", "floor_number", "int_down", "whole_part"],
    "ceil": ["ceil", "round_up", "ceiling", "ceil_number", "int_up"],
    "round_number": ["round_number", "round_to", "nearest", "round_off", "rounded"],
    "power": ["power", "pow", "raise_to", "exponentiate", "to_the_power"],
    "sqrt": ["sqrt", "square_root", "root", "sqrt_number", "root_two"],
    "abs_value": ["abs_value", "absolute", "abs", "magnitude", "abs_number"],
    "modulo": ["modulo", "remainder", "mod", "leftover", "remainder_of"],
}
BY_NAME = {t.__name__: t for t in base.TOOLS}


def alias(tool, name):
    """The same tool (signature, docstring, checks) under another name."""
    @functools.wraps(tool)
    def call(*args, **kwargs):
        return tool(*args, **kwargs)
    call.__name__ = call.__qualname__ = name
    return call


TOOLS = [alias(BY_NAME[t], a) for t, names in ALIASES.items() for a in names]
SCHEMA = {t.__name__: get_json_schema(t)["function"] for t in TOOLS}   # as BFCL's


def renamed(problem, rng):
    names = {t: rng.choice(a) for t, a in ALIASES.items()}
    shown = list(names.values())
    rng.shuffle(shown)
    solution = [dict(c, name=names[c["name"]]) for c in problem["solution"]]
    return dict(problem, schemas=[SCHEMA[n] for n in shown], solution=solution,
                teacher_tools=sorted({names[t] for t in problem["teacher_tools"]}))


_rng = random.Random(5)
PROBLEMS = [renamed(p, _rng) for p in base.PROBLEMS]
