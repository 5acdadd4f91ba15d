"""Time-to-accuracy of `make train` runs: held-out accuracy against the wall-clock minute each
evaluation printed, one line a run, one colour a CPU kind, and the first minute at which the
RL phase's paired 95% CI excluded 0.

    python experiments/time_to_accuracy.py OUT.png KIND=RUN[,RUN...] [KIND=RUN,...]

Each RUN is a train.py run folder (its evals.json). The minute of an evaluation is the training
minutes before it plus every evaluation's minutes up to and including it (model loading, under
a minute, is not counted), so the last point is the run's wall time less the loading. The RL
phase at an evaluation is its accuracy minus the accuracy where RL started, paired by problem.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate import paired_bootstrap_ci  # noqa: E402

RL_START = "rl_start"
TARGET_MINUTES = {15: "2 AVX-512 cores", 30: "2 AVX2 cores"}  # the class-period goals, drawn dotted


def timeline(run):
    """[(name, minute printed, accuracy, n, RL-phase gain or None, CI low, CI high)], in order."""
    with open(os.path.join(run, "evals.json")) as f:
        evals = json.load(f)
    rows, spent = [], 0.0
    for name, e in evals.items():
        spent += e["eval_minutes"]
        gain = lo = hi = None
        if RL_START in evals and name not in ("start", RL_START):
            gain, lo, hi = paired_bootstrap_ci(e["correct"], evals[RL_START]["correct"])
        minute = e["train_minutes"] + spent
        rows.append((name, minute, e["accuracy"], len(e["correct"]), gain, lo, hi))
    return rows


def main(out_png, groups):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    print("| CPU | run | RL phase at each evaluation (minute printed): gain [95% CI] "
          "| first minute CI > 0 |")
    print("|---|---|---|---|")
    for colour, (kind, runs) in zip(("C0", "C3", "C2", "C1"), groups):
        for i, run in enumerate(runs):
            rows = timeline(run)
            ax.plot([r[1] for r in rows], [r[2] for r in rows], "-", color=colour, alpha=0.6,
                    label=kind if i == 0 else None)
            for _, minute, acc, _, _, lo, _ in rows:    # filled: the RL phase's CI > 0
                ax.plot(minute, acc, "o", color=colour, mfc=colour if lo and lo > 0 else "white")
            rl = [r for r in rows if r[4] is not None]
            first = next((f"{m:.1f}" for _, m, *_, lo, _ in rl if lo > 0), "never")
            cells = ", ".join(f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}] ({m:.1f})"
                              for _, m, _, _, g, lo, hi in rl)
            print(f"| {kind} | {os.path.basename(run.rstrip('/'))} | {cells} | {first} |")
    for minutes, cpu in TARGET_MINUTES.items():
        ax.axvline(minutes, color="grey", ls=":", lw=1)
        ax.annotate(f"goal: {minutes} min on {cpu}", (minutes - 0.3, 0.02), rotation=90,
                    fontsize=7, ha="right", color="grey")
    ax.set(xlabel="wall-clock minutes (evaluations included, loading not)",
           ylabel="held-out math accuracy (greedy)",
           title="make train: the base (n=25), RL start, every 5 GRPO steps (n=200)")
    ax.legend(title="filled: RL phase's 95% CI > 0", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 3 or not all("=" in g for g in sys.argv[2:]):
        sys.exit(__doc__.split("\n\n")[1].strip())
    main(sys.argv[1], [(g.split("=", 1)[0], g.split("=", 1)[1].split(",")) for g in sys.argv[2:]])
