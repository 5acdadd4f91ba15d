"""Built-in `units` suite (out of domain): unit conversions, one tool call each.

A bring-your-own suite (README) that no training run sees: its five tools, their
names, argument names and the phrasing appear nowhere in `math`. Each question
asks for one conversion whose tool is named after it ("How many miles is 12
kilometers?" -> kilometers_to_miles); the factors live inside the tools and the
results are rounded to 2 decimals, so the answer cannot be recited. It is the
easiest out-of-domain suite: what it asks of a student is to read the tool list and
pick the tool that fits, nothing more. A student warm-started on plain math scored
0.000 on it (n=200, results/warm-start-ood-units.json at 8fe6bfd: it calls the math tools it
learnt by name); one warm-started on math under per-problem tool names scored
0.410 and 0.335 (two seeds, results/alias-warm-start/ at 8fe6bfd).
Each problem carries `solution`, the call that computes its answer.
"""
import math

from tasks import unique_problems

MAX_VALUE = 1e9           # larger quantities are refused: results and their text stay small


def _value(x):
    if not math.isfinite(x) or abs(x) > MAX_VALUE:
        raise ValueError(f"value out of range (|x| > {MAX_VALUE:g})")
    return x


def kilometers_to_miles(kilometers: float) -> float:
    """Convert a distance in kilometers to miles (rounded to 2 decimals).

    Args:
        kilometers: The distance in kilometers.
    """
    return round(_value(kilometers) * 0.621371, 2)


def kilograms_to_pounds(kilograms: float) -> float:
    """Convert a weight in kilograms to pounds (rounded to 2 decimals).

    Args:
        kilograms: The weight in kilograms.
    """
    return round(_value(kilograms) * 2.204623, 2)


def celsius_to_fahrenheit(celsius: float) -> float:
    """Convert a temperature in degrees Celsius to degrees Fahrenheit (rounded to 2 decimals).

    Args:
        celsius: The temperature in degrees Celsius.
    """
    return round(_value(celsius) * 9 / 5 + 32, 2)


def liters_to_gallons(liters: float) -> float:
    """Convert a volume in liters to US gallons (rounded to 2 decimals).

    Args:
        liters: The volume in liters.
    """
    return round(_value(liters) * 0.264172, 2)


def inches_to_centimeters(inches: float) -> float:
    """Convert a length in inches to centimeters (rounded to 2 decimals).

    Args:
        inches: The length in inches.
    """
    return round(_value(inches) * 2.54, 2)


TOOLS = [kilometers_to_miles, kilograms_to_pounds, celsius_to_fahrenheit, liters_to_gallons,
         inches_to_centimeters]

# ----------------------------------------------------------------------------
# Problem generator: one conversion, said in words.
ASK = {
    kilometers_to_miles: ["How many miles is {v} kilometers?",
                          "A hiking trail is {v} kilometers long. How long is it in miles?",
                          "Convert {v} kilometers to miles."],
    kilograms_to_pounds: ["How many pounds is {v} kilograms?",
                          "A suitcase weighs {v} kilograms. What is its weight in pounds?",
                          "Convert {v} kilograms to pounds."],
    celsius_to_fahrenheit: ["What is {v} degrees Celsius in degrees Fahrenheit?",
                            "The oven is at {v} degrees Celsius. How hot is that in Fahrenheit?",
                            "Convert {v} degrees Celsius to Fahrenheit."],
    liters_to_gallons: ["How many gallons is {v} liters?",
                        "A tank holds {v} liters of water. How many gallons is that?",
                        "Convert {v} liters to gallons."],
    inches_to_centimeters: ["How many centimeters is {v} inches?",
                            "A screen is {v} inches wide. How wide is it in centimeters?",
                            "Convert {v} inches to centimeters."],
}


def make_problem(rng):
    """A conversion question: {question, answer, teacher_tools, solution}."""
    fn = rng.choice(TOOLS)
    value = rng.choice([3, 5, 8, 12, 15, 20, 25, 30, 42, 50, 64, 75, 90, 100, 120, 180, 250])
    arg = fn.__code__.co_varnames[0]
    result = fn(value)
    return {"question": rng.choice(ASK[fn]).format(v=value),
            "answer": f"{result:.2f}".rstrip("0").rstrip("."),
            "teacher_tools": [fn.__name__],
            "solution": [{"name": fn.__name__, "arguments": {arg: value}}]}


PROBLEMS = unique_problems(make_problem, 200, seed=13)
