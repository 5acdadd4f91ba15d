"""Reproduce the paper's comparison at small scale: base vs SFT vs sparse RL vs MENTOR.

    python experiments/replicate.py --preset cpu            # embedded student, 2 CPU cores
    python experiments/replicate.py --preset gpu            # Qwen2.5-0.5B on one GPU
    python experiments/replicate.py --preset cpu --seeds 0 1 2 --ablations

From one student and one set of teacher trajectories it trains, per seed:
    sft            SFT on the teacher's trajectories (warm_steps + rl_steps SFT steps)
    grpo-sparse    warm start, then GRPO with the sparse reward
    grpo-mentor    warm start, then GRPO with MENTOR's composite reward
    (--ablations)  grpo-partial, grpo-no_tool_match, grpo-f1
The warm start (SFT, cold start for a student that calls no tools) is shared by
every RL run of a seed and is evaluated too, as the point RL starts from. Every
checkpoint and the base model are evaluated on math (in domain), retrieval and
BFCL (out of domain); one table (mean +- std over seeds), evaluate.py's plots
and the training curves are written.

It resumes: a finished run (result.json) or evaluation (eval_*.json) is
skipped, an unfinished run continues from its checkpoint.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# eval_limit: problems per suite (BFCL: per category, 5 categories). The cpu preset
# took about 1 h on 2 cores (README); BFCL's long prompts make it the costly suite there.
PRESETS = {
    "cpu": dict(student="SmolLM2-135M", warm_steps=6, rl_steps=8, batch_size=2, group_size=4,
                eval_limit={"math": 24, "retrieval": 24, "bfcl": 4}, out="runs/replicate-cpu"),
    "gpu": dict(student="Qwen2.5-0.5B", warm_steps=0, rl_steps=150, batch_size=16, group_size=8,
                eval_limit={"math": 200, "retrieval": 160, "bfcl": 40}, out="runs/replicate-gpu"),
    # a few minutes end to end: checks the pipeline, says nothing about the method
    "smoke": dict(student="SmolLM2-135M", warm_steps=1, rl_steps=1, batch_size=1, group_size=2,
                  eval_limit={"math": 2, "retrieval": 2, "bfcl": 1}, out="runs/replicate-smoke",
                  max_new_tokens=16, max_total_tokens=32),
}
SUITES = ["math", "retrieval", "bfcl"]


def run_train(cfg_kwargs):
    from train import Config, train
    out = cfg_kwargs["out"]
    if os.path.exists(os.path.join(out, "result.json")):
        return
    cfg = Config(**cfg_kwargs, resume=os.path.exists(os.path.join(out, "checkpoint.pt")))
    train(cfg)


def run_eval(name, model, root, limit, gen):
    from evaluate import evaluate_model
    path = os.path.join(root, f"eval_{name}.json")
    if not os.path.exists(path):
        res = evaluate_model(model, SUITES, limit=limit, **gen)
        with open(path + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(path + ".tmp", path)
    with open(path) as f:
        return json.load(f)


def curves(runs, root):
    """training_curves.png: reward and rollout accuracy per GRPO step, SFT loss per SFT step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, out in runs.items():
        path = os.path.join(out, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        rows = [json.loads(line) for line in open(path)]
        rl = [r for r in rows if r["phase"] == "grpo"]
        sft = [r for r in rows if r["phase"] == "sft"]
        if rl:
            axes[0].plot([r["step"] for r in rl], [r["reward_mean"] for r in rl], "o-", label=name)
            axes[1].plot([r["step"] for r in rl], [r["accuracy"] for r in rl], "o-", label=name)
        if sft:
            axes[2].plot([r["step"] for r in sft], [r["sft_loss"] for r in sft], "o-", label=name)
    axes[0].set_title("mean reward (each run's own reward)")
    axes[1].set_title("rollout accuracy (sampled, T=1)")
    axes[2].set_title("SFT loss (teacher trajectories)")
    for ax, xl in zip(axes, ["GRPO step", "GRPO step", "SFT step"]):
        ax.set_xlabel(xl)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "training_curves.png"), dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ablations", action="store_true")
    args = ap.parse_args(argv)
    p = dict(PRESETS[args.preset])
    root = p.pop("out")
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    gen = {k: p[k] for k in ("max_new_tokens", "max_total_tokens") if k in p}
    from model import DEFAULT_STUDENT
    from train import GPU_PRESET
    # eval_n=0: train.py skips its own before/after check; every model is evaluated below
    common = dict(student=p["student"], batch_size=p["batch_size"], group_size=p["group_size"],
                  eval_n=0, **gen)
    if p["student"] != DEFAULT_STUDENT:  # lr, token limits and micro-batch suited to one GPU
        common = {**{k: v for k, v in GPU_PRESET.items()
                     if k not in ("steps", "warmup_sft_steps", "eval_n")}, **common}
    rewards = ["sparse", "mentor"] + (["partial", "no_tool_match", "f1"] if args.ablations else [])
    runs = {}
    for seed in args.seeds:
        warm = None
        if p["warm_steps"]:
            warm = os.path.join(root, f"warm-s{seed}")
            run_train(dict(common, method="sft", steps=p["warm_steps"], seed=seed, out=warm))
            runs[f"warm-s{seed}"] = warm            # where every RL run starts
        sft = os.path.join(root, f"sft-s{seed}")
        run_train(dict(common, method="sft", steps=p["warm_steps"] + p["rl_steps"], seed=seed,
                       out=sft))
        runs[f"sft-s{seed}"] = sft
        for r in rewards:
            out = os.path.join(root, f"grpo-{r}-s{seed}")
            run_train(dict(common, method="grpo", reward=r, init=warm, warmup_sft_steps=0,
                           steps=p["rl_steps"], seed=seed, out=out))
            runs[f"grpo-{r}-s{seed}"] = out

    results = {"base": run_eval("base", p["student"], root, p["eval_limit"], gen)}
    for name, out in runs.items():
        results[name] = run_eval(name, out, root, p["eval_limit"], gen)

    # mean +- std over seeds per method
    methods = ["base"] + (["warm"] if p["warm_steps"] else []) + ["sft"] + \
        [f"grpo-{r}" for r in rewards]
    lines = ["| method | seeds | " + " | ".join(f"{s} acc" for s in SUITES) + " | " +
             " | ".join(f"{s} tool-JSD" for s in SUITES) + " |",
             "|" + "---|" * (2 + 2 * len(SUITES))]
    summary = {}
    for m in methods:
        rs = [results["base"]] if m == "base" else \
            [results[f"{m}-s{s}"] for s in args.seeds]
        cells = []
        for key in ("accuracy", "tool_jsd"):
            for s in SUITES:
                v = np.array([r[s][key] for r in rs])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        summary[m] = {s: {k: float(np.mean([r[s][k] for r in rs])) for k in ("accuracy", "tool_jsd")}
                      for s in SUITES}
        lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    from evaluate import plot
    plot(summary, SUITES, root)
    curves(runs, root)
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(table + f"\n\npreset {args.preset}, seeds {args.seeds}, "
                        f"wall time this invocation {time.time() - t0:.0f} s\n")
    print(f"wrote {root}/table.md, accuracy.png, jsd_vs_accuracy.png, training_curves.png")


if __name__ == "__main__":
    main()
