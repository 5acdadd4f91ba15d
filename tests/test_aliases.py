"""experiments/suite_math_aliases.py (the math suite under other tool names, a warm-start
experiment) and what it needs of train.py: an SFT prompt shows the problem's own tools."""
import dataclasses
import json
import os

import pytest

from rollout import encode_prompt
from tasks import answers_match, extract_boxed, load_suite
from teacher import reference_messages
from tools import execute_tool_call

ALIASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "suite_math_aliases.py")


@pytest.fixture(scope="module")
def aliases():
    return load_suite(ALIASES)


def test_every_problem_shows_one_name_per_math_tool_and_its_solution_still_solves_it(
        aliases, math_suite):
    import suites.math as base
    pool = {a: f.__wrapped__.__name__ for a, f in aliases.tools.items()}   # alias -> math tool
    assert [p["question"] for p in aliases.problems] == [p["question"] for p in math_suite.problems]
    assert aliases.split("test") and len(aliases.split("test")) == len(math_suite.split("test"))
    renamed = 0
    for p, orig in zip(aliases.problems, math_suite.problems):
        shown = [s["name"] for s in p["schemas"]]
        assert sorted(pool[n] for n in shown) == sorted(t.__name__ for t in base.TOOLS)
        assert set(p["teacher_tools"]) <= set(shown)
        assert [pool[c["name"]] for c in p["solution"]] == [c["name"] for c in orig["solution"]]
        renamed += any(c["name"] != pool[c["name"]] for c in p["solution"])
        msgs = reference_messages(p, aliases.tools)
        for m in msgs[1::2]:                         # every tool response is a result
            assert "result" in json.loads(m["content"]), m
        assert answers_match(extract_boxed(msgs[-1]["content"]), p["answer"]), p
    assert renamed > len(aliases.problems) / 2       # most problems do not use the paper's names


def test_alias_names_are_not_the_out_of_domain_tools(aliases):
    for ood in ("shop", "dates", "lookup", "units", "retrieval"):
        assert not set(aliases.tools) & set(load_suite(ood).tools)


def test_an_alias_is_the_same_tool_with_the_same_checks(aliases):
    assert execute_tool_call('{"name": "quotient", "arguments": {"a": 9, "b": 3}}',
                             aliases.tools)[1] == '{"name": "quotient", "result": 3}'
    assert "division by zero" in execute_tool_call(
        '{"name": "split_evenly", "arguments": {"a": 9, "b": 0}}', aliases.tools)[1]


def test_sft_prompts_show_the_problem_s_own_tools(aliases, student):
    """teacher.trajectories (train.py's SFT data) encodes each problem with its `schemas`, as a rollout
    does; before, every SFT prompt showed the suite's whole tool list."""
    from teacher import trajectories
    tok, _ = student
    few = dataclasses.replace(aliases, problems=aliases.split("train")[:3])
    rows = trajectories("reference", few, tok)
    for (prompt, _, _), p in zip(rows, few.problems):
        assert prompt == encode_prompt(tok, p["question"], p["schemas"])
        assert prompt != encode_prompt(tok, p["question"], aliases.schemas)

