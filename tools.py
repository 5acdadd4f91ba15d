"""Tool calls: find them in the model's text, parse, check and run them safely.

A tool call is `<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>`.
`execute_tool_call` never raises: a call that does not parse, names an unknown
tool, has arguments of the wrong name or type, runs too long or returns too
much becomes an error message, which the model reads as the tool's response
(a malformed call is feedback the model learns from, not a crash). The bounds below keep
whatever the model writes from hanging or flooding us; tests/test_tools.py and
tests/test_fuzz.py pin them.
"""
import inspect
import json
import math
import signal
import threading
import time
import types
import typing

# Bounds on tool calls: what the model writes can never hang or flood us.
MAX_CALL_CHARS = 10_000      # a longer <tool_call> body is refused unread
MAX_JSON_DEPTH = 20          # deeper nesting is refused before json.loads
TOOL_TIME_LIMIT_S = 1.0      # wall-clock limit of one tool call (call_with_time_limit)
MAX_RESPONSE_CHARS = 2_000   # longer tool results are cut
MAX_NAME_CHARS = 64          # of a tool name echoed in a "too long" error (12 chars per \uXXXX)


class ToolError(Exception):
    pass


def _json_depth(s):
    depth = best = 0
    for ch in s:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _finite_float(s):
    x = float(s)
    if not math.isfinite(x):
        raise ToolError(f"number {s} is out of range")
    return x


def _no_constant(name):
    raise ToolError(f"{name} is not a valid argument")


def parse_tool_call(body):
    """'{"name": .., "arguments": {..}}' -> (name, arguments); raises ToolError."""
    if len(body) > MAX_CALL_CHARS:
        raise ToolError(f"tool call longer than {MAX_CALL_CHARS} characters")
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise ToolError(f"tool call nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        call = json.loads(body, parse_float=_finite_float, parse_constant=_no_constant)
    except ToolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ToolError(f"tool call is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolError('tool call must be {"name": "<tool>", "arguments": {...}}')
    args = call.get("arguments", {})
    if isinstance(args, str):  # some models send arguments as a JSON string
        if _json_depth(args) > MAX_JSON_DEPTH:   # its \u005b escapes are brackets now
            raise ToolError(f"tool call nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            args = json.loads(args, parse_float=_finite_float, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ToolError('"arguments" is a string that is not valid JSON') from None
    if not isinstance(args, dict):
        raise ToolError('"arguments" must be a JSON object')
    return call["name"], args


def _check_type(value, hint, where):
    """Return value converted to `hint` (int<->float where exact) or raise ToolError."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return value
    if origin is typing.Union or isinstance(hint, types.UnionType):  # Optional[x], x | None
        for h in params:
            try:
                return _check_type(value, h, where)
            except ToolError:
                pass
        raise ToolError(f"{where} has the wrong type")
    if hint is type(None):
        if value is None:
            return None
        raise ToolError(f"{where} must be null")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is float:
        if is_number:
            return float(value)
        raise ToolError(f"{where} must be a number, got {type(value).__name__}")
    if hint is int:
        if is_number and float(value).is_integer():
            return int(value)
        raise ToolError(f"{where} must be an integer, got {value!r}"[:200])
    if hint in (str, bool):
        if type(value) is hint:
            return value
        raise ToolError(f"{where} must be a {hint.__name__}, got {type(value).__name__}")
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ToolError(f"{where} must be a list")
        return [_check_type(v, params[0], f"{where}[{i}]") if params else v
                for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ToolError(f"{where} must be an object")
        return value
    return value  # other annotations are not checked


def bind_arguments(fn, args):
    """Check args against fn's signature and type hints; return the converted kwargs."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    unknown = set(args) - set(sig.parameters)
    if unknown:
        raise ToolError(f"unexpected argument(s) {sorted(unknown)}; "
                        f"{fn.__name__} takes {list(sig.parameters)}")
    kwargs = {}
    for pname, p in sig.parameters.items():
        if pname not in args:
            if p.default is inspect.Parameter.empty:
                raise ToolError(f"missing argument '{pname}'")
            continue
        kwargs[pname] = _check_type(args[pname], hints.get(pname, p.annotation), f"'{pname}'")
    return kwargs


def call_with_time_limit(fn, kwargs, seconds):
    """fn(**kwargs), or ToolError after `seconds` of wall-clock time, from any thread.

    Main thread: SIGALRM interrupts the tool; an alarm the caller had set keeps
    its handler and fires when it was due (at once, if that passed meanwhile).
    Other threads (signals reach only the main one): the tool runs in a daemon
    worker and the caller stops waiting at the deadline. Python cannot kill a
    thread, so a runaway tool goes on in the background until it returns.
    """
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "SIGALRM"):
        box = {}

        def work():
            try:
                box["result"] = fn(**kwargs)
            except Exception as e:       # handed back to the caller below
                box["error"] = e
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            raise ToolError(f"tool call took longer than {seconds} s")
        if "error" in box:
            raise box["error"]
        if "result" not in box:
            raise ToolError("tool call ended without a result")
        return box["result"]

    def on_alarm(signum, frame):
        raise ToolError(f"tool call took longer than {seconds} s")
    t0 = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(**kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:          # the caller's alarm: re-armed for what was left of it
            left = max(old_delay - (time.monotonic() - t0), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def format_value(x):
    if isinstance(x, float) and math.isfinite(x):
        x = round(x, 4)
        return int(x) if x.is_integer() else x
    return x


def execute_tool_call(body, tools):
    """Run one <tool_call> body. Returns (tool name or None, response text); never raises."""
    name = None
    try:
        name, args = parse_tool_call(body)
        if name not in tools:
            raise ToolError(f"unknown tool '{name}'; available: {', '.join(tools)}")
        kwargs = bind_arguments(tools[name], args)
        result = call_with_time_limit(tools[name], kwargs, TOOL_TIME_LIMIT_S)
        text = json.dumps({"name": name, "result": format_value(result)}, allow_nan=False)
    except ToolError as e:
        text = json.dumps({"name": name, "error": str(e)})
    except Exception as e:  # the tool itself failed: its message is the model's feedback
        text = json.dumps({"name": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    if len(text) > MAX_RESPONSE_CHARS:   # the name cut too: it is the model's text
        text = json.dumps({"name": name[:MAX_NAME_CHARS], "error": "result too long"})
    return name, text


def tool_call_bodies(text, open_tag="<tool_call>", close_tag="</tool_call>"):
    """The text inside each <tool_call>...</tool_call> (leftmost, shortest, like a non-greedy
    regex) in linear time: a regex rescans to the end from every unclosed tag (quadratic)."""
    bodies, pos = [], 0
    while (start := text.find(open_tag, pos)) >= 0:
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            break           # no closing tag after this one, so none after any later one
        bodies.append(text[start + len(open_tag):end])
        pos = end + len(close_tag)
    return bodies


def parse_tool_calls(text):
    """Every <tool_call> in text as {"name", "arguments"}, or None where it does not parse."""
    calls = []
    for body in tool_call_bodies(text):
        try:
            name, args = parse_tool_call(body)
            calls.append({"name": name, "arguments": args})
        except ToolError:
            calls.append(None)
    return calls


def tool_names_in(text):
    """Names of the tools a text tries to call, valid or not (None for unparsable calls)."""
    return [c and c["name"] for c in parse_tool_calls(text)]
