"""The course text's links: every relative link in the README, docs/ and the results' reports
points at a file that exists (and at a heading of it, for an anchor), and every .md file they or
the code cite exists."""
import dataclasses
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(glob.glob("docs/*.md", root_dir=ROOT)) + \
    sorted(glob.glob("results/**/*.md", root_dir=ROOT, recursive=True))


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text, fence, out = open(path).read(), False, set()
    for line in text.split("\n"):
        fence ^= line.startswith("```")
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = os.path.join(ROOT, doc)
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)   # code is not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue                                            # http:, mailto:
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        assert os.path.exists(dest), f"{doc}: {target} does not exist"
        if anchor and dest.endswith(".md"):
            assert anchor in anchors(dest), f"{doc}: no heading #{anchor} in {file or doc}"


def test_cited_md_files_exist():
    """A name like docs/paper.md or results/rl-probes/REPORT.md in the text or the code is a real file."""
    sources = DOCS + sorted(glob.glob("*.py", root_dir=ROOT)) + \
        sorted(glob.glob("tests/*.py", root_dir=ROOT)) + \
        sorted(glob.glob("experiments/*.py", root_dir=ROOT))
    for src in sources:
        text = open(os.path.join(ROOT, src)).read()
        cited_names = re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b", text)
        if src.endswith(".py"):     # code: paths and CAPS names, not files it writes (table.md)
            cited_names = [c for c in cited_names if "/" in c or re.fullmatch(r"[A-Z]+\.md", c)]
        for cited in cited_names:
            here = os.path.join(os.path.dirname(os.path.join(ROOT, src)), cited)
            assert os.path.exists(os.path.join(ROOT, cited)) or os.path.exists(here), \
                f"{src} cites {cited}, which does not exist"


def test_readme_reading_order_counts_are_current():
    """The README's `wc -l` block is what the command prints today (it went stale before)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"\$ wc -l ([^\n]+)\n(.*?)```", text, re.S)
    files, rows = block.group(1).split(), block.group(2).strip().split("\n")
    counts = {name: int(n) for n, name in (r.split() for r in rows)}
    for f in files:
        assert counts[f] == len(open(os.path.join(ROOT, f)).read().splitlines()), f
    assert counts["total"] == sum(counts[f] for f in files) <= 900


def test_readme_trl_table_matches_the_config():
    """The README's table of TRL names: each flag in it is a train.py flag, and each TRL name a
    Config comment gives ([TRL: x], the --help text) is in the table (they went stale before)."""
    from runs import field_help              # here, not at the top: the other tests need no torch
    from train import Config
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index("| ours (train.py) | TRL GRPOConfig |")
    table = text[start:text.index("\n\n", start)]
    flags = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(Config)}
    named = set(re.findall(r"`(--[a-z-]+)", table))
    assert named and named <= flags, named - flags
    for name, help_text in field_help(Config).items():
        for trl in re.findall(r"\[TRL: ([^\]]+)\]", help_text):
            for word in re.findall(r"[a-z_]{3,}", trl.split('"')[0]):
                assert word in table, (name, word)
