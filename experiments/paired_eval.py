"""Greedy held-out accuracy of two run folders on the same math test problems, and the paired
bootstrap 95% CI of the difference: the RL phase of a run measured on more problems than its
own evaluation used.

    python experiments/paired_eval.py BEFORE_RUN AFTER_RUN N OUT.json

BEFORE_RUN and AFTER_RUN are train.py run folders (or model names); the evaluation is the one
train.py makes (evaluate.accuracy with train.Config's default token limits), on the first N test problems.
BEFORE_RUN may also be an earlier OUT.json: its "before" evaluation is reused (greedy, so the
same run evaluates the same way again), which halves the time when several runs start from
one warm start.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate import accuracy, paired_bootstrap_ci  # noqa: E402
from model import load_model  # noqa: E402
from runs import write_json  # noqa: E402
from tasks import load_suite  # noqa: E402
from train import Config  # noqa: E402


def read_before(path, n):
    """The "before" evaluation of an earlier OUT.json, checked to cover the first n problems."""
    with open(path) as f:
        before = json.load(f)["before"]
    if len(before["correct"]) != n:
        sys.exit(f"{path}: its 'before' covers {len(before['correct'])} problems, not {n}")
    return before


def main(before, after, n, out):
    cfg, suite = Config(), load_suite("math")
    test = suite.split("test")[:n]
    res = {}
    if before.endswith(".json"):
        res["before"] = read_before(before, n)
    for name, run in (("before", before), ("after", after)):
        if name in res:
            continue
        t0 = time.time()
        tok, model = load_model(run)
        res[name] = {"run": run, **accuracy(model, tok, suite, test, cfg),
                     "seconds": round(time.time() - t0)}
        print(f"{name} {run}: {res[name]['accuracy']:.3f} (n={n}, {res[name]['seconds']} s)",
              flush=True)
    d, lo, hi = paired_bootstrap_ci(res["after"]["correct"], res["before"]["correct"])
    res["difference"] = {"mean": d, "ci95": [lo, hi], "n": n}
    print(f"after - before: {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}], paired bootstrap, n={n}")
    write_json(out, res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
