"""Why two evaluations of one checkpoint disagreed (results/mechanism/REPORT.md): the same fp32
weights, evaluated greedily in bf16 three ways on the first N held-out math problems.

    python experiments/eval_paths.py RUN N OUT.json

    cast        every tensor of a copy cast to bf16, the rotary inv_freq included, 200 rows at
                a time: train.py's own evaluations until 2026-12-07 (`.to(bf16)`)
    params      only the parameters cast, buffers kept fp32 (model.rollout_weights now, and
                what from_pretrained(dtype=bf16) gives), 200 rows at a time
    params-100  the same, 100 rows at a time: evaluate.py's batches then
Prints how many problems' 0/1 (and generated token counts) differ between each pair.
"""
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate import generation_limits, greedy_rollouts  # noqa: E402
from model import load_model, rollout_weights  # noqa: E402
from tasks import load_suite  # noqa: E402


def main(run, n, out):
    tok, model = load_model(run, device="cpu")                    # fp32 master weights
    limits = {k: v for k, v in generation_limits(run).items() if k != "precision"}
    suite = load_suite("math")
    problems = suite.split("test")[:n]
    copies = {"cast": copy.deepcopy(model).to(torch.bfloat16).eval(),
              "params": rollout_weights(model, torch.bfloat16)}
    ways = {"cast": ("cast", 200), "params": ("params", 200), "params-100": ("params", 100)}
    res = {}
    for name, (which, rows) in ways.items():
        t0 = time.time()
        rs = greedy_rollouts(copies[which], tok, suite, problems, rows, **limits)
        res[name] = {"correct": [int(suite.is_correct(r)) for r in rs],
                     "tokens": [r.n_generated for r in rs], "seconds": round(time.time() - t0)}
        print(name, sum(res[name]["correct"]) / n, res[name]["seconds"], "s", flush=True)
    pairs = {}
    for a, b in (("cast", "params"), ("params", "params-100"), ("cast", "params-100")):
        pairs[f"{a} vs {b}"] = {
            "problems whose 0/1 differ": sum(x != y for x, y in
                                             zip(res[a]["correct"], res[b]["correct"])),
            "problems whose generated length differs": sum(x != y for x, y in
                                                           zip(res[a]["tokens"], res[b]["tokens"]))}
        print(f"{a} vs {b}:", pairs[f"{a} vs {b}"])
    with open(out, "w") as f:
        json.dump({"run": run, "n": n, "inv_freq dtype": {k: str(next(
            b for nm, b in c.named_buffers() if "inv_freq" in nm).dtype) for k, c in copies.items()},
            "results": res, "pairs": pairs}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
