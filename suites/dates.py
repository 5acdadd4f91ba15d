"""Built-in `dates` suite (out of domain): calendar questions with date tools.

A bring-your-own suite (README) that no training run sees: its tools, their
names, argument names and the phrasing appear nowhere in `math`. Dates are
said in words ("July 4, 2021") and passed to the tools as year, month and day
numbers. One or two calls per question; answers are whole numbers, weekday
names or ISO dates.
Each problem carries `solution`, the calls that compute its answer.
"""
import calendar
import datetime as dt

from tasks import unique_problems

MAX_DAYS = 100_000        # about 270 years: a bigger shift is refused
MONTHS = list(calendar.month_name)[1:]


def _date(year, month, day=1):
    try:
        return dt.date(year, month, day)
    except (ValueError, OverflowError) as e:   # year not in 1..9999, month not 1..12, no such day
        raise ValueError(f"no such date: {e}") from None


def days_in_month(year: int, month: int) -> int:
    """How many days a month has.

    Args:
        year: The year, e.g. 2024.
        month: The month as a number, 1 (January) to 12 (December).
    """
    _date(year, month)
    return calendar.monthrange(year, month)[1]


def weekday_of(year: int, month: int, day: int) -> str:
    """The day of the week of a date, e.g. Monday.

    Args:
        year: The year, e.g. 2024.
        month: The month as a number, 1 to 12.
        day: The day of the month.
    """
    return _date(year, month, day).strftime("%A")


def day_of_year(year: int, month: int, day: int) -> int:
    """The position of a date in its year: 1 for January 1, 32 for February 1.

    Args:
        year: The year, e.g. 2024.
        month: The month as a number, 1 to 12.
        day: The day of the month.
    """
    return _date(year, month, day).timetuple().tm_yday


def date_after(year: int, month: int, day: int, days: int) -> str:
    """The date some days after a date (before it if days is negative), as YYYY-MM-DD.

    Args:
        year: The year of the starting date.
        month: Its month as a number, 1 to 12.
        day: Its day of the month.
        days: How many days to move forward (negative: backward).
    """
    if abs(days) > MAX_DAYS:
        raise ValueError(f"days must be between -{MAX_DAYS} and {MAX_DAYS}")
    try:
        return (_date(year, month, day) + dt.timedelta(days=days)).isoformat()
    except OverflowError:
        raise ValueError("the result is outside the calendar (years 1 to 9999)") from None


TOOLS = [days_in_month, weekday_of, day_of_year, date_after]

# ----------------------------------------------------------------------------
# Problem generator
EVENTS = ["the concert", "the exam", "the wedding", "the launch", "the trip", "the fair",
          "the deadline", "the match", "the opening", "the festival"]


def _call(fn, **args):
    return {"name": fn.__name__, "arguments": args}, fn(**args)


def make_problem(rng):
    """A calendar question: {question, answer, teacher_tools, solution}."""
    d = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 2500))
    y, m, n, event = d.year, d.month, rng.randint(3, 60), rng.choice(EVENTS)
    said = rng.choice([f"{MONTHS[m - 1]} {d.day}, {y}", f"{d.day} {MONTHS[m - 1]} {y}"])
    ymd = dict(year=y, month=m, day=d.day)
    kind = rng.choice(["month", "weekday", "yearday", "after", "last+weekday"])
    if kind == "month":
        q = rng.choice([f"How many days does {MONTHS[m - 1]} {y} have?",
                        f"{event.capitalize()} lasts all of {MONTHS[m - 1]} {y}. For how many days?"])
        calls = [_call(days_in_month, year=y, month=m)]
    elif kind == "weekday":
        q = rng.choice([f"On which day of the week is {said}?",
                        f"{event.capitalize()} is on {said}. What weekday is that?"])
        calls = [_call(weekday_of, **ymd)]
    elif kind == "yearday":
        q = f"Which day of the year is {said}? (January 1 is day 1.)"
        calls = [_call(day_of_year, **ymd)]
    elif kind == "after":
        q = rng.choice([f"Which date is {n} days after {said}? Answer as YYYY-MM-DD.",
                        f"{event.capitalize()} is {n} days after {said}. On which date is it "
                        f"(YYYY-MM-DD)?"])
        calls = [_call(date_after, **ymd, days=n)]
    else:
        q = f"On which day of the week is the last day of {MONTHS[m - 1]} {y}?"
        first = _call(days_in_month, year=y, month=m)
        calls = [first, _call(weekday_of, year=y, month=m, day=first[1])]
    return {"question": q, "answer": str(calls[-1][1]),
            "teacher_tools": sorted({c["name"] for c, _ in calls}),
            "solution": [c for c, _ in calls]}


PROBLEMS = unique_problems(make_problem, 200, seed=13)
