"""Built-in `math` suite: the paper's 12 calculator tools and generated word problems.

The file is itself an example of the suite format (see README): TOOLS is a list
of typed functions with Google-style docstrings, PROBLEMS a list of dicts with
`question`, `answer` (a string) and `teacher_tools`. Each problem here also
carries `solution`, the tool calls that compute it (used by teacher.py's
reference solver), and `split`.

Problems chain 1 to 3 operations on a quantity in a short story, needing 1 to
MAX_CALLS = 3 tool calls (rounding a share takes two: divide, then round).
Sized for a 135M student on a CPU: with four or more calls the reference
solution alone no longer fits the default 192-token budget (it did for none of
the 47% of such problems in an earlier 1-4 operation version). Train and test
come from different seeds and no test question appears in train.
"""
import math
import random

MAX_MAGNITUDE = 1e15     # larger results are refused: the work and the text stay bounded
MAX_LIST = 1000          # longest list sum_numbers accepts
MAX_CALLS = 3            # tool calls a generated problem needs at most (see make_problem)


def _checked(x):
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError("result is not a finite number")
    if abs(x) > MAX_MAGNITUDE:
        raise ValueError(f"result too large (|x| > {MAX_MAGNITUDE:g})")
    return x


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return _checked(a + b)


def subtract(a: float, b: float) -> float:
    """Subtract b from a.

    Args:
        a: The number to subtract from.
        b: The number to subtract.
    """
    return _checked(a - b)


def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return _checked(a * b)


def divide(a: float, b: float) -> float:
    """Divide a by b.

    Args:
        a: The dividend.
        b: The divisor (not zero).
    """
    if b == 0:
        raise ValueError("division by zero")
    return _checked(a / b)


def sum_numbers(numbers: list[float]) -> float:
    """Add up a list of numbers.

    Args:
        numbers: The numbers to add.
    """
    if len(numbers) > MAX_LIST:
        raise ValueError(f"at most {MAX_LIST} numbers")
    return _checked(sum(numbers))


def floor(x: float) -> int:
    """Round down to the nearest integer.

    Args:
        x: The number.
    """
    return _checked(math.floor(x))


def ceil(x: float) -> int:
    """Round up to the nearest integer.

    Args:
        x: The number.
    """
    return _checked(math.ceil(x))


def round_number(x: float, ndigits: int = 0) -> float:
    """Round to a number of decimal places.

    Args:
        x: The number.
        ndigits: Decimal places to keep (0 to 10).
    """
    if not 0 <= ndigits <= 10:
        raise ValueError("ndigits must be between 0 and 10")
    return _checked(round(x, ndigits))


def power(base: float, exponent: float) -> float:
    """Raise base to a power.

    Args:
        base: The base.
        exponent: The exponent.
    """
    if base == 0 and exponent < 0:
        raise ValueError("zero to a negative power")
    if base < 0 and exponent != int(exponent):
        raise ValueError("negative base needs an integer exponent")
    # Refuse before computing: 10**(10**9) would hang the process.
    if base not in (0, 1, -1) and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ValueError(f"result too large (|x| > {MAX_MAGNITUDE:g})")
    return _checked(base ** exponent)


def sqrt(x: float) -> float:
    """Square root.

    Args:
        x: A non-negative number.
    """
    if x < 0:
        raise ValueError("square root of a negative number")
    return _checked(math.sqrt(x))


def abs_value(x: float) -> float:
    """Absolute value.

    Args:
        x: The number.
    """
    return _checked(abs(x))


def modulo(a: float, b: float) -> float:
    """Remainder of a divided by b.

    Args:
        a: The dividend.
        b: The divisor (not zero).
    """
    if b == 0:
        raise ValueError("modulo by zero")
    return _checked(a % b)


TOOLS = [add, subtract, multiply, divide, sum_numbers, floor, ceil, round_number,
         power, sqrt, abs_value, modulo]

# ----------------------------------------------------------------------------
# Problem generator. Each step maps the running value v to a new one with one
# or two tool calls, and says so in words.
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Gita", "Hugo", "Ines", "Jamal", "Kira", "Luis"]
ITEMS = ["apples", "stickers", "coins", "marbles", "books", "stamps", "cards", "shells", "pencils", "beads"]


def fmt(x):
    """Numbers as a person writes them: 12, 2.5, 0.3333 (at most 4 decimals)."""
    x = round(float(x), 4)
    return str(int(x)) if x.is_integer() else f"{x:.4f}".rstrip("0")


def _step(rng, v, item):
    """One operation on v -> (sentence, [calls], new v)."""
    kind = rng.choice(["add", "subtract", "multiply", "divide", "power", "sqrt", "modulo",
                       "ceil", "floor", "round"])
    if kind == "add":
        y = rng.randint(2, 60)
        return f"Then they get {y} more.", [("add", v, y)], v + y
    if kind == "subtract" and v > 2:
        y = rng.randint(1, int(v) - 1)
        return f"Then they give away {y}.", [("subtract", v, y)], v - y
    if kind == "multiply" and v < 500:
        k = rng.randint(2, 9)
        return f"Then the number becomes {k} times as large.", [("multiply", v, k)], v * k
    if kind == "divide":
        ks = [k for k in range(2, 10) if v % k == 0]
        if ks:
            k = rng.choice(ks)
            return f"They share them equally among {k} friends and keep one share.", \
                [("divide", v, k)], v // k
    if kind == "power" and v <= 30:
        return "Then the number is squared.", [("power", v, 2)], v * v
    if kind == "sqrt" and v > 1 and math.isqrt(int(v)) ** 2 == v:
        r = math.isqrt(int(v))
        return "Then they keep only the square root of that number.", [("sqrt", v, None)], r
    if kind == "modulo" and v > 10:
        k = rng.randint(3, 9)
        return f"They pack them in bags of {k}; only the leftovers stay out.", \
            [("modulo", v, k)], v % k
    if kind in ("ceil", "floor", "round") and v > 10:
        k = rng.choice([k for k in range(3, 10) if v % k] or [7])
        q = v / k
        if kind == "ceil":
            return f"Boxes hold {k} each; count how many boxes are needed for all of them.", \
                [("divide", v, k), ("ceil", q, None)], math.ceil(q)
        if kind == "floor":
            return f"Boxes hold {k} each; count only the boxes that can be filled completely.", \
                [("divide", v, k), ("floor", q, None)], math.floor(q)
        return f"Split them into {k} equal parts and round one part to the nearest whole number.", \
            [("divide", v, k), ("round_number", q, None)], round(q)
    y = rng.randint(2, 60)  # fallback when the chosen operation does not fit v
    return f"Then they get {y} more.", [("add", v, y)], v + y


def _call(name, a, b):
    a = round(a, 4)  # the value as the tool response showed it
    if name in ("sqrt", "floor", "ceil", "abs_value"):
        return {"name": name, "arguments": {"x": a}}
    if name == "round_number":
        return {"name": name, "arguments": {"x": a, "ndigits": 0}}
    if name == "power":
        return {"name": name, "arguments": {"base": a, "exponent": b}}
    return {"name": name, "arguments": {"a": a, "b": b}}


def make_problem(rng, max_calls=MAX_CALLS):
    """A story of 1 to 3 operations needing at most max_calls tool calls:
    {question, answer, teacher_tools, solution}."""
    while True:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        n_ops = rng.randint(1, 3)
        if rng.random() < 0.25:  # start with a sum of several numbers (counts as one operation)
            parts = [rng.randint(3, 40) for _ in range(rng.randint(3, 4))]
            start = f"{name} collects {', '.join(map(str, parts[:-1]))} and {parts[-1]} {item} " \
                    f"on {len(parts)} days."
            calls, v = [{"name": "sum_numbers", "arguments": {"numbers": parts}}], sum(parts)
            n_ops -= 1
        else:
            v = rng.randint(5, 80)
            start, calls = f"{name} has {v} {item}.", []
        sentences = [start]
        for _ in range(n_ops):
            text, steps, v = _step(rng, v, item)
            sentences.append(text)
            calls += [_call(*s) for s in steps]
        if len(calls) <= max_calls:
            break
    ask = " What number do they end up with?" if n_ops else f" How many {item} is that in total?"
    question = " ".join(sentences) + ask
    return {"question": question, "answer": fmt(v),
            "teacher_tools": sorted({c["name"] for c in calls}), "solution": calls}


def make_problems(n, seed):
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(n)]


def _build(n_train=2000, n_test=300):
    train = make_problems(n_train, seed=1)
    seen = {p["question"] for p in train}
    test = [p for p in make_problems(n_test * 2, seed=2) if p["question"] not in seen][:n_test]
    return [dict(p, split="train") for p in train] + [dict(p, split="test") for p in test]


PROBLEMS = _build()
