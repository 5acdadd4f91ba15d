"""Built-in `lookup` suite (out of domain): single-hop look-ups in an invented directory.

A bring-your-own suite (README) that no training run sees. Its world is the one the
`retrieval` suite searches (invented people, towns, companies and products, so no
model knows the answers), but each question here needs one look-up, not two, and the
tools are six directory look-ups, one per kind of fact, instead of a search engine.
What it asks of a student is to pick the look-up that fits the question, call it with
the name the question gives, and box the result.
Each problem carries `solution`, the call that answers it (teacher.py replays it).
"""
import random
import re

from suites.retrieval import invent_world

WORLD = invent_world()


def _norm(text):
    """Lower case, single spaces, no punctuation but apostrophes, no leading 'the'."""
    text = " ".join(re.sub(r"[^\w' ]", " ", str(text)[:500].lower()).split())
    return text[4:] if text.startswith("the ") else text


_NORMED = {kind: {e: f" {_norm(e)} " for e in WORLD[kind]}       # once, not on every call
           for kind in ("people", "towns", "companies", "products")}


def _find(kind, what, name):
    """The entry of WORLD[kind] named in `name`: as a search box does, the query may hold
    more than the name ("Kalo Renmi, the person") and ignores case; the longest name wins."""
    query = f" {_norm(name)} "
    named = [e for e, normed in _NORMED[kind].items() if normed in query]
    if not named:
        raise ValueError(f"no {what} called {str(name)[:200]!r} in the directory")
    return max(named, key=len)


def birth_town(person: str) -> str:
    """The town a person was born in, from the directory.

    Args:
        person: The person's full name.
    """
    return WORLD["birth"][_find("people", "person", person)]


def trade_of(person: str) -> str:
    """The trade a person worked in, from the directory.

    Args:
        person: The person's full name.
    """
    return WORLD["job"][_find("people", "person", person)][2:]       # "a potter" -> "potter"


def country_of_town(town: str) -> str:
    """The country a town lies in, from the directory.

    Args:
        town: The town's name.
    """
    return WORLD["town_country"][_find("towns", "town", town)]


def company_founder(company: str) -> str:
    """The person who founded a company, from the directory.

    Args:
        company: The company's name.
    """
    return WORLD["founder"][_find("companies", "company", company)]


def founding_year(company: str) -> int:
    """The year a company was founded, from the directory.

    Args:
        company: The company's name.
    """
    return WORLD["founded"][_find("companies", "company", company)]


def product_maker(product: str) -> str:
    """The company that makes a product, from the directory.

    Args:
        product: The product's name.
    """
    return WORLD["maker"][_find("products", "product", product)]


TOOLS = [birth_town, trade_of, country_of_town, company_founder, founding_year, product_maker]


def _problems(seed=13):
    """One question per entry of the directory (260), in a stable shuffled order."""
    w, out = WORLD, []
    for i, p in enumerate(w["people"]):                   # birth town or trade, in turn
        out.append((f"In which town was {p} born?", birth_town, p) if i % 2 else
                   (f"What was {p}'s trade?", trade_of, p))
    for t in w["towns"]:
        out.append((f"In which country is the town of {t}?", country_of_town, t))
    for i, c in enumerate(w["companies"]):                # founder or year, in turn
        out.append((f"Who founded {c}?", company_founder, c) if i % 2 else
                   (f"In which year was {c} founded?", founding_year, c))
    for pr in w["products"]:
        out.append((f"Which company makes {pr}?", product_maker, pr))
    random.Random(seed).shuffle(out)
    return [{"question": q, "answer": str(fn(key)), "teacher_tools": [fn.__name__],
             "solution": [{"name": fn.__name__, "arguments": {fn.__code__.co_varnames[0]: key}}]}
            for q, fn, key in out]


PROBLEMS = _problems()
