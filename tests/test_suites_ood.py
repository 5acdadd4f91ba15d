"""The out-of-domain suites `shop`, `dates`, `lookup` and `units`: they load, never overlap training, their
reference answers score correct and their tools hold against hostile calls."""
import json
import time

import pytest

from tools import execute_tool_call
from tasks import answers_match, extract_boxed, load_suite
from teacher import reference_messages

OOD = ["shop", "dates", "lookup", "units"]


@pytest.fixture(scope="module", params=OOD)
def suite(request):
    return load_suite(request.param)


def test_loads_with_enough_problems_and_teacher_tools(suite):
    assert len(suite.problems) >= 150
    assert len({p["question"] for p in suite.problems}) == len(suite.problems)
    for p in suite.problems:
        assert p["teacher_tools"] and set(p["teacher_tools"]) <= set(suite.tools)


def test_never_seen_in_training(suite, math_suite):
    """No tool name, argument name or question of the suite appears in `math`."""
    math_text = json.dumps(math_suite.schemas) + " ".join(p["question"] for p in math_suite.problems)
    for name in suite.tools:
        assert name not in math_text
    args = {a for s in suite.schemas for a in s["function"]["parameters"]["properties"]}
    math_args = {a for s in math_suite.schemas for a in s["function"]["parameters"]["properties"]}
    assert not args & math_args
    assert not {p["question"] for p in suite.problems} & {p["question"] for p in math_suite.problems}


def test_every_reference_answer_scores_correct(suite):
    """Replayed through the real tool executor (as JSON, as a model sends it), the reference
    solution's last result is the gold answer, and so is the reference teacher's \\boxed{}."""
    for p in suite.problems:
        for call in p["solution"]:
            name, response = execute_tool_call(json.dumps(call), suite.tools)
            assert name == call["name"] and "result" in json.loads(response), response
        assert answers_match(str(json.loads(response)["result"]), p["answer"]), p
        final = reference_messages(p, suite.tools)[-1]["content"]
        assert answers_match(extract_boxed(final), p["answer"]), (p, final)


HOSTILE = {
    "shop": [
        ('{"name": "apply_discount", "arguments": {"price": 1e308, "percent_off": 10}}', "range"),
        ('{"name": "apply_discount", "arguments": {"price": 10, "percent_off": 250}}', "between"),
        ('{"name": "add_sales_tax", "arguments": {"amount": -1e300, "tax_percent": 5}}', "range"),
        ('{"name": "cost_of_items", "arguments": {"unit_price": 5, "quantity": 1e15}}', "between"),
        ('{"name": "cost_of_items", "arguments": {"unit_price": 5, "quantity": 2.5}}', "integer"),
        ('{"name": "convert_currency", "arguments": {"amount": 5, "from_currency": "XXX", '
         '"to_currency": "EUR"}}', "unknown currency"),
        ('{"name": "convert_currency", "arguments": {"amount": 5, "from_currency": "'
         + "U" * 5000 + '", "to_currency": "EUR"}}', "unknown currency"),
        ('{"name": "convert_currency", "arguments": {"amount": NaN, "from_currency": "USD", '
         '"to_currency": "EUR"}}', "not a valid argument"),
    ],
    "dates": [
        ('{"name": "date_after", "arguments": {"year": 2024, "month": 1, "day": 1, "days": 1e12}}',
         "between"),
        ('{"name": "date_after", "arguments": {"year": 9999, "month": 12, "day": 30, "days": 5}}',
         "calendar"),
        ('{"name": "weekday_of", "arguments": {"year": 2023, "month": 2, "day": 29}}', "no such date"),
        ('{"name": "weekday_of", "arguments": {"year": 10**400, "month": 1, "day": 1}}',
         "not valid JSON"),
        ('{"name": "day_of_year", "arguments": {"year": 1e300, "month": 1, "day": 1}}',
         "no such date"),
        ('{"name": "days_in_month", "arguments": {"year": 2024, "month": 13}}', "no such date"),
        ('{"name": "days_in_month", "arguments": {"year": "2024", "month": 2}}', "must be an integer"),
    ],
    "lookup": [
        ('{"name": "birth_town", "arguments": {"person": "Nobody Here"}}', "no person"),
        ('{"name": "country_of_town", "arguments": {"town": "' + "x" * 5_000 + '"}}', "no town"),
        ('{"name": "company_founder", "arguments": {"company": ["a", "b"]}}', "must be a str"),
        ('{"name": "product_maker", "arguments": {}}', "missing"),
        ('{"name": "trade_of", "arguments": {"person": "x", "town": "y"}}', "unexpected"),
    ],
    "units": [
        ('{"name": "kilometers_to_miles", "arguments": {"kilometers": 1e308}}', "range"),
        ('{"name": "celsius_to_fahrenheit", "arguments": {"celsius": Infinity}}',
         "not a valid argument"),
        ('{"name": "liters_to_gallons", "arguments": {"liters": "ten"}}', "must be a"),
        ('{"name": "inches_to_centimeters", "arguments": {}}', "missing"),
        ('{"name": "kilograms_to_pounds", "arguments": {"kilograms": 5, "grams": 3}}', "unexpected"),
    ],
}


def test_hostile_calls_become_error_responses(suite):
    for body, expect in HOSTILE[suite.name]:
        t0 = time.perf_counter()
        _, response = execute_tool_call(body, suite.tools)
        assert time.perf_counter() - t0 < 0.5
        response = json.loads(response)
        assert "result" not in response and expect in response["error"], (body[:80], response)
        assert len(json.dumps(response)) <= 2_000


def test_lookup_finds_the_name_in_the_query_as_a_search_box_does():
    suite = load_suite("lookup")
    p = next(p for p in suite.problems if p["teacher_tools"] == ["product_maker"])
    name = p["solution"][0]["arguments"]["product"]                 # "the kalomix"
    maker = suite.tools["product_maker"]
    assert maker(name) == maker("  " + name.upper()) == maker(name[4:] + ".") == p["answer"]
    assert maker(f"the company that makes {name}, please") == p["answer"]
    with pytest.raises(ValueError, match="no product"):
        maker(name[4:-1])                                           # a name cut short is no name
