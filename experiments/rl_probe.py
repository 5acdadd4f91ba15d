"""GRPO from a run folder with greedy held-out evaluations every few steps: the learning curve
of one setting, in minutes rather than a whole replication.

    python experiments/rl_probe.py '{"init": "runs/warm", "steps": 15, "batch_size": 8,
        "group_size": 4, "lr": 1e-5, "eval_n": 100}' 5 runs/probe.jsonl [BEFORE.json]

The JSON holds train.Config fields; the probe evaluates greedily on the first eval_n math test
problems at step 0 and every `every` steps, printing the paired bootstrap CI of the change.
One line per GRPO step and per evaluation goes to the output JSONL (results/rl-probes/REPORT.md).
BEFORE.json, an experiments/paired_eval.py output whose "before" is the same init evaluated on
the same eval_n problems, stands in for the step-0 evaluation (greedy, so it would be the same).
Dr. GRPO's advantage (r - group mean, without the division by the group's std, which leaves
a small reward difference such as MENTOR's 0.06 tool credit small) is the Config field
"advantage": "dr_grpo" (train.py --advantage dr_grpo).
"""
import copy
import json
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate import accuracy, paired_bootstrap_ci  # noqa: E402
from experiments.paired_eval import read_before  # noqa: E402
from model import load_model  # noqa: E402
from tasks import load_suite  # noqa: E402
from train import Config, grpo_step  # noqa: E402


def main(config_json, every, out, before=None):
    cfg = Config(**json.loads(config_json))
    random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed)
    tok, model = load_model(cfg.init, device=cfg.device)
    suite = load_suite(cfg.suite)
    test, train_set = suite.split("test")[:cfg.eval_n], suite.split("train")
    ref = copy.deepcopy(model).requires_grad_(False).eval() if cfg.kl_coef > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    with open(out, "w") as log:
        e0 = read_before(before, len(test)) if before else accuracy(model, tok, suite, test, cfg)
        print("step 0", e0["accuracy"], flush=True)
        log.write(json.dumps({"eval_step": 0, **e0}) + "\n")

        def draw():
            return random.sample(train_set, cfg.batch_size)
        for step in range(1, cfg.steps + 1):
            t0 = time.time()
            m = grpo_step(model, ref, opt, tok, suite, draw(), cfg, draw)
            m.update(step=step, step_time=time.time() - t0)
            log.write(json.dumps(m) + "\n"); log.flush()
            print(step, {k: round(m[k], 3) for k in ("reward_mean", "accuracy",
                         "groups_with_signal", "sample_batches", "trained_rows", "kl",
                         "response_tokens", "step_time")}, flush=True)
            if step % every == 0:
                e = accuracy(model, tok, suite, test, cfg)
                ci = paired_bootstrap_ci(e["correct"], e0["correct"])
                print("eval step", step, e["accuracy"], "difference, 95% CI", ci, flush=True)
                log.write(json.dumps({"eval_step": step, **e, "ci": ci}) + "\n"); log.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
