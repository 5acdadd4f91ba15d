"""Rewards: sparse, MENTOR's teacher-guided composite, and the paper's three ablations.

MENTOR (docs/paper.md, "The composite reward, exactly"), maximum 1.1:

    r = 0                                      if the response was truncated
    r = 0.1                                    if it has no (or an empty) \\boxed{} answer
    r = 0.7 * correct + s * 0.3 * match(S, T) + 0.1 * [H is empty]    otherwise

    S = valid tool names the student called, H = called names that are not
    valid tools (hallucinated), T = the teacher's tools, match = [S == T];
    valid = shown to that problem (tasks.Suite.valid_tools, as the metrics count it),
    s = 1 if correct else 0.2 (a wrong answer with the teacher's tools earns 0.06).

Ablations change one line: `partial` matches when S and T share a tool and
drops the 0.1 term (max 1.0); `no_tool_match` keeps 0.7 * correct + 0.1 * [H
empty] (max 0.8); `f1` uses match = F1(S, T). Sparse: 0 / 0.1 / 1.0 for
truncated / missing or wrong / right.

Empty teacher set T (the teacher solved it without tools): the reference code
returns 0.1. We score it instead: the student matches when it also calls no
tool (match = [S == T] = [S empty]; F1 and partial likewise give 1 for S empty).

Calls whose JSON cannot be parsed have no name: they count in neither S nor H.
Every function returns (total, parts) with the named parts for logging.
"""

TRUNCATED_REWARD = 0.0
MISSING_ANSWER_REWARD = 0.1
CORRECT_WEIGHT = 0.7
TOOL_WEIGHT = 0.3
WRONG_ANSWER_TOOL_SCALE = 0.2
NO_HALLUCINATION_BONUS = 0.1
SPARSE_CORRECT, SPARSE_WRONG = 1.0, 0.1

VARIANTS = ("mentor", "sparse", "partial", "no_tool_match", "f1")


def tool_f1(S, T):
    """F1 of the student's tool set S against the teacher's T (1.0 when both are empty)."""
    if not S or not T:
        return float(S == T)
    both = len(S & T)
    if both == 0:
        return 0.0
    precision, recall = both / len(S), both / len(T)
    return 2 * precision * recall / (precision + recall)


def reward(variant, *, truncated, answer, correct, called, valid_tools, teacher_tools):
    """Score one rollout. `called`: every tool name it tried (None for an unparsable call).

    >>> reward("mentor", truncated=False, answer="7", correct=False, called=["add"],
    ...        valid_tools={"add", "multiply"}, teacher_tools=["add"])
    (0.16, {'answer': 0.0, 'tool': 0.06, 'no_hallucination': 0.1})
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward '{variant}'; choose from {VARIANTS}")
    if truncated:
        return TRUNCATED_REWARD, {"truncated": TRUNCATED_REWARD}
    if not answer:
        return MISSING_ANSWER_REWARD, {"missing_answer": MISSING_ANSWER_REWARD}
    if variant == "sparse":
        r = SPARSE_CORRECT if correct else SPARSE_WRONG
        return r, {"answer": r}

    names = {n for n in called if n is not None}
    S, H, T = names & set(valid_tools), names - set(valid_tools), set(teacher_tools)
    match = {"mentor": float(S == T),
             "partial": float(bool(S & T)) if T else float(not S),
             "no_tool_match": 0.0,
             "f1": tool_f1(S, T)}[variant]
    scale = 1.0 if correct else WRONG_ANSWER_TOOL_SCALE
    parts = {"answer": CORRECT_WEIGHT * correct,
             "tool": round(scale * TOOL_WEIGHT * match, 10)}
    if variant != "partial":
        parts["no_hallucination"] = NO_HALLUCINATION_BONUS * (not H)
    return round(sum(parts.values()), 10), parts


def compute_reward(variant, rollout, suite):
    """reward() for a rollout.Rollout of a problem in `suite`: valid tools are the ones shown
    to that problem and correct is the suite's check (tasks.Suite.valid_tools / .is_correct),
    the definitions the evaluation metrics use."""
    return reward(variant, truncated=rollout.truncated, answer=rollout.answer,
                  correct=suite.is_correct(rollout), called=rollout.tool_calls,
                  valid_tools=suite.valid_tools(rollout.problem),
                  teacher_tools=rollout.problem["teacher_tools"])
