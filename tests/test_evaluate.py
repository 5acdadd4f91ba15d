"""evaluate.py: JSD, the BFCL checker against the real BFCL data, the retrieval tool, a BYO suite."""
import copy
import math

import pytest
import torch

from suites import bfcl
from evaluate import evaluate_suite, jsd, tool_distribution

# The one BFCL entry whose ground truth contradicts its own function doc:
# `x` is declared an array of floats but the only allowed answer is the string "data['sales']".
BFCL_INCONSISTENT = {"parallel_multiple_21"}


def test_jsd_by_hand():
    assert jsd({"a": 1}, {"a": 5}) == 0.0
    assert jsd({"a": 1}, {"b": 1}) == pytest.approx(1.0)          # disjoint: maximal, base 2
    # P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4)
    kl_pm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_qm = math.log2(1 / 0.75)
    assert jsd({"a": 1, "b": 1}, {"a": 2}) == pytest.approx((kl_pm + kl_qm) / 2)
    assert tool_distribution([{"add"}, set(), {"add", "divide"}]) == \
        {"add": 2, "<none>": 1, "divide": 1}


@pytest.fixture(scope="module")
def bfcl_problems():
    return bfcl.load_bfcl()


def test_bfcl_every_ground_truth_scores_correct(bfcl_problems):
    assert {p["category"] for p in bfcl_problems} == set(bfcl.CATEGORIES)
    wrong = {p["id"] for p in bfcl_problems
             if not bfcl.check(bfcl.answer_as_calls(p["ground_truth"], p["schemas"]), p)}
    assert wrong == BFCL_INCONSISTENT


def _perturb_value(v):
    if isinstance(v, bool):
        return "not a bool"
    if isinstance(v, (int, float)):
        return v + 12345
    if isinstance(v, str):
        return v + " zzz"
    if isinstance(v, list):
        return v + ["zzz"]
    if isinstance(v, dict):
        return {**v, "zzz": 1}
    return "zzz"


def test_bfcl_perturbations_score_wrong(bfcl_problems):
    n = 0
    for p in bfcl_problems:
        if p["category"] == "irrelevance" or p["id"] in BFCL_INCONSISTENT:
            # irrelevance: any call at all is wrong
            if p["category"] == "irrelevance":
                assert bfcl.check([], p)
                assert not bfcl.check([{"name": p["schemas"][0]["name"], "arguments": {}}], p)
            continue
        calls = bfcl.answer_as_calls(p["ground_truth"], p["schemas"])
        # wrong function
        bad = copy.deepcopy(calls); bad[0]["name"] = "no_such_function"
        assert not bfcl.check(bad, p), p["id"]
        # extra call
        assert not bfcl.check(calls + [copy.deepcopy(calls[0])], p), p["id"]
        # missing required parameter
        doc = next(s for s in p["schemas"] if s["name"] == calls[0]["name"])
        required = [r for r in doc["parameters"].get("required", []) if r in calls[0]["arguments"]]
        if required:
            bad = copy.deepcopy(calls); del bad[0]["arguments"][required[0]]
            assert not bfcl.check(bad, p), p["id"]
        # disallowed value
        if calls[0]["arguments"]:
            k = next(iter(calls[0]["arguments"]))
            bad = copy.deepcopy(calls); bad[0]["arguments"][k] = _perturb_value(bad[0]["arguments"][k])
            assert not bfcl.check(bad, p), (p["id"], k)
        n += 1
    assert n > 900


def test_bfcl_parallel_calls_match_in_any_order(bfcl_problems):
    p = next(p for p in bfcl_problems if p["category"] == "parallel" and len(p["ground_truth"]) > 1
             and p["ground_truth"][0] != p["ground_truth"][1])
    calls = bfcl.answer_as_calls(p["ground_truth"], p["schemas"])
    assert bfcl.check(calls[::-1], p)


def test_bfcl_types_and_string_normalisation():
    p = {"category": "simple_python", "schemas": [{"name": "f", "parameters": {
        "type": "dict", "properties": {"x": {"type": "float"}, "city": {"type": "string"},
                                       "n": {"type": "integer"}},
        "required": ["x", "city"]}}],
         "ground_truth": [{"f": {"x": [2.0], "city": ["New York, NY"], "n": ["", 3]}}]}
    assert bfcl.check([{"name": "f", "arguments": {"x": 2, "city": "new york ny"}}], p)  # int ok for float
    assert not bfcl.check([{"name": "f", "arguments": {"x": "2", "city": "New York, NY"}}], p)
    assert not bfcl.check([{"name": "f", "arguments": {"x": 2.0, "city": "Boston"}}], p)
    assert not bfcl.check([{"name": "f", "arguments": {"x": 2.0, "city": "NY", "n": 3.0}}], p)


def test_retrieval_first_hop_is_found_for_every_question():
    from suites import retrieval as r
    assert 200 <= len(r.PASSAGES) and len(r.PROBLEMS) >= 100
    for p in r.PROBLEMS:
        first = p["hops"][0].lower()
        hits = r.search(p["question"]).lower()
        assert first in hits, p["question"]
        # and the second hop is one more search away
        assert p["hops"][1].lower() in r.search(p["hops"][0]).lower()
        assert p["answer"].lower() in r.search(p["hops"][1]).lower()


def test_byo_suite_through_evaluate(student, tmp_path, monkeypatch):
    path = tmp_path / "colors.py"
    path.write_text('''
def mix(a: str, b: str) -> str:
    """Mix two paint colors.

    Args:
        a: First color.
        b: Second color.
    """
    return {frozenset(["red", "blue"]): "purple"}.get(frozenset([a, b]), "brown")

TOOLS = [mix]
PROBLEMS = [{"question": "What do red and blue make?", "answer": "purple", "teacher_tools": ["mix"]},
            {"question": "What do red and green make?", "answer": "brown", "teacher_tools": ["mix"]}]
''')
    tok, model = student
    res, rollouts = evaluate_suite(model, tok, str(path), max_new_tokens=16, max_total_tokens=16,
                                   progress=False)
    assert res["n"] == 2 and len(rollouts) == 2
    for key in ("accuracy", "tool_call_rate", "hallucinated_tool_rate", "mean_turns",
                "response_tokens", "tool_set_match", "tool_jsd"):
        assert key in res
    assert 0.0 <= res["tool_jsd"] <= 1.0
    for key in ("tool_set_match", "hallucinated_tool_rate"):       # kept per problem too
        assert len(res["per_problem"][key]) == 2
        assert sum(res["per_problem"][key]) / 2 == res[key]


def test_replot_from_saved_results(tmp_path):
    import json
    from evaluate import main
    m = {"accuracy": 0.5, "tool_jsd": 0.25}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"math": m, "bfcl": m}))
    main(["--replot", f"a={path}", f"b={path}", "--suite", "math,bfcl",
          "--plot-dir", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "jsd_vs_accuracy.png").stat().st_size > 1000


def test_limit_per_suite(monkeypatch):
    """evaluate_model takes one limit for all suites or a {suite: limit} dict (replicate.py)."""
    import evaluate
    seen = {}
    monkeypatch.setattr(evaluate, "load_model", lambda name, device=None, dtype=None: (None, None))
    monkeypatch.setattr(evaluate, "rollout_weights", lambda model, dtype: model)

    def fake_suite(model, tok, name, limit=None, **kw):
        seen[name] = limit
        return {}, []
    monkeypatch.setattr(evaluate, "evaluate_suite", fake_suite)
    saved = []
    evaluate.evaluate_model("x", ["math", "bfcl"], limit={"math": 24, "bfcl": 4},
                            on_suite=lambda res: saved.append(list(res)))
    assert seen == {"math": 24, "bfcl": 4}
    assert saved == [["math"], ["math", "bfcl"]]             # after each suite, the results so far
    seen.clear()
    evaluate.evaluate_model("x", ["math", "bfcl"], limit=7)
    assert seen == {"math": 7, "bfcl": 7}


def test_paired_bootstrap_ci_by_hand():
    from evaluate import paired_bootstrap_ci
    # differences (0, 0, 1): a resampled mean is 0, 1/3, 2/3 or 1 with probability
    # 8/27, 12/27, 6/27, 1/27, so P(mean <= 2/3) = 26/27 = 0.963: the 95% interval's
    # upper end (the 0.975 quantile) is 1, the 90% interval's (0.95 quantile) is 2/3.
    mean, lo, hi = paired_bootstrap_ci([1, 1, 1], [1, 1, 0])
    assert (mean, lo, hi) == (pytest.approx(1 / 3), 0.0, 1.0)
    _, lo, hi = paired_bootstrap_ci([1, 1, 1], [1, 1, 0], level=0.9)
    assert (lo, hi) == (0.0, pytest.approx(2 / 3))
    # identical differences: no spread; seeds (rows) pair with seeds
    assert paired_bootstrap_ci([[1, 1], [1, 1]], [[0, 0], [0, 0]]) == (1.0, 1.0, 1.0)
    # a difference present in one seed only: the seed resampling shows it
    _, lo, hi = paired_bootstrap_ci([[1] * 50, [0] * 50], [[0] * 50, [0] * 50])
    assert lo == 0.0 and hi == 1.0


def test_bfcl_is_a_plain_suite_with_its_own_check(student):
    """BFCL loads like any suite; its check and MAX_TURNS come from suites/bfcl.py, so
    evaluate.py needs no BFCL case; any prefix of its problems is balanced by category."""
    import collections
    from tasks import load_suite
    suite = load_suite("bfcl")
    assert suite.max_turns == 1 and suite.tools == {}
    first = collections.Counter(p["category"] for p in suite.problems[:100])
    assert first == {c: 20 for c in bfcl.CATEGORIES}
    p = next(p for p in suite.problems if p["category"] == "simple_python")
    right = bfcl.answer_as_calls(p["ground_truth"], p["schemas"])
    assert suite.check(right, p) and not suite.check(right + [None], p)
    tok, model = student
    res, rollouts = evaluate_suite(model, tok, "bfcl", limit=5, max_new_tokens=24,
                                   progress=False)
    assert res["n"] == 5 and set(res["per_category"]) == set(bfcl.CATEGORIES)
    assert all(len(r.turns) == 1 for r in rollouts)


def test_rollout_metrics_hallucination_counts_tools_shown_to_that_problem():
    from evaluate import rollout_metrics, tool_use_per_problem
    from rollout import Rollout
    from tasks import Suite
    suite = Suite("s", {"add": None}, [])
    own = {"question": "q", "answer": "1", "teacher_tools": ["f"], "schemas": [{"name": "f"}]}
    plain = {"question": "q", "answer": "1", "teacher_tools": ["add"]}
    rs = [Rollout(own, [], tool_calls=["f"]), Rollout(own, [], tool_calls=["add"]),
          Rollout(plain, [], tool_calls=["add", None]), Rollout(plain, [], tool_calls=["zzz"])]
    m = rollout_metrics(rs, suite)
    assert m["hallucinated_tool_rate"] == 0.5               # "add" not shown to `own`; "zzz"
    assert m["valid_call_rate"] == 2 / 5 and m["tool_set_match"] == 0.5
    assert m["tool_call_rate"] == 1.0 and m["accuracy"] == 0.0
    assert tool_use_per_problem(rs, suite) == {"tool_set_match": [1, 0, 1, 0],
                                               "hallucinated_tool_rate": [0, 1, 0, 1]}


def test_generation_limits_come_from_the_run_folder(tmp_path, monkeypatch):
    """A GPU run trains at 512 / 1536 tokens: evaluating its folder with 128 / 384 would cut it
    short. Limits and precision not given come from its run.json; given ones win; a plain
    model gets the defaults."""
    import json as json_
    import evaluate
    (tmp_path / "run.json").write_text(json_.dumps(
        {"suite": "math", "max_turns": 5, "max_new_tokens": 512, "max_total_tokens": 1536,
         "precision": "bf16"}))
    assert evaluate.generation_limits(str(tmp_path)) == {
        "max_turns": 5, "max_new_tokens": 512, "max_total_tokens": 1536, "precision": "bf16"}
    assert evaluate.generation_limits("SmolLM2-135M") == evaluate.GENERATION_DEFAULTS
    seen, dtypes = {}, []
    monkeypatch.setattr(evaluate, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(evaluate, "rollout_weights", lambda m, dtype: dtypes.append(dtype))
    monkeypatch.setattr(evaluate, "evaluate_suite", lambda model, tok, s, **kw: (
        seen.update(kw) or {}, []))
    evaluate.evaluate_model(str(tmp_path), ["math"], max_new_tokens=None, max_total_tokens=100,
                            max_turns=None)
    assert (seen["max_new_tokens"], seen["max_total_tokens"], seen["max_turns"]) == (512, 100, 5)
    assert dtypes == [torch.bfloat16] and "precision" not in seen


def test_paired_bootstrap_jsd_by_hand():
    from evaluate import paired_bootstrap_jsd
    # one seed, two problems; the teacher calls x then y. Model a calls x on both
    # (P = (1, 0) against Q = (1/2, 1/2): J, as in test_jsd_by_hand), model b matches (0).
    J = jsd({"x": 2}, {"x": 1, "y": 1})
    a, b, teacher = [[["x"], ["x"]]], [[["x"], ["y"]]], [[["x"], ["y"]]]
    # a resample of the two problems is {0, 0} (1/4: both 0), {1, 1} (1/4: a calls x where the
    # teacher calls y only, JSD 1; b 0) or {0, 1} (1/2: J): the 95% interval spans [0, 1],
    # the central 40% is J alone
    assert paired_bootstrap_jsd(a, b, teacher) == (pytest.approx(J), 0.0, 1.0)
    d, lo, hi = paired_bootstrap_jsd(a, b, teacher, level=0.4)
    assert d == lo == hi == pytest.approx(J)
    # an empty set counts as "<none>"; the point estimate is the mean over seeds
    d, _, _ = paired_bootstrap_jsd([[[]], [["x"]]], [[["x"]], [["x"]]], [[["x"]], [["x"]]])
    assert d == pytest.approx(0.5)
