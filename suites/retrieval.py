"""Built-in `retrieval` suite (out of domain): two-hop questions over an invented corpus.

Mirrors the paper's retrieval-augmented multi-hop QA (Bamboogle, HotpotQA,
2Wiki) without a web index: a few hundred short passages about invented
people, towns, companies and products, so no model can know the answers,
and one tool, `search(query)`, ranking passages with a hand-written BM25.
Every question needs two searches (e.g. person -> birthplace -> country).
"""
import math
import random
import re
from collections import Counter

SEED = 7
TOP_K = 3
BM25_K1, BM25_B = 1.5, 0.75

_SYL = ["ka", "lo", "mi", "ren", "tor", "vel", "zu", "bri", "dan", "fel", "gor", "hal", "is",
        "jun", "kel", "mor", "nal", "ost", "pra", "quin", "sar", "tam", "ul", "vos", "wyn", "yor"]


def _word(rng, n):
    return "".join(rng.choice(_SYL) for _ in range(n)).capitalize()


def _unique(rng, n, make):
    seen = set()
    while len(seen) < n:
        seen.add(make())
    return sorted(seen)


def invent_world(seed=SEED):
    """Deterministic invented world -> {"passages": [...], kind: {name: passage}, facts}.
    The `lookup` suite reads the same world one record at a time."""
    rng = random.Random(seed)
    countries = _unique(rng, 12, lambda: _word(rng, 3) + "ia")
    towns = _unique(rng, 60, lambda: _word(rng, 2) + rng.choice(["ton", "mouth", "burg", "vale"]))
    people = _unique(rng, 120, lambda: f"{_word(rng, 2)} {_word(rng, 2)}")
    companies = _unique(rng, 40, lambda: _word(rng, 2) + rng.choice([" Labs", " Works", " Foundry"]))
    products = _unique(rng, 40, lambda: "the " + _word(rng, 2).lower() + rng.choice(["er", "ix", "o"]))
    rng.shuffle(people)
    jobs = ["a potter", "a surveyor", "a violinist", "a beekeeper", "a cartographer", "a chemist"]

    w = {"people": {}, "towns": {}, "companies": {}, "products": {},
         "town_country": {t: rng.choice(countries) for t in towns},
         "order": people}                       # the shuffled people, as the problems use them
    w["birth"] = {p: rng.choice(towns) for p in people}
    w["founder"] = {c: people[i] for i, c in enumerate(companies)}
    w["maker"] = {pr: companies[i] for i, pr in enumerate(products)}
    w["job"], w["founded"] = {}, {}
    for t in towns:
        w["towns"][t] = (f"{t} is a town in {w['town_country'][t]}, known for its "
                         f"{rng.choice(['markets', 'bridges', 'orchards', 'festivals'])}.")
    for p in people:
        w["job"][p] = rng.choice(jobs)
        w["people"][p] = f"{p} was born in {w['birth'][p]} and worked as {w['job'][p]}."
    for c in companies:
        w["founded"][c] = rng.randint(1890, 2015)
        w["companies"][c] = f"{c} was founded by {w['founder'][c]} in {w['founded'][c]}."
    for pr in products:
        w["products"][pr] = f"{pr[0].upper() + pr[1:]} is a device made by {w['maker'][pr]}."
    w["passages"] = [*w["towns"].values(), *w["people"].values(), *w["companies"].values(),
                     *w["products"].values()]
    return w


def build_world(seed=SEED):
    """Deterministic invented world -> (passages, problems)."""
    w = invent_world(seed)
    people, companies, products = w["order"], list(w["companies"]), list(w["products"])
    town_country, birth, founder, maker = w["town_country"], w["birth"], w["founder"], w["maker"]
    passages = w["passages"]
    problems = []
    for p in people[40:]:
        problems.append({"question": f"In which country was {p} born?",
                         "answer": town_country[birth[p]], "hops": [p, birth[p]]})
    for c in companies:
        problems.append({"question": f"In which town was the founder of {c} born?",
                         "answer": birth[founder[c]], "hops": [c, founder[c]]})
    for pr in products:
        problems.append({"question": f"Who founded the company that makes {pr}?",
                         "answer": founder[maker[pr]], "hops": [pr, maker[pr]]})
    for q in problems:
        q["teacher_tools"] = ["search"]
    return passages, problems


PASSAGES, PROBLEMS = build_world()


def tokenize(text):
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 over a fixed list of passages."""

    def __init__(self, docs, k1=BM25_K1, b=BM25_B):
        self.docs, self.k1, self.b = docs, k1, b
        self.tf = [Counter(tokenize(d)) for d in docs]
        self.len = [sum(tf.values()) for tf in self.tf]
        self.avg = sum(self.len) / len(docs)
        df = Counter(w for tf in self.tf for w in tf)
        n = len(docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def scores(self, query):
        q = tokenize(query)
        out = []
        for tf, length in zip(self.tf, self.len):
            s = 0.0
            for w in q:
                if w in tf:
                    f = tf[w]
                    s += self.idf[w] * f * (self.k1 + 1) / (
                        f + self.k1 * (1 - self.b + self.b * length / self.avg))
            out.append(s)
        return out

    def top(self, query, k):
        s = self.scores(query)
        order = sorted(range(len(s)), key=lambda i: -s[i])
        return [self.docs[i] for i in order[:k] if s[i] > 0]


INDEX = BM25(PASSAGES)


def search(query: str) -> str:
    """Search the encyclopedia and return the most relevant passages.

    Args:
        query: What to look for, e.g. a name.
    """
    if len(query) > 500:
        raise ValueError("query longer than 500 characters")
    hits = INDEX.top(query, TOP_K)
    return "\n".join(hits) if hits else "no results"


TOOLS = [search]
