"""Evaluation in domain (math) and out of domain (retrieval QA, BFCL function calling).

    python evaluate.py --model SmolLM2-135M --suite math,retrieval,bfcl --limit 50 --out base.json
    python evaluate.py --compare base=SmolLM2-135M sft=runs/sft mentor=runs/mentor --limit 50

Greedy decoding by default (--temperature > 0 samples). Metrics per suite:

    accuracy          last \\boxed{} equals the gold answer (tasks.answers_match), or the
                      suite's own check of the calls (bfcl: our AST checker, suites/bfcl.py)
    tool_call_rate    rollouts with at least one <tool_call>
    valid_call_rate   calls that parse and name a real tool, over all calls
    hallucinated_tool_rate  rollouts that name a tool that does not exist
    mean_turns, response_tokens
    tool_set_match    rollouts whose valid tool set S equals the teacher's T
    tool_jsd          Jensen-Shannon divergence (base 2, in [0, 1]) between the
                      student's and the teacher's distributions over tool names:
                      p(name) is proportional to the number of problems whose tool
                      set contains name, with "<none>" standing for an empty set.
                      0 = the student uses tools exactly as often as the teacher.
    per_category      accuracy per category, for suites whose problems have one (bfcl)
"""
import argparse
import collections
import json
import os
import sys
import time

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from tqdm import tqdm

from model import (PRECISIONS, ModelNotAvailable, compute_dtype, load_model, machine, pick_device,
                   release_memory, rollout_weights)
from rollout import generate_rollouts
from teacher import apply_teacher_tools
from tasks import SuiteError, load_suite


def jsd(p, q):
    """Jensen-Shannon divergence (base 2) of two {name: weight} distributions (normalised here)."""
    keys = sorted(set(p) | set(q))
    return float(jsd_rows(np.array([p.get(k, 0) for k in keys], float),
                          np.array([q.get(k, 0) for k in keys], float)))


def jsd_rows(P, Q):
    """(..., K) weights -> (...) Jensen-Shannon divergences (base 2), row by row (normalised)."""
    P = P / np.maximum(P.sum(-1, keepdims=True), 1e-12)
    Q = Q / np.maximum(Q.sum(-1, keepdims=True), 1e-12)
    M = (P + Q) / 2

    def kl(a, b):                                   # 0 log 0 = 0; b > 0 wherever a > 0
        return (a * np.log2(np.divide(a, b, out=np.ones_like(a), where=a > 0))).sum(-1)
    return (kl(P, M) + kl(Q, M)) / 2


def paired_bootstrap_ci(a, b, n_boot=10_000, level=0.95, seed=0):
    """Mean of a - b and its percentile-bootstrap CI, paired by problem (and by seed).

    a, b: (S, n) or (n,) 0/1 correctness of two models on the same n problems
    (S seeds; row s of a and of b share seed s, e.g. the same warm start).
    Each replicate resamples seeds and problems with replacement and takes the
    mean difference, so the interval covers both problem and seed variation.
    Returns (mean difference, low, high).
    """
    d = np.atleast_2d(np.asarray(a, float)) - np.atleast_2d(np.asarray(b, float))   # (S, n)
    S, n = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, S, size=(n_boot, S))                  # (n_boot, S)
    probs = rng.integers(0, n, size=(n_boot, n))                  # (n_boot, n)
    means = np.array([d[s][:, p].mean() for s, p in zip(seeds, probs)])
    alpha = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_jsd(a, b, teacher, n_boot=2000, level=0.95, seed=0):
    """Tool-JSD of model a minus that of model b, and its percentile-bootstrap CI.

    a, b, teacher: (S, n) tool sets (lists of names): seed s's n problems, the same problems
    for both models, and the teacher's sets on them. Tool-JSD (tool_distribution, jsd) is a
    property of a set of problems, not of one, so each replicate resamples seeds and problems
    as paired_bootstrap_ci does and recomputes both divergences on the resample.
    Returns (mean over seeds of JSD_a - JSD_b, low, high).
    """
    names = sorted({t for x in (a, b, teacher) for row in x for t in tool_distribution(row)})
    col = {t: k for k, t in enumerate(names)}

    def counts(x):             # (S, n, K): problem i's tool_distribution, names as columns
        out = np.zeros((len(x), len(x[0]), len(names)))
        for s, row in enumerate(x):
            for i, tools in enumerate(row):
                out[s, i, [col[t] for t in tool_distribution([tools])]] = 1
        return out
    A, B, T = counts(a), counts(b), counts(teacher)
    S, n, _ = A.shape

    def diff(w, rows):               # w (R, n) problem weights, rows (R, S) seeds -> (R,)
        def div(X):
            return jsd_rows(np.einsum("rn,rsnk->rsk", w, X[rows]),
                            np.einsum("rn,rsnk->rsk", w, T[rows]))
        return (div(A) - div(B)).mean(-1)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, S, size=(n_boot, S))
    w = np.stack([np.bincount(p, minlength=n) for p in rng.integers(0, n, size=(n_boot, n))])
    means = diff(w, rows)
    alpha = (1 - level) / 2
    point = float(diff(np.ones((1, n)), np.arange(S)[None])[0])
    return point, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def tool_distribution(tool_sets):
    """[set of names] -> {name: number of sets containing it}, '<none>' for empty sets."""
    c = collections.Counter()
    for s in tool_sets:
        c.update(s if s else ["<none>"])
    return dict(c)


def run_config(name_or_path):
    """The Config a train.py run folder was trained with (its run.json), else {}."""
    meta = os.path.join(name_or_path or "", "run.json")
    if not os.path.isfile(meta):
        return {}
    with open(meta) as f:
        return json.load(f)


def trained_suites(name_or_path):
    """The suite a train.py run folder trained on, else none."""
    run = run_config(name_or_path)
    return (run["suite"],) if run else ()


GENERATION_DEFAULTS = {"max_turns": 5, "max_new_tokens": 128, "max_total_tokens": 384,
                       "precision": "auto"}
EVAL_BATCH = 200            # rows generated at once, as train.py's evaluations (accuracy) do


def generation_limits(name_or_path):
    """The turn and token limits and the precision a train.py run folder (or a model exported
    from one) trained with, else GENERATION_DEFAULTS: a run is evaluated as it was trained."""
    run = run_config(name_or_path)
    return {k: run.get(k, v) for k, v in GENERATION_DEFAULTS.items()}


def used_tools(rollout, suite):
    """The set of valid tools a rollout called (S in the reward; unparsable calls left out)."""
    return {n for n in rollout.tool_calls if n in suite.valid_tools(rollout.problem)}


def tool_use_per_problem(rollouts, suite):
    """Per rollout, 0/1: its valid tool set S equals the teacher's T (tool_set_match); it
    names a tool it was not shown (hallucinated_tool_rate). Kept per problem for paired CIs."""
    shown = [suite.valid_tools(r.problem) for r in rollouts]
    return {"tool_set_match": [int(used_tools(r, suite) == set(r.problem["teacher_tools"]))
                               for r in rollouts],
            "hallucinated_tool_rate": [int(any(n is not None and n not in v for n in r.tool_calls))
                                       for r, v in zip(rollouts, shown)]}


def rollout_metrics(rollouts, suite):
    """What rollouts did: accuracy and tool use. One definition for train.py's step logs and
    evaluation tables. A hallucinated tool is a parsed call naming a tool not shown."""
    calls = [r.tool_calls for r in rollouts]                  # names; None: unparsable
    shown = [suite.valid_tools(r.problem) for r in rollouts]
    n_calls = sum(map(len, calls))
    per = tool_use_per_problem(rollouts, suite)
    return {
        "accuracy": float(np.mean([suite.is_correct(r) for r in rollouts])),
        "tool_call_rate": float(np.mean([bool(c) for c in calls])),
        "boxed_rate": float(np.mean([r.answer is not None for r in rollouts])),
        "truncated_rate": float(np.mean([r.truncated for r in rollouts])),
        "valid_call_rate": sum(n in v for c, v in zip(calls, shown) for n in c) / n_calls
        if n_calls else None,
        "hallucinated_tool_rate": float(np.mean(per["hallucinated_tool_rate"])),
        "mean_turns": float(np.mean([len(r.turns) for r in rollouts])),
        "response_tokens": float(np.mean([r.n_generated for r in rollouts])),
        "tool_set_match": float(np.mean(per["tool_set_match"])),
    }


def greedy_rollouts(model, tok, suite, problems, batch_size=EVAL_BATCH, temperature=0.0,
                    max_turns=5, max_new_tokens=128, max_total_tokens=384, progress=False):
    """The one evaluation loop (evaluate_suite and train.py's held-out evaluations): rollouts
    of `problems` in batches, greedy unless temperature > 0, with the suite's own turn limit
    where it has one (BFCL: 1); progress: a bar of problems done, with an ETA."""
    rollouts = []
    with tqdm(total=len(problems), desc=f"evaluating {suite.name}", unit="problem",
              disable=not progress, leave=False) as bar:
        for i in range(0, len(problems), batch_size):
            rollouts += generate_rollouts(model, tok, problems[i:i + batch_size], suite.tools,
                                          suite.schemas, max_turns=suite.max_turns or max_turns,
                                          max_new_tokens=max_new_tokens,
                                          max_total_tokens=max_total_tokens,
                                          temperature=temperature, progress=bar)
    return rollouts


@torch.no_grad()
def accuracy(model, tok, suite, problems, cfg, batch_size=EVAL_BATCH, progress=False):
    """Greedy accuracy of a model in training, with a train.Config's precision and generation
    limits, sampled as its rollouts are (from a bf16 copy where bf16 is native): the rates of
    rollout_metrics and each problem's 0/1 ("correct"). More rows at a time read each weight
    once for more tokens: 100 problems in 31 s against 38 s in batches of 50 (bf16, 2-core
    Xeon); 200 in 171 s against 182 s in batches of 100, the same accuracy and tokens (fp32,
    EPYC)."""
    model.eval()
    policy = rollout_weights(model, compute_dtype(model.device, cfg.precision))
    rs = greedy_rollouts(policy, tok, suite, problems, batch_size, max_turns=cfg.max_turns,
                         max_new_tokens=cfg.max_new_tokens, max_total_tokens=cfg.max_total_tokens,
                         progress=progress)
    return {**rollout_metrics(rs, suite), "correct": [int(suite.is_correct(r)) for r in rs],
            "per_problem": tool_use_per_problem(rs, suite)}             # for paired CIs


def evaluate_suite(model, tok, name, limit=None, batch_size=EVAL_BATCH, temperature=0.0, max_turns=5,
                   max_new_tokens=128, max_total_tokens=384, teacher_file=None, progress=True,
                   trained_on=()):
    """Greedy (or sampled) rollouts on a suite -> (metrics, rollouts). A suite the model
    trained on is scored on its test split, any other suite on all of its problems."""
    suite = load_suite(name)
    problems = (suite.split("test") if name in trained_on else suite.problems)[:limit]
    if teacher_file:
        problems = apply_teacher_tools(problems, teacher_file)
    rollouts = greedy_rollouts(model, tok, suite, problems, batch_size, temperature, max_turns,
                               max_new_tokens, max_total_tokens, progress)
    correct = [suite.is_correct(r) for r in rollouts]
    used = [used_tools(r, suite) for r in rollouts]
    teacher = [set(r.problem["teacher_tools"]) for r in rollouts]
    out = {"n": len(rollouts), "split": "test" if name in trained_on else "all",
           **rollout_metrics(rollouts, suite),
           "correct": [int(c) for c in correct],                  # per problem, for paired CIs
           "per_problem": {**tool_use_per_problem(rollouts, suite),   # the same, for tool use
                           "tools": [sorted(u) for u in used],        # (and the JSD's CI)
                           "teacher_tools": [sorted(t) for t in teacher]},
           "tool_jsd": jsd(tool_distribution(used), tool_distribution(teacher))}
    if all("category" in r.problem for r in rollouts):
        by = collections.defaultdict(list)
        for r, c in zip(rollouts, correct):
            by[r.problem["category"]].append(c)
        out["per_category"] = {k: float(np.mean(v)) for k, v in by.items()}
    return out, rollouts


def evaluate_model(name_or_path, suites, limit=None, device=None, precision=None,
                   trained_on=None, on_suite=None, **kw):
    """{suite: metrics}. `limit`: problems per suite, or a dict {suite: limit}. `trained_on`:
    suites scored on their test split (default: the one a run folder trained on). `on_suite`:
    called with the results so far after each suite (replicate.py saves them). Generation
    limits and precision not given (None) are the run folder's (generation_limits): the fp32
    weights, sampled from as train.py's evaluations do (rollout_weights), so that a run's
    last evaluation and this one give the same per-problem results."""
    trained_on = trained_suites(name_or_path) if trained_on is None else trained_on
    kw = {**generation_limits(name_or_path), **{k: v for k, v in kw.items() if v is not None}}
    precision = precision or kw.pop("precision")
    kw.pop("precision", None)
    release_memory()            # what a training in this process left (replicate.py) goes back
    device = pick_device(device)
    tok, model = load_model(name_or_path, device=device)
    model = rollout_weights(model, compute_dtype(device, precision))
    results = {}
    for s in suites:
        t0 = time.time()
        n = limit.get(s) if isinstance(limit, dict) else limit
        results[s], _ = evaluate_suite(model, tok, s, limit=n, trained_on=trained_on, **kw)
        results[s].update(seconds=round(time.time() - t0, 1), machine=machine(device, precision))
        if on_suite:
            on_suite(results)
    return results


def markdown_table(all_results, suites):
    head = "| model | " + " | ".join(f"{s} acc" for s in suites) + " | " + \
        " | ".join(f"{s} tool-JSD" for s in suites) + " |"
    rows = [head, "|" + "---|" * (1 + 2 * len(suites))]
    for name, res in all_results.items():
        accs = " | ".join(f"{res[s]['accuracy']:.3f}" + (f" (n={res[s]['n']})" if "n" in res[s]
                                                          else "") for s in suites)
        jsds = " | ".join(f"{res[s]['tool_jsd']:.3f}" for s in suites)
        rows.append(f"| {name} | {accs} | {jsds} |")
    return "\n".join(rows)


def plot(all_results, suites, out_dir):
    """accuracy.png (bars per suite per model) and jsd_vs_accuracy.png (strategic competence)."""
    os.makedirs(out_dir, exist_ok=True)
    names = list(all_results)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(suites), 3.4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(suites)) + i * width, [all_results[n][s]["accuracy"] for s in suites],
               width, label=n, yerr=[all_results[n][s].get("accuracy_std", 0) for s in suites],
               capsize=2)
    ax.set_xticks(np.arange(len(suites)) + 0.4 - width / 2, suites)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for n in names:
        xs = [all_results[n][s]["tool_jsd"] for s in suites]
        ys = [all_results[n][s]["accuracy"] for s in suites]
        ax.scatter(xs, ys, label=n)
        for x, y, s in zip(xs, ys, suites):
            ax.annotate(s, (x, y), fontsize=7)
    ax.set_xlabel("tool-use JSD to the teacher (lower = closer)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "jsd_vs_accuracy.png"), dpi=120)


def plot_training(metrics_path, out_png, evals=None):
    """Per-step curves of one train.py run: SFT loss, GRPO reward and its parts, rollout
    accuracy / boxed / truncated rates, groups with signal and KL; and beside them the held-out
    evaluations (evals.json) against minutes of training (time-to-accuracy) -> out_png."""
    rows = []
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    sft = [r for r in rows if r["phase"] == "sft"]
    rl = [r for r in rows if r["phase"] == "grpo"]
    if not (rl or sft or evals):
        return
    fig, axes = plt.subplots(1, 6, figsize=(23, 3.3))
    if sft:
        axes[0].plot([r["step"] for r in sft], [r["sft_loss"] for r in sft], "o-")
    axes[0].set(title="SFT loss (warm start)", xlabel="SFT step")
    x = [r["step"] for r in rl]
    panels = [("reward (mean over rollouts)", ["reward_mean"] + sorted(
                  {k for r in rl for k in r if k.startswith("reward/")})),
              ("rollouts (sampled)", ["accuracy", "boxed_rate", "truncated_rate"]),
              ("groups with signal (reward std > 0)", ["groups_with_signal"]),
              ("KL to the reference (k3)", ["kl"])]
    for ax, (title, keys) in zip(axes[1:], panels):
        for k in keys:
            ax.plot(x, [r.get(k, 0.0) for r in rl], "o-", ms=3, label=k.replace("reward/", ""))
        ax.set(title=title, xlabel="GRPO step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    timed = sorted((e["train_minutes"], e["accuracy"], name, len(e["correct"]))
                   for name, e in (evals or {}).items() if "train_minutes" in e)
    axes[5].plot([t for t, *_ in timed], [a for _, a, *_ in timed], "o-")
    for i, (t, a, name, n) in enumerate(timed):
        axes[5].annotate(f"{name} (n={n})", (t, a), fontsize=7,
                         ha="right" if i == len(timed) - 1 else "left")
    axes[5].set(title="held-out accuracy (greedy)", xlabel="minutes of training (no evaluations)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close("all")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Evaluate students in and out of domain.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="SmolLM2-135M",
                    help="short name, HF id, folder, exported model or train.py run folder")
    ap.add_argument("--compare", nargs="+", metavar="NAME=MODEL",
                    help="several models, each NAME=MODEL, in one table and plot")
    ap.add_argument("--suite", default="math,retrieval,bfcl,shop,dates,lookup,units",
                    help="suites, comma-separated (built-in names or suite files)")
    ap.add_argument("--trained-on", type=lambda v: tuple(v.split(",")) if v else (),
                    help="suites scored on their test split, comma-separated (None: the suite a "
                         "run folder trained on; every other suite is scored on all problems)")
    ap.add_argument("--limit", type=int, help="problems per suite (the first ones; BFCL's "
                    "first n hold n/5 of each category; None: all)")
    ap.add_argument("--batch-size", type=int, default=EVAL_BATCH, help="rows generated at once")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    for flag in ("max_turns", "max_new_tokens", "max_total_tokens"):
        ap.add_argument("--" + flag.replace("_", "-"), type=int, help=f"None: the run "
                        f"folder's (run.json), else {GENERATION_DEFAULTS[flag]}")
    ap.add_argument("--teacher", help="teacher.py JSONL whose teacher_tools take precedence")
    ap.add_argument("--device", help="cpu | cuda (None: cuda where there is one)")
    ap.add_argument("--precision", choices=PRECISIONS,
                    help="dtype of the matmuls (None: the run folder's, else auto: bf16 where "
                         "fast, see model.compute_dtype)")
    ap.add_argument("--seed", type=int, default=0, help="for --temperature > 0")
    ap.add_argument("--out", help="results JSON (None: print only)")
    ap.add_argument("--plot-dir", default="plots", help="where --compare writes its plots")
    ap.add_argument("--replot", nargs="+", metavar="NAME=RESULTS.json",
                    help="table and plots from saved results ({suite: metrics} or an --out file)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    suites = args.suite.split(",")
    if args.replot:
        saved = {}
        for item in args.replot:
            name, path = item.split("=", 1)
            with open(path) as f:
                data = json.load(f)
            saved[name] = data["results"][name] if "results" in data else data
        print(markdown_table(saved, suites))
        plot(saved, suites, args.plot_dir)
        print(f"plots: {args.plot_dir}/accuracy.png {args.plot_dir}/jsd_vs_accuracy.png")
        return
    kw = dict(batch_size=args.batch_size, temperature=args.temperature, max_turns=args.max_turns,
              max_new_tokens=args.max_new_tokens, max_total_tokens=args.max_total_tokens,
              teacher_file=args.teacher)
    models = dict(m.split("=", 1) for m in args.compare) if args.compare else \
        {args.model: args.model}
    all_results = {}
    for name, path in models.items():
        try:
            all_results[name] = evaluate_model(path, suites, args.limit, args.device,
                                               args.precision, trained_on=args.trained_on, **kw)
        except (ModelNotAvailable, SuiteError) as e:
            sys.exit(str(e))
        print(f"{name}: " + json.dumps(all_results[name]))
    print(markdown_table(all_results, suites))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "results": all_results}, f, indent=1)
    if args.compare:
        plot(all_results, suites, args.plot_dir)
        print(f"plots: {args.plot_dir}/accuracy.png {args.plot_dir}/jsd_vs_accuracy.png")


if __name__ == "__main__":
    main()
