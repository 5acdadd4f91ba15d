"""Built-in `shop` suite (out of domain): shopping arithmetic with price tools.

A bring-your-own suite (README) that no training run sees: its four tools, their
names, argument schemas and the question phrasing appear nowhere in `math`.
One or two tool calls per question (a discount, a tax, a currency, a unit
price); the exchange rates live inside the tool, so the question cannot be
answered without calling it. Each problem carries `solution`, the calls that
compute its answer (teacher.py's reference solver replays them).
"""
import math

from tasks import unique_problems

MAX_AMOUNT = 1e9          # larger amounts are refused: results and their text stay small
RATES_PER_USD = {"USD": 1.0, "EUR": 0.8, "GBP": 0.5, "JPY": 150.0, "CHF": 0.9, "CAD": 1.25}


def _money(x):
    if not math.isfinite(x) or abs(x) > MAX_AMOUNT:
        raise ValueError(f"amount out of range (|x| > {MAX_AMOUNT:g})")
    return round(x, 2)


def apply_discount(price: float, percent_off: float) -> float:
    """Price after a percentage discount.

    Args:
        price: The original price.
        percent_off: The discount in percent, 0 to 100 (25 means 25% off).
    """
    if not 0 <= percent_off <= 100:
        raise ValueError("percent_off must be between 0 and 100")
    return _money(_money(price) * (1 - percent_off / 100))


def add_sales_tax(amount: float, tax_percent: float) -> float:
    """Amount with sales tax added.

    Args:
        amount: The amount before tax.
        tax_percent: The tax rate in percent, 0 to 100 (8 means 8%).
    """
    if not 0 <= tax_percent <= 100:
        raise ValueError("tax_percent must be between 0 and 100")
    return _money(_money(amount) * (1 + tax_percent / 100))


def convert_currency(amount: float, from_currency: str, to_currency: str) -> float:
    """Convert money between currencies at the shop's fixed rates.

    Args:
        amount: The amount of money.
        from_currency: Code of its currency: USD, EUR, GBP, JPY, CHF or CAD.
        to_currency: Code of the currency wanted: USD, EUR, GBP, JPY, CHF or CAD.
    """
    codes = [str(c)[:8].upper() for c in (from_currency, to_currency)]
    for c in codes:
        if c not in RATES_PER_USD:
            raise ValueError(f"unknown currency {c!r}; known: {', '.join(RATES_PER_USD)}")
    return _money(_money(amount) / RATES_PER_USD[codes[0]] * RATES_PER_USD[codes[1]])


def cost_of_items(unit_price: float, quantity: int) -> float:
    """Total cost of several items with the same price.

    Args:
        unit_price: The price of one item.
        quantity: How many items (0 to 100000).
    """
    if not 0 <= quantity <= 100_000:
        raise ValueError("quantity must be between 0 and 100000")
    return _money(_money(unit_price) * quantity)


TOOLS = [apply_discount, add_sales_tax, convert_currency, cost_of_items]

# ----------------------------------------------------------------------------
# Problem generator: one or two calls, each said in words.
ITEMS = ["lamp", "jacket", "backpack", "kettle", "pair of boots", "chair", "watch", "board game",
         "desk", "bicycle helmet", "blender", "rug"]
SMALL = ["notebook", "mug", "candle", "pen", "sock", "plate", "towel", "soap bar"]
NAMES = {"EUR": "euros", "GBP": "pounds", "JPY": "yen", "CHF": "Swiss francs",
         "CAD": "Canadian dollars"}


def _call(fn, **args):
    return {"name": fn.__name__, "arguments": args}, fn(**args)


def _discount(rng, price, item):
    pct = rng.choice([10, 15, 20, 25, 30, 40, 50])
    text = rng.choice([f"The {item} is on sale at {pct}% off.",
                       f"A coupon takes {pct} percent off the {item}.",
                       f"The store marks the {item} down by {pct}%."])
    return text, _call(apply_discount, price=price, percent_off=pct)


def _tax(rng, price, item):
    pct = rng.choice([5, 6, 7, 8, 10, 12, 20])
    text = rng.choice([f"Sales tax of {pct}% is added at the register.",
                       f"Then {pct}% tax is charged on the {item}."])
    return text, _call(add_sales_tax, amount=price, tax_percent=pct)


def make_problem(rng):
    """A shopping question: {question, answer, teacher_tools, solution}."""
    kind = rng.choice(["discount", "tax", "convert", "items", "discount+tax", "items+discount",
                       "items+convert", "discount+convert"])
    item, small = rng.choice(ITEMS), rng.choice(SMALL)
    value = rng.choice([20, 24, 30, 36, 40, 45, 50, 60, 75, 80, 90, 120, 150, 200, 240])
    target = rng.choice([c for c in RATES_PER_USD if c != "USD"])
    calls = []
    if kind.startswith("items"):
        unit, qty = rng.choice([2, 3, 4, 5, 6, 8, 12, 15]), rng.randint(2, 9)
        sentences = [f"One {small} costs {unit} US dollars. Someone buys {qty} of them."]
        call, value = _call(cost_of_items, unit_price=unit, quantity=qty)
        calls, item = [call], f"{small}s"
    else:
        sentences = [f"A {item} costs {value} US dollars."]
    for part, step in (("discount", _discount), ("tax", _tax)):
        if part in kind:
            text, (call, value) = step(rng, value, item)
            sentences.append(text)
            calls.append(call)
    if "convert" in kind:
        call, value = _call(convert_currency, amount=value, from_currency="USD",
                            to_currency=target)
        calls.append(call)
        ask = f"How much is that in {NAMES[target]}?"
    else:
        ask = rng.choice(["How much is paid in the end?", "What is the final price?",
                          "What is the total?"])
    return {"question": " ".join(sentences + [ask]), "answer": f"{value:.2f}".rstrip("0").rstrip("."),
            "teacher_tools": sorted({c["name"] for c in calls}), "solution": calls}


PROBLEMS = unique_problems(make_problem, 200, seed=11)
