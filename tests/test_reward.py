"""Every row of the reward table in docs/paper.md, worked out by hand."""
import pytest

from reward import reward, tool_f1

V = {"add", "multiply", "divide"}


def r(variant, *, truncated=False, answer="7", correct=True, called=("add",), teacher=("add",)):
    return reward(variant, truncated=truncated, answer=answer, correct=correct,
                  called=list(called), valid_tools=V, teacher_tools=list(teacher))


@pytest.mark.parametrize("variant", ["mentor", "sparse", "partial", "no_tool_match", "f1"])
def test_truncated_is_zero_and_missing_box_is_point_one(variant):
    assert r(variant, truncated=True)[0] == 0.0
    assert r(variant, answer=None)[0] == 0.1
    assert r(variant, answer="")[0] == 0.1   # empty \boxed{}


def test_mentor_table():
    assert r("mentor") == (1.1, {"answer": 0.7, "tool": 0.3, "no_hallucination": 0.1})
    # wrong answer, teacher's exact tools, no hallucination: 0.06 + 0.1
    assert r("mentor", correct=False)[0] == pytest.approx(0.16)
    assert r("mentor", correct=False)[1]["tool"] == pytest.approx(0.06)
    # right answer without any tool call: 0.7 + 0.1
    assert r("mentor", called=())[0] == pytest.approx(0.8)
    # a superset of the teacher's tools is not an exact match
    assert r("mentor", called=("add", "multiply"))[0] == pytest.approx(0.8)
    # hallucinated tool name: loses the 0.1, the valid part still matches
    assert r("mentor", called=("add", "calculator"))[0] == pytest.approx(1.0)
    # wrong and hallucinating, no valid tool
    assert r("mentor", correct=False, called=("calculator",))[0] == pytest.approx(0.0)
    # unparsable call (None) is neither valid nor hallucinated
    assert r("mentor", called=("add", None))[0] == pytest.approx(1.1)


def test_sparse():
    assert r("sparse")[0] == 1.0
    assert r("sparse", correct=False)[0] == 0.1


def test_partial_match_has_no_hallucination_term():
    assert r("partial", called=("add", "multiply"), teacher=("add", "divide"))[0] == pytest.approx(1.0)
    assert r("partial", called=("multiply",), teacher=("add",))[0] == pytest.approx(0.7)
    assert r("partial", correct=False, called=("add", "calculator"))[0] == pytest.approx(0.06)


def test_no_tool_match():
    assert r("no_tool_match")[0] == pytest.approx(0.8)
    assert r("no_tool_match", called=("calculator",))[0] == pytest.approx(0.7)


def test_f1():
    # S = {add, multiply}, T = {add, divide}: P = R = 1/2, F1 = 1/2 -> 0.7 + 0.15 + 0.1
    assert tool_f1({"add", "multiply"}, {"add", "divide"}) == pytest.approx(0.5)
    assert r("f1", called=("add", "multiply"), teacher=("add", "divide"))[0] == pytest.approx(0.95)
    assert r("f1", correct=False, called=("add", "multiply"), teacher=("add", "divide"))[0] \
        == pytest.approx(0.2 * 0.15 + 0.1)


def test_empty_teacher_set_matches_a_student_without_tools():
    assert r("mentor", called=(), teacher=())[0] == pytest.approx(1.1)
    assert r("mentor", called=("add",), teacher=())[0] == pytest.approx(0.8)
    assert r("f1", called=(), teacher=())[0] == pytest.approx(1.1)
    assert r("partial", called=(), teacher=())[0] == pytest.approx(1.0)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown reward"):
        r("dense")


def test_valid_tools_are_the_ones_shown_to_the_problem(math_suite):
    """compute_reward and the metrics share one definition (tasks.Suite.valid_tools): a problem
    shown only `add` whose correct rollout calls add and multiply hallucinated multiply, so
    S = {add} = T: 0.7 + 0.3 + 0 = 1.0 (scoring against the suite's tools gave 0.8)."""
    from evaluate import tool_use_per_problem
    from reward import compute_reward
    from rollout import Rollout
    add = next(s for s in math_suite.schemas if s["function"]["name"] == "add")
    problem = {"question": "3 + 4?", "answer": "7", "teacher_tools": ["add"], "schemas": [add]}
    rollout = Rollout(problem, [], turns=["<tool_call>...</tool_call>", "\\boxed{7}"],
                      tool_calls=["add", "multiply"], answer="7")
    assert math_suite.valid_tools(problem) == {"add"}
    assert compute_reward("mentor", rollout, math_suite) == (
        1.0, {"answer": 0.7, "tool": 0.3, "no_hallucination": 0.0})
    assert tool_use_per_problem([rollout], math_suite) == {
        "tool_set_match": [1], "hallucinated_tool_rate": [1]}
    # without its own schemas a problem shows the suite's tools: multiply is valid there
    del problem["schemas"]
    assert compute_reward("mentor", rollout, math_suite)[0] == pytest.approx(0.8)
