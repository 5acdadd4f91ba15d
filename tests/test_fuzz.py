"""Property-based fuzzing of parse -> execute -> check, as a hostile model would write.

Every test asserts the same three things over its generated cases: no exception
escapes, every tool response stays within its cap (and is JSON), and no single
case takes over a second. Categories (2,500 cases each, 12,500 in all,
derandomized so CI sees the same cases every run): arbitrary text with tags,
JSON-shaped calls to real and made-up tools, mutations of valid calls, hostile
payloads, and mutations of BFCL ground-truth calls through our AST checker.
"""
import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suites import bfcl
from tools import MAX_RESPONSE_CHARS, execute_tool_call, parse_tool_calls, tool_names_in
from tasks import answers_match, extract_boxed, load_suite

CASES = 2_500
FUZZ = settings(max_examples=CASES, deadline=1000, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TOOLS = {name: fn for s in ("math", "shop", "dates", "lookup", "units", "retrieval")
         for name, fn in load_suite(s).tools.items()}
NAMES = sorted(TOOLS) + ["__import__", "eval", "exec", "open", "os.system", "", "a" * 300,
                         "add; rm -rf /", "../../etc/passwd", "\x00", "\ud800", "😀" * 50]
BFCL = bfcl.load_bfcl(limit=10)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40) | st.sampled_from([10 ** 309, -10 ** 400, 1e308, 5e-324]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20)


def checked(text):
    """Parse every call in text, execute each, check the answer: the properties hold."""
    t0 = time.perf_counter()
    parse_tool_calls(text)
    tool_names_in(text)
    answers_match(extract_boxed(text), "42")
    for body in [text] + [text[i:] for i in (1, len(text) // 2)]:
        name, response = execute_tool_call(body, TOOLS)
        assert len(response) <= MAX_RESPONSE_CHARS
        assert set(json.loads(response)) in ({"name", "result"}, {"name", "error"})
    assert time.perf_counter() - t0 < 1.0


def call_text(name, args):
    try:
        return json.dumps({"name": name, "arguments": args})
    except (ValueError, TypeError):          # e.g. a lone surrogate: the model's text, as is
        return '{"name": "%s", "arguments": %r}' % (name, args)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('<>/{}[]":,\\ abtoolcall_response0123456789.-eE'))
               | st.characters(), max_size=400))
def test_arbitrary_text_with_tags(text):
    checked(text)
    checked("<tool_call>" + text + "</tool_call>" + text)


@FUZZ
@given(st.sampled_from(NAMES), st.dictionaries(st.text(max_size=12) | st.sampled_from(
    ["a", "b", "x", "numbers", "price", "quantity", "year", "month", "day", "days", "query"]),
    json_values, max_size=6) | json_values)
def test_json_calls_to_real_and_made_up_tools(name, args):
    body = call_text(name, args)
    checked(body)
    checked(f"<tool_call>{body}</tool_call>")
    checked(call_text(name, json.dumps(args, default=str)))    # arguments as a JSON string


VALID = ['{"name": "add", "arguments": {"a": 3, "b": 4}}',
         '{"name": "sum_numbers", "arguments": {"numbers": [1, 2, 3]}}',
         '{"name": "apply_discount", "arguments": {"price": 40, "percent_off": 25}}',
         '{"name": "date_after", "arguments": {"year": 2024, "month": 2, "day": 28, "days": 2}}',
         '{"name": "search", "arguments": {"query": "who founded the company"}}']


@FUZZ
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 80), st.sampled_from(
    ["", "{", "}", "[", "]", '"', ",", ":", "1e999", "-", "\\u005b", "null", "9" * 400, "\x00"]),
    st.integers(0, 3)), max_size=6))
def test_mutated_valid_calls(body, edits):
    for pos, insert, delete in edits:
        pos = min(pos, len(body))
        body = body[:pos] + insert + body[pos + delete:]
    checked(body)
    checked(f"<tool_call>{body}</tool_call>")


@FUZZ
@given(st.sampled_from(["<tool_call>", "</tool_call>", "<tool_call><tool_call>", "[", "{",
                        '{"name": "add", "arguments": ', "\\u005b"]),
       st.integers(1, 3000), st.sampled_from(VALID))
def test_hostile_payloads(piece, times, body):
    checked(piece * times + body)
    checked(body[:-1] + piece * times + "}")
    checked(f"<tool_call>{body}</tool_call>" * (times // 100 + 1))


@FUZZ
@given(st.sampled_from(range(len(BFCL))), st.data())
def test_mutated_bfcl_ground_truth_calls(i, data):
    p = BFCL[i]
    calls = bfcl.answer_as_calls(p["ground_truth"], p["schemas"])
    for c in calls:
        if c["arguments"] and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(c["arguments"])))
            c["arguments"][key] = data.draw(json_values)
        if data.draw(st.booleans()):
            c["arguments"][data.draw(st.text(max_size=8))] = data.draw(json_values)
    if data.draw(st.booleans()):
        calls = calls + [None]
    t0 = time.perf_counter()
    ok = None not in calls and bfcl.check([c for c in calls if c], p)
    assert ok in (True, False)
    text = "".join(f"<tool_call>{call_text(c['name'], c['arguments'])}</tool_call>"
                   for c in calls if c)
    parse_tool_calls(text)
    assert time.perf_counter() - t0 < 1.0
