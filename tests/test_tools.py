"""Adversarial tool calls: each ends as an error response, quickly, never as an exception."""
import json
import time

import pytest

from tools import execute_tool_call, parse_tool_call, ToolError


def run(body, tools):
    t0 = time.perf_counter()
    name, resp = execute_tool_call(body, tools)
    assert time.perf_counter() - t0 < 1.5
    return name, json.loads(resp)


def test_valid_call(math_suite):
    name, resp = run('{"name": "multiply", "arguments": {"a": 3, "b": 4}}', math_suite.tools)
    assert (name, resp) == ("multiply", {"name": "multiply", "result": 12})
    assert run('{"name": "divide", "arguments": {"a": 1, "b": 3}}', math_suite.tools)[1]["result"] \
        == 0.3333
    # arguments sent as a JSON string are accepted
    assert run('{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}', math_suite.tools)[1][
        "result"] == 3


@pytest.mark.parametrize("body,expect", [
    ('{"name": "add", "arguments": {"a": 1, "b": }', "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ('["add", 1, 2]', "must be"),
    ('{"name": "calculator", "arguments": {"a": 1}}', "unknown tool 'calculator'"),
    ('{"name": "add", "arguments": {"a": 1}}', "missing argument 'b'"),
    ('{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}', "unexpected argument"),
    ('{"name": "add", "arguments": {"a": "1", "b": 2}}', "must be a number"),
    ('{"name": "add", "arguments": {"a": true, "b": 2}}', "must be a number"),
    ('{"name": "power", "arguments": {"base": 10, "exponent": 1000000000}}', "too large"),
    ('{"name": "power", "arguments": {"base": 2, "exponent": 1e308}}', "too large"),
    ('{"name": "add", "arguments": {"a": NaN, "b": 1}}', "not a valid argument"),
    ('{"name": "add", "arguments": {"a": Infinity, "b": 1}}', "not a valid argument"),
    ('{"name": "add", "arguments": {"a": 1e999, "b": 1}}', "out of range"),
    ('{"name": "divide", "arguments": {"a": 1, "b": 0}}', "division by zero"),
    ('{"name": "sqrt", "arguments": {"x": -4}}', "negative"),
    ('{"name": "round_number", "arguments": {"x": 1.5, "ndigits": 2.5}}', "integer"),
    ('{"name": "multiply", "arguments": {"a": 1e10, "b": 1e10}}', "too large"),
])
def test_bad_calls_become_error_responses(body, expect, math_suite):
    _, resp = run(body, math_suite.tools)
    assert "result" not in resp and expect in resp["error"]


def test_huge_and_deep_payloads(math_suite):
    huge = '{"name": "add", "arguments": {"a": "' + "x" * 1_000_000 + '", "b": 1}}'
    assert "longer than" in run(huge, math_suite.tools)[1]["error"]
    deep = '{"name": "add", "arguments": ' + "[" * 10_000 + "]" * 10_000 + "}"
    assert "error" in run(deep, math_suite.tools)[1]
    deep_short = '{"name": "add", "arguments": {"a": ' + "[" * 30 + "]" * 30 + ', "b": 1}}'
    assert "nested deeper" in run(deep_short, math_suite.tools)[1]["error"]
    with pytest.raises(ToolError):
        parse_tool_call("[" * 10_000)


def test_slow_and_crashing_user_tools_are_contained():
    def slow(x: float) -> float:
        """Sleep.

        Args:
            x: Seconds.
        """
        time.sleep(x)
        return x

    def crash(x: float) -> float:
        """Crash.

        Args:
            x: Anything.
        """
        raise RuntimeError("boom")

    def nan(x: float) -> float:
        """Not a number.

        Args:
            x: Anything.
        """
        return float("nan")

    tools = {"slow": slow, "crash": crash, "nan": nan}
    assert "longer than" in run('{"name": "slow", "arguments": {"x": 5}}', tools)[1]["error"]
    assert "boom" in run('{"name": "crash", "arguments": {"x": 1}}', tools)[1]["error"]
    assert "error" in run('{"name": "nan", "arguments": {"x": 1}}', tools)[1]


def test_regressions_from_the_hostile_model_pass(math_suite):
    """Issue 16: each case was a crash, a quadratic scan or a response over its cap."""
    from suites import bfcl
    from tools import MAX_RESPONSE_CHARS, parse_tool_calls, tool_call_bodies, tool_names_in
    assert bfcl.value_ok(10 ** 309, [1.0], "float") is False          # was OverflowError
    for text in ("<tool_call>" * 10_000, "<tool_call>" * 10_000 + "</tool_call>"):
        t0 = time.perf_counter()
        parse_tool_calls(text), tool_names_in(text)
        assert time.perf_counter() - t0 < 0.5                          # was 12 s
    assert tool_call_bodies("a<tool_call>x</tool_call>b<tool_call><tool_call>y</tool_call>"
                            "<tool_call>z") == ["x", "<tool_call>y"]   # as the regex found them
    for name in ("n" * 2000, "\U0001F600" * 9970):
        def echo(x: str) -> str:
            """Echo.

            Args:
                x: Text.
            """
            return x * 10
        body = json.dumps({"name": name, "arguments": {"x": "y" * 500}})[:9000]
        _, resp = execute_tool_call(body, {name: echo})
        assert len(resp) <= MAX_RESPONSE_CHARS                          # was 2,040 and 119,680
    for body in ('{"name": "abs_value", "arguments": {"x": 1e308}}',
                 '{"name": "sqrt", "arguments": {"x": 1e308}}',
                 '{"name": "modulo", "arguments": {"a": 1e300, "b": 3e299}}'):
        assert "too large" in run(body, math_suite.tools)[1]["error"]  # was a 309-digit number
    # string-encoded arguments whose brackets are \u escapes: the raw text has no bracket
    escaped = '{"name": "add", "arguments": "' + "\\u005b" * 30 + "\\u005d" * 30 + '"}'
    assert "nested deeper" in run(escaped, math_suite.tools)[1]["error"]


def _slow(x: float) -> float:
    """Sleep.

    Args:
        x: Seconds.
    """
    time.sleep(x)
    return x


def test_time_limit_holds_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        t0 = time.perf_counter()
        _, resp = pool.submit(execute_tool_call, '{"name": "_slow", "arguments": {"x": 3}}',
                              {"_slow": _slow}).result()
        assert "longer than" in json.loads(resp)["error"]
        assert time.perf_counter() - t0 < 2.0                  # was 3 s: no limit in a thread
        _, resp = pool.submit(execute_tool_call, '{"name": "_slow", "arguments": {"x": 0.01}}',
                              {"_slow": _slow}).result()
        assert json.loads(resp)["result"] == 0.01


def test_time_limit_leaves_the_callers_alarm_alone():
    import signal
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.perf_counter()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        execute_tool_call('{"name": "_slow", "arguments": {"x": 0.01}}', {"_slow": _slow})
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.5   # still armed, not reset
        time.sleep(0.7)
        assert len(fired) == 1
        # an alarm that fell due while a tool ran fires as soon as the tool returns
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        execute_tool_call('{"name": "_slow", "arguments": {"x": 0.3}}', {"_slow": _slow})
        time.sleep(0.05)
        assert len(fired) == 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
