"""Where the paper says the dense reward matters: MENTOR against the sparse reward at equal
rollout budgets, from a weak and from an ordinary warm start, on several seeds.

    python experiments/mechanism.py --cell weak --seeds 0 1 2     # plain GRPO, weak warm start
    python experiments/mechanism.py --cell budget --seeds 0 1 2   # dynamic sampling, make train's
    python experiments/mechanism.py --cell weak --seeds 0 1 2 --baselines   # + SFT, tool use
    python experiments/mechanism.py --report                      # REPORT tables and figure only

Per cell and seed: one warm start (train.py --method sft, the cell's SFT steps), then GRPO from
it with each reward (train.py --init), stopped once BUDGET rollouts are drawn (not a number of
optimizer steps: dynamic sampling pays for a flat group with more rollouts, and counting steps
hid that) and evaluated greedily on the same EVAL_N held-out math problems every EVAL_ROLLOUTS
rollouts. The two rewards of a seed share the warm start, the question order and the problems
evaluated, so their difference is paired by problem and by seed.

  weak    a warm start of WEAK_SFT_STEPS SFT steps, short enough that most sparse groups are
          flat; plain GRPO (one batch a step, a flat group gets advantage 0): the regime the
          paper's reward is for, where the sparse reward starves
  budget  make train's warm start (18 SFT steps) and its dynamic sampling (up to 4 batches a
          step): the setting of results/make-train-fast, compared at equal rollouts drawn

--baselines adds the SFT baselines from the same warm start, as many optimizer steps as plain
GRPO takes to the budget (SFT_STEPS): sft at SFT's learning rate and sft-slow at RL's, and
evaluates the tool use of all four (MENTOR, sparse, sft, sft-slow) greedily in domain (math)
and out of domain (TOOL_SUITES), keeping each problem's tool set, for paired CIs of tool-set
match and tool-JSD.

Runs (checkpoints) go under runs/NAME/, what is worth keeping (evals, metrics, settings)
under results/NAME/CELL/ as each run finishes (--name, default mechanism-fp32: the cpu preset
computes in fp32 since c1de1b5; results/mechanism/ holds the earlier bf16 study, whose tables
`--name mechanism --report` regenerates); a run whose results are there is not
trained again, an unfinished one resumes from its checkpoint (train.py --resume). A warm start
retrained in another session must give the same SFT losses as the recorded one before a run
is paired with one trained from the recorded one (on another kind of CPU it does not).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from evaluate import evaluate_model, paired_bootstrap_ci, paired_bootstrap_jsd  # noqa: E402
from experiments.replicate import sft_losses  # noqa: E402
from runs import write_json  # noqa: E402
from train import Config  # noqa: E402

REWARDS = ("mentor", "sparse")
BUDGET = 512                 # rollouts drawn by each GRPO run
EVAL_ROLLOUTS = 128          # an evaluation every this many
EVAL_N = 200                 # held-out math problems (the first 200 of the test split)
WEAK_SFT_STEPS = 4           # by measured accuracy (results/mechanism/REPORT.md): 0.080
CELLS = {"weak": dict(sft_steps=WEAK_SFT_STEPS, max_sample_batches=1),
         "budget": dict(sft_steps=18, max_sample_batches=4)}
SFT_STEPS = BUDGET // (Config.batch_size * Config.group_size)   # plain GRPO's steps: 16
BASELINES = {"sft": (), "sft-slow": ("--sft-lr", Config.lr)}       # SFT's lr, and RL's
ARMS = REWARDS + tuple(BASELINES)
TOOL_SUITES = {"math": EVAL_N, "retrieval": 100, "bfcl": 100, "shop": 100, "dates": 100,
               "lookup": 100}                                     # problems: the first ones
NAME = "mechanism-fp32"      # the study: runs/NAME, results/NAME (--name; mechanism: the bf16 one)
RUNS, RESULTS = f"runs/{NAME}", f"results/{NAME}"
KEPT = ("evals.json", "metrics.jsonl", "run.json")


def train_py(*args):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--preset", "cpu", "--resume",
           "--eval-n", str(EVAL_N), *map(str, args)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def kept(cell, seed, name):
    """results/mechanism/CELL/sSEED-NAME/: the run's files once it finished."""
    return os.path.join(ROOT, RESULTS, cell, f"s{seed}-{name}")


def finish(cell, seed, name, out):
    """Copy a finished run's evals, metrics and settings into results/."""
    os.makedirs(kept(cell, seed, name), exist_ok=True)
    for f in KEPT:
        shutil.copy(os.path.join(out, f), os.path.join(kept(cell, seed, name), f))


def run_seed(cell, seed, names):
    c, base = CELLS[cell], os.path.join(ROOT, RUNS, cell, f"s{seed}")
    todo = [r for r in names if not os.path.exists(kept(cell, seed, r))]
    if not todo:                                      # every run kept: no warm start needed
        return
    warm = os.path.join(base, "warm")
    if not os.path.exists(os.path.join(warm, "result.json")):
        train_py("--method", "sft", "--steps", c["sft_steps"], "--seed", seed, "--out", warm)
    if os.path.exists(kept(cell, seed, "warm")):      # recorded: the same model, or nothing
        if sft_losses(os.path.join(kept(cell, seed, "warm"), "metrics.jsonl")) != \
                sft_losses(os.path.join(warm, "metrics.jsonl")):
            sys.exit(f"{cell} seed {seed}: the warm start retrained here gives other SFT losses "
                     f"than the recorded one (another kind of CPU, or the cpu preset's fp32 since "
                     f"c1de1b5?); its runs would not pair")
    else:
        finish(cell, seed, "warm", warm)
    for name in todo:
        out = os.path.join(base, name)
        if name in BASELINES:
            train_py("--init", warm, "--method", "sft", "--steps", SFT_STEPS, *BASELINES[name],
                     "--eval-every", 0, "--save-every", SFT_STEPS, "--seed", seed, "--out", out)
        else:
            train_py("--init", warm, "--warmup-sft-steps", 0, "--steps", 1000, "--reward", name,
                     "--max-sample-batches", c["max_sample_batches"], "--rollout-budget", BUDGET,
                     "--eval-rollouts", EVAL_ROLLOUTS, "--eval-every", 0, "--save-every", 4,
                     "--seed", seed, "--out", out)
        finish(cell, seed, name, out)


def tool_use(cell, seed, name):
    """Greedy evaluation of a finished run on TOOL_SUITES, each problem's tool set kept:
    results/mechanism/CELL/sSEED-NAME/tool_use.json, saved suite by suite (resumes)."""
    path = os.path.join(kept(cell, seed, name), "tool_use.json")
    done = json.load(open(path)) if os.path.exists(path) else {}
    todo = [s for s in TOOL_SUITES if s not in done]
    run = os.path.join(ROOT, RUNS, cell, f"s{seed}", name)
    if todo and not os.path.exists(os.path.join(run, "checkpoint.pt")):
        print(f"{cell} seed {seed} {name}: no checkpoint in {run}, tool use not evaluated")
    elif todo:
        evaluate_model(run, todo, limit=TOOL_SUITES, batch_size=100,
                       on_suite=lambda res: write_json(path, {**done, **res}))


# ----------------------------------------------------------------------------
# The report: accuracy at each budget, paired CIs, groups with signal

def load(cell):
    """{seed: {name: (evals, metric rows)}} of the runs kept for a cell."""
    root, out = os.path.join(ROOT, RESULTS, cell), {}
    for d in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        seed, name = d[1:].split("-", 1)
        with open(os.path.join(root, d, "evals.json")) as f:
            evals = json.load(f)
        with open(os.path.join(root, d, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out.setdefault(int(seed), {})[name] = (evals, rows)
    return out


def at_budget(evals, b):
    """The evaluation made after b rollouts (rl_start at 0, the end at BUDGET)."""
    return next((e for e in evals.values() if isinstance(e, dict) and e.get("rollouts") == b
                 and "correct" in e), None)


def report(cell):
    data = load(cell)
    seeds = sorted(s for s in data if all(r in data[s] for r in REWARDS))
    if not seeds:
        return None
    budgets = list(range(0, BUDGET + 1, EVAL_ROLLOUTS))
    lines = [f"### {cell}: MENTOR vs sparse, {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
             f"n={EVAL_N} held-out math problems each",
             "", "warm start (" + ", ".join(f"seed {s}: {data[s]['warm'][0]['end']['accuracy']:.3f}"
                                            for s in seeds if 'warm' in data[s]) + ")", "",
             "| rollouts drawn | MENTOR | sparse | MENTOR - sparse, 95% CI (paired by seed and "
             "problem) |", "|---|---|---|---|"]
    curves = {r: [] for r in REWARDS}
    for b in budgets:
        got = {r: [at_budget(data[s][r][0], b) for s in seeds] for r in REWARDS}
        if any(e is None for r in REWARDS for e in got[r]):
            continue
        acc = {r: [e["accuracy"] for e in got[r]] for r in REWARDS}
        d, lo, hi = paired_bootstrap_ci([e["correct"] for e in got["mentor"]],
                                        [e["correct"] for e in got["sparse"]])
        lines.append(f"| {b} | {np.mean(acc['mentor']):.3f} +- {np.std(acc['mentor']):.3f} | "
                     f"{np.mean(acc['sparse']):.3f} +- {np.std(acc['sparse']):.3f} | "
                     f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
        for r in REWARDS:
            curves[r].append((b, acc[r], [e.get("train_minutes", 0) for e in got[r]]))
    ends = {r: [at_budget(data[s][r][0], BUDGET) for s in seeds] for r in REWARDS}
    tooled = [i for i in range(len(seeds))          # per-problem tool use: recorded since 5ca98d0
              if all(ends[r][i] and "per_problem" in ends[r][i] for r in REWARDS)]
    ends = {r: [ends[r][i] for i in tooled] for r in REWARDS}
    if tooled:
        lines += ["", f"Tool use at {BUDGET} rollouts, MENTOR - sparse (95% CI, paired; seeds "
                  f"{', '.join(str(seeds[i]) for i in tooled)}):", ""]
        for k in ("tool_set_match", "hallucinated_tool_rate"):
            d, lo, hi = paired_bootstrap_ci(*[[e["per_problem"][k] for e in ends[r]]
                                              for r in REWARDS])
            lines.append(f"* {k}: MENTOR {np.mean([e[k] for e in ends['mentor']]):.3f}, sparse "
                         f"{np.mean([e[k] for e in ends['sparse']]):.3f}: "
                         f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    lines += ["", "mean +- std over seeds. Groups with signal per GRPO step (mean over steps and "
              "seeds), optimizer steps taken, minutes of training to the budget:", "",
              "| reward | groups with signal | rows trained a step | steps | train minutes |",
              "|---|---|---|---|---|"]
    for r in REWARDS:
        rows = [row for s in seeds for row in data[s][r][1] if row["phase"] == "grpo"]
        steps = [sum(row["phase"] == "grpo" for row in data[s][r][1]) for s in seeds]
        minutes = [sum(row["step_time"] for row in data[s][r][1]) / 60 for s in seeds]
        lines.append(f"| {r} | {np.mean([x['groups_with_signal'] for x in rows]):.2f} | "
                     f"{np.mean([x['trained_rows'] for x in rows]):.1f} | "
                     f"{np.mean(steps):.1f} | {np.mean(minutes):.1f} |")
    return "\n".join(lines), curves, data, seeds


def tool_use_report(cell):
    """Tool use of MENTOR against every other arm, per suite: mean over seeds of accuracy,
    tool-set match and tool-JSD, and MENTOR - arm with paired 95% CIs."""
    data, root = {}, os.path.join(ROOT, RESULTS, cell)
    for seed in sorted({int(d[1:].split("-")[0]) for d in
                        (os.listdir(root) if os.path.isdir(root) else [])}):
        got = {a: os.path.join(kept(cell, seed, a), "tool_use.json") for a in ARMS}
        if all(os.path.exists(f) for f in got.values()):
            got = {a: json.load(open(f)) for a, f in got.items()}
            if all(s in got[a] for a in ARMS for s in TOOL_SUITES):
                data[seed] = got
    if not data:
        return None
    seeds, others = sorted(data), ARMS[1:]
    lines = [f"### {cell}: tool use of every arm, {len(seeds)} seeds "
             f"({', '.join(map(str, seeds))})",
             "", f"Greedy; math: its first {EVAL_N} test problems (in domain), the others their "
             "first problems (out of domain); n per seed. Each cell: accuracy / tool-set match / "
             "tool-JSD (mean over seeds).", "",
             "| suite (n) | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for s in TOOL_SUITES:
        cells = [" / ".join(f"{np.mean([data[x][a][s][k] for x in seeds]):.3f}"
                            for k in ("accuracy", "tool_set_match", "tool_jsd")) for a in ARMS]
        lines.append(f"| {s} ({data[seeds[0]]['mentor'][s]['n']}) | " + " | ".join(cells) + " |")
    lines += ["", "MENTOR - arm, 95% CI paired by seed and problem (tool-JSD: lower is closer to "
              "the teacher):", "",
              "| suite | " + " | ".join(f"tool-set match vs {a}" for a in others) + " | " +
              " | ".join(f"tool-JSD vs {a}" for a in others) + " |",
              "|---|" + "---|" * 2 * len(others)]
    for s in TOOL_SUITES:
        pp = {a: [data[x][a][s]["per_problem"] for x in seeds] for a in ARMS}
        match = [paired_bootstrap_ci([p["tool_set_match"] for p in pp["mentor"]],
                                     [p["tool_set_match"] for p in pp[a]]) for a in others]
        div = [paired_bootstrap_jsd([p["tools"] for p in pp["mentor"]], [p["tools"] for p in pp[a]],
                                    [p["teacher_tools"] for p in pp["mentor"]]) for a in others]
        lines.append(f"| {s} | " + " | ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                                              for d, lo, hi in match + div) + " |")
    return "\n".join(lines)


def plot(results, path):
    """Accuracy against rollouts drawn and against minutes of training, per cell and reward:
    the mean over seeds, each seed thin."""
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for j, (cell, (_, curves, data, seeds)) in enumerate(results.items()):
        for r, colour in zip(REWARDS, ("C0", "C3")):
            b = [x for x, _, _ in curves[r]]
            acc = np.array([a for _, a, _ in curves[r]])                # (budgets, seeds)
            minutes = np.array([m for _, _, m in curves[r]])
            axes[0, j].plot(b, acc.mean(1), "o-", color=colour, label=r)
            axes[0, j].plot(b, acc, color=colour, alpha=0.25, lw=0.8)
            axes[1, j].plot(minutes.mean(1), acc.mean(1), "o-", color=colour, label=r)
        axes[0, j].set(title=f"{cell} ({len(seeds)} seeds, n={EVAL_N})",
                       xlabel="rollouts drawn", ylabel="held-out math accuracy (greedy)")
        axes[1, j].set(xlabel="minutes of training (mean over seeds)",
                       ylabel="held-out math accuracy")
        axes[0, j].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", choices=list(CELLS), action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rewards", nargs="+", choices=REWARDS, default=list(REWARDS))
    ap.add_argument("--baselines", action="store_true",
                    help="also SFT and sft-slow from each warm start, and every arm's tool use")
    ap.add_argument("--report", action="store_true", help="tables and figure only")
    ap.add_argument("--name", default=NAME,
                    help="runs/NAME and results/NAME (mechanism: the bf16 study)")
    args = ap.parse_args()
    global RUNS, RESULTS
    RUNS, RESULTS = f"runs/{args.name}", f"results/{args.name}"
    for cell in [] if args.report else args.cell:
        for seed in args.seeds:
            run_seed(cell, seed, args.rewards + (list(BASELINES) if args.baselines else []))
            for name in ARMS if args.baselines else ():
                tool_use(cell, seed, name)
    results = {c: r for c in CELLS if (r := report(c))}
    tools = [t for c in CELLS if (t := tool_use_report(c))]
    if results:
        with open(os.path.join(ROOT, RESULTS, "tables.md"), "w") as f:
            f.write("\n\n".join([t for t, _, _, _ in results.values()] + tools) + "\n")
        plot(results, os.path.join(ROOT, RESULTS, "accuracy_vs_rollouts.png"))
        print(open(os.path.join(ROOT, RESULTS, "tables.md")).read())


if __name__ == "__main__":
    main()
