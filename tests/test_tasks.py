import json

import pytest

from tasks import SuiteError, answers_match, extract_boxed, load_suite, parse_number


@pytest.mark.parametrize("pred,gold", [
    ("3", "3"), ("3.0", "3"), ("3.00", "3"), ("1/2", "0.5"), ("\\frac{1}{2}", "0.5"),
    ("$1,200", "1200"), ("1,200", "1200"), ("4.02336", "4.0234"), ("-2", "-2.0"),
    ("The Eiffel Tower.", "eiffel tower"), ("12 ", "12"),
])
def test_answers_that_match(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("3.4", "3"), ("4.02", "4.0234"), ("5", "3"), ("", "3"), (None, "3"), ("paris", "london"),
    ("1,2", "12"),
])
def test_answers_that_do_not(pred, gold):
    assert not answers_match(pred, gold)


def test_extract_boxed_takes_the_last_and_handles_nesting():
    assert extract_boxed("first \\boxed{1}, then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_boxed("no box here") is None
    assert extract_boxed("\\boxed{unclosed") is None
    assert parse_number("abc") is None


def test_math_suite_is_well_formed_and_splits_are_disjoint(math_suite):
    assert len(math_suite.tools) == 12
    train, test = math_suite.split("train"), math_suite.split("test")
    assert len(train) >= 1000 and len(test) >= 200
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    from suites.math import MAX_CALLS
    for split in (train, test):        # every size from 1 call to MAX_CALLS, nothing longer
        assert {len(p["solution"]) for p in split} == set(range(1, MAX_CALLS + 1))


def test_reference_solutions_reach_the_gold_answer(math_suite):
    """Running each problem's tool calls through the tools reproduces its answer."""
    from tools import execute_tool_call
    import json
    for p in math_suite.problems[:300]:
        for call in p["solution"]:
            _, resp = execute_tool_call(json.dumps(call), math_suite.tools)
            assert "error" not in json.loads(resp), (p, call, resp)
        assert answers_match(str(json.loads(resp)["result"]), p["answer"]), p
        assert set(p["teacher_tools"]) == {c["name"] for c in p["solution"]}


def test_bring_your_own_suite(tmp_path):
    path = tmp_path / "my_suite.py"
    path.write_text('''
def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: The text.
    """
    return text.upper()

TOOLS = [shout]
PROBLEMS = [{"question": f"Shout word {i}", "answer": f"WORD{i}", "teacher_tools": ["shout"]}
            for i in range(50)]
''')
    suite = load_suite(str(path))
    assert list(suite.tools) == ["shout"]
    assert suite.schemas[0]["function"]["parameters"]["properties"]["text"]["type"] == "string"
    assert len(suite.split("train")) + len(suite.split("test")) == 50
    assert suite.split("test")  # the hash split puts some problems in test


def test_bad_suites_name_the_problem(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('TOOLS = []\nPROBLEMS = [{"question": "q", "answer": "1", "teacher_tools": []},'
                   ' {"question": "q2", "teacher_tools": []}]\n')
    with pytest.raises(SuiteError, match=r"PROBLEMS\[1\] lacks 'answer'"):
        load_suite(str(bad))
    with pytest.raises(SuiteError, match="not found"):
        load_suite(str(tmp_path / "missing.py"))
    with pytest.raises(SuiteError, match="unknown suite"):
        load_suite("chess")


def test_a_problems_jsonl_beside_its_tools_file_is_a_suite(tmp_path):
    """--suite my_suite.jsonl: the problems one a line, TOOLS from my_suite.py beside it; a bad
    line is one SuiteError naming it."""
    (tmp_path / "my_suite.py").write_text(
        "def add(a: int, b: int) -> int:\n    \"\"\"Add.\n\n    Args:\n        a: One.\n"
        "        b: Two.\n    \"\"\"\n    return a + b\n\nTOOLS = [add]\n")
    rows = [{"question": f"{a} + 1?", "answer": str(a + 1), "teacher_tools": ["add"]}
            for a in range(5)]
    path = tmp_path / "my_suite.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = load_suite(str(path))
    assert [p["question"] for p in suite.problems] == [r["question"] for r in rows]
    assert set(suite.tools) == {"add"}
    path.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(SuiteError, match="line 2"):
        load_suite(str(path))
    (tmp_path / "my_suite.py").unlink()
    with pytest.raises(SuiteError, match="my_suite.py"):
        load_suite(str(path))
