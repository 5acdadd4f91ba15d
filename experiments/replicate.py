"""Reproduce the paper's comparison at small scale: base vs SFT vs sparse RL vs MENTOR.

    python experiments/replicate.py --preset cpu            # embedded student, 2 CPU cores
    python experiments/replicate.py --preset gpu            # Qwen2.5-0.5B on one GPU
    python experiments/replicate.py --preset cpu --seeds 0 1 2 --ablations
    python experiments/replicate.py --preset cpu --report   # table.md and plots only
    python experiments/replicate.py --preset cpu-aliases    # a warm start that reads tool lists
    python experiments/replicate.py --preset cpu-aliases --seeds 2 --runs grpo-mentor grpo-sparse
    python experiments/replicate.py --preset cpu-aliases --seeds 2 --sft-slow --runs sft-slow

From one student and one set of teacher trajectories it trains, per seed:
    sft            SFT on the teacher's trajectories (warm_steps + rl_steps SFT steps)
    grpo-sparse    warm start, then GRPO with the sparse reward
    grpo-mentor    warm start, then GRPO with MENTOR's composite reward
    (--ablations)  grpo-partial, grpo-no_tool_match, grpo-f1
    (--sft-slow)   sft-slow: SFT as sft but at RL's learning rate (lr, not the 10x larger
                   sft_lr), a check on the baseline: does SFT lose what the warm start had
                   out of domain only because it takes larger steps than RL?
The warm start (SFT, cold start for a student that calls no tools) is shared by
every RL run of a seed and is evaluated first, as the point RL starts from. In
cpu-aliases it is trained on math under per-problem tool names and SFT starts
from it too (warm start + as many SFT steps as RL takes). Every
method takes the same number of optimizer steps. Every checkpoint and the base
model are evaluated greedily on math (in domain, its test split) and on
retrieval, BFCL, shop, dates and lookup (out of domain, all problems; cpu-aliases
adds units). table.md gives
mean +- std over seeds and paired bootstrap 95% CIs of MENTOR - SFT and
MENTOR - sparse per suite; accuracy.png (error bars: std over seeds),
jsd_vs_accuracy.png and training_curves.png go beside it.

Runs (checkpoints, hundreds of MB) go under runs/replicate-PRESET/; what is worth keeping
(eval_*.json, metrics_*.jsonl, run_*.json, table.md, the plots) under results/replicate-PRESET/, small
enough to commit. It resumes from both: a run whose evaluation is complete in results/ is not
trained again (so a fresh clone continues where the committed results stop), a finished run
(result.json) is not trained again, an unfinished one continues from its checkpoint, and an
evaluation redoes only the suites it had not saved. A warm start retrained in another session
is the same one only if its SFT losses are (losses_sha): then its evaluation stands. Another
kind of CPU computes other losses from the first step, so the retraining is checked after
CHECK_STEPS steps: a seed whose runs started from the recorded warm start is then left for a
machine that reproduces it (nothing is mixed), and table.md pairs two runs only when they
started from the same warm start.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time

import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate import evaluate_model, paired_bootstrap_ci, plot  # noqa: E402
from runs import write_json  # noqa: E402
from train import GPU_PRESET, Config, train  # noqa: E402

# eval_limit: problems per suite, the first ones (BFCL: n/5 per category; None: all). The cpu
# preset trains with train.py's defaults (the cpu preset, `make train`'s: dynamic sampling, up to
# 4 batches of questions a step for both RL methods; without it GRPO lowered accuracy on AVX2,
# results/rl-probes/REPORT.md section 6) but RL_STEPS = 10 RL steps, not make train's 15: the same warm
# start length and the same number of optimizer steps for every method, as the tables were made.
RL_STEPS = 10
SUITES = ["math", "retrieval", "bfcl", "shop", "dates", "lookup"]
IN_DOMAIN = ("math",)          # trained on: scored on its test split; the others on everything
PRESETS = {
    "cpu": dict(student="SmolLM2-135M", warm_steps=Config().warmup_sft_steps, rl_steps=RL_STEPS,
                eval_limit={"math": 200, "retrieval": None, "bfcl": 100, "shop": None,
                            "dates": None, "lookup": None}, out="runs/replicate-cpu",
                report="results/replicate-cpu"),
    "gpu": dict(student="Qwen2.5-0.5B", warm_steps=0, rl_steps=150, batch_size=16, group_size=8,
                eval_limit={"math": 300, "retrieval": None, "bfcl": 200, "shop": None,
                            "dates": None, "lookup": None}, out="runs/replicate-gpu",
                report="results/replicate-gpu"),
    # the cpu preset from a warm start that has to read its tool list: 30 SFT steps on math
    # under per-problem tool names (experiments/suite_math_aliases.py; after 18 such steps it
    # scored 0.125 on shop and dates and 0.41 on units where the plain warm start scored
    # 0.000-0.110, but only 0.28 on math, too low for RL to find signal: README); then every
    # method trains 10 steps on math itself from it, SFT included, so all three share the warm
    # start. units joins the suites: the one a student that reads its tool list can reach.
    "cpu-aliases": dict(student="SmolLM2-135M", warm_steps=30,
                        rl_steps=RL_STEPS, warm_suite="experiments/suite_math_aliases.py",
                        sft_from_warm=True, suites=SUITES + ["units"],
                        eval_limit={"math": 200, "retrieval": None, "bfcl": 100, "shop": None,
                                    "dates": None, "lookup": None, "units": None},
                        out="runs/replicate-cpu-aliases", report="results/replicate-cpu-aliases"),
    # a few minutes end to end: checks the pipeline, says nothing about the method
    "smoke": dict(student="SmolLM2-135M", warm_steps=1, rl_steps=1, batch_size=1, group_size=2,
                  eval_limit={s: 2 for s in SUITES} | {"bfcl": 5}, out="runs/replicate-smoke",
                  report="runs/replicate-smoke", max_new_tokens=16, max_total_tokens=32),
}
TRAIN_KEYS = ("batch_size", "group_size", "max_new_tokens", "max_total_tokens")


def run_train(cfg_kwargs):
    out = cfg_kwargs["out"]
    if os.path.exists(os.path.join(out, "result.json")):
        return
    train(Config(**cfg_kwargs, resume=os.path.exists(os.path.join(out, "checkpoint.pt"))))


def set_aside(root, filename):
    """Move root/filename out of the way as its .stale copy, never over an earlier one
    (eval_x.json -> eval_x.stale.json, then eval_x.stale-2.json, ...); returns the new name."""
    stem, ext = os.path.splitext(filename)
    k, dst = 1, f"{stem}.stale{ext}"
    while os.path.exists(os.path.join(root, dst)):
        k += 1
        dst = f"{stem}.stale-{k}{ext}"
    os.replace(os.path.join(root, filename), os.path.join(root, dst))
    return dst


def set_aside_stale_eval(root, name, out):
    """A partial eval_{name}.json whose run has no finished checkpoint (a fresh clone: runs/
    is gone) scored a model that no longer exists; the run about to be trained is another one
    (on another kind of CPU even bit-for-bit another), so its suites must not be mixed with
    the old ones. The old file is kept as eval_{name}.stale.json and the evaluation starts over."""
    if os.path.exists(os.path.join(root, f"eval_{name}.json")) and \
            not os.path.exists(os.path.join(out, "result.json")):
        kept = set_aside(root, f"eval_{name}.json")
        print(f"{name}: its checkpoint is gone; the partial evaluation of the old one is kept "
              f"as {kept} and {name} is trained and evaluated anew", flush=True)


def evaluated(root, name, suites=SUITES):
    """Is eval_{name}.json complete (every suite)?"""
    return len(load_eval(root, name, suites)) == len(suites)


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def sft_losses(path):
    """The rows of a metrics.jsonl without their timings: every SFT loss to 17 digits."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("time")}
                for line in f if line.strip()]


def losses_sha(path):
    """A warm start's identity: the hash of its metrics.jsonl without the timings, i.e. every
    SFT loss to 17 digits. Two trainings with the same hash made, beyond reasonable doubt, the
    same model (on one kind of CPU in fp32, SFT here is deterministic: README)."""
    return hashlib.sha256(json.dumps(sft_losses(path), sort_keys=True).encode()).hexdigest()[:16]


def warm_identity(root, name):
    """The ids a run trained from warm start `name` may carry as its init_sha (the hash of
    the losses; runs recorded before that carry the file's hash); empty if none is recorded."""
    path = os.path.join(root, f"metrics_{name}.jsonl")
    return {file_sha(path), losses_sha(path)} if os.path.exists(path) else set()


def started_from(root, name):
    """The warm start a run began from, as a set of ids: a warm start is its own; an RL run
    (or cpu-aliases' SFT) has its init_sha; None where nothing says (the cpu preset's SFT
    starts from the base model; seed 0's first runs predate init_sha)."""
    if name.startswith("warm-"):
        return warm_identity(root, name) or None
    path = os.path.join(root, f"run_{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        init = json.load(f).get("init_sha")
    return {init} if init else None


# A retrained warm start is compared with the recorded one after this many SFT steps: on
# another kind of CPU the losses part at the first step (AVX2 fp32 against AVX-512 bf16:
# 0.595 against 0.627 at step 2), so a retraining that cannot give the same model stops after
# minutes instead of hours (30 aliased steps are 87 min on AVX2).
CHECK_STEPS = 2


def retrain_warm(root, name, cfg_kwargs, results, seed_runs=()):
    """Train (or finish) the seed's warm start; True when the seed can go on from it here.

    An earlier session may have recorded it (metrics_{name}.jsonl). The first CHECK_STEPS
    steps are trained and their losses compared with the record before the rest: equal, it
    is the same model, and at the end the whole record must match too. Another model (this
    kind of CPU computes other losses) is handled by what was trained from the old one:
    - runs of the seed (`seed_runs`) started from it: it cannot be replaced, since they pair
      with each other only through it. Nothing is written, the retrained folder is removed,
      and False says to leave the seed to a machine that reproduces the record;
    - none: the old evaluation, metrics and settings are set aside as .stale files and the
      new warm start takes its place (its runs will pair with each other).
    """
    out = cfg_kwargs["out"]
    recorded = os.path.join(root, f"metrics_{name}.jsonl")
    record, mine = sft_losses(recorded), os.path.join(out, "metrics.jsonl")
    check = min(CHECK_STEPS, cfg_kwargs["steps"])
    if record and not os.path.exists(os.path.join(out, "result.json")) and \
            len(sft_losses(mine)) < check:
        run_train(dict(cfg_kwargs, steps=check))         # the first steps alone...
        os.remove(os.path.join(out, "result.json"))      # ...then the same run goes on
    if record and sft_losses(mine)[:check] == record[:check]:
        run_train(cfg_kwargs)
    if record and sft_losses(mine) == record:       # the record stands as it is (runs may
        print(f"{name}: the same SFT losses as recorded ({losses_sha(recorded)}): the same "
              f"warm start", flush=True)              # carry its file's hash)
        return True
    if record:
        old = warm_identity(root, name)
        bound = [r for r in seed_runs if (started_from(root, r) or set()) & old]
        got = sft_losses(mine)[:check]
        where = f"(step 1 loss {got[0].get('sft_loss') if got else None} against the " \
                f"recorded {record[0].get('sft_loss')})"
        if bound:
            shutil.rmtree(out, ignore_errors=True)
            print(f"{name}: this machine trains another warm start {where}, and "
                  f"{', '.join(bound)} started from the recorded one: seed left as it is, for "
                  f"a machine that reproduces it ({run_machine(root, name)})", flush=True)
            return False
        for f in (f"eval_{name}.json", f"metrics_{name}.jsonl", f"run_{name}.json"):
            if os.path.exists(os.path.join(root, f)):
                print(f"{name}: another model {where}; {f} kept as {set_aside(root, f)}",
                      flush=True)
        results.pop(name, None)
    run_train(cfg_kwargs)
    keep_metrics(out, root, name)
    return True


def run_machine(root, name):
    """Where run `name` was trained, as its run_{name}.json says."""
    path = os.path.join(root, f"run_{name}.json")
    if not os.path.exists(path):
        return "machine not recorded"
    with open(path) as f:
        return json.load(f).get("machine", "machine not recorded")


def keep_metrics(out, root, name, init=None):
    """Copy a run's per-step metrics and its settings (with the machine) beside its evaluation:
    metrics_{name}.jsonl, run_{name}.json. An RL run's run_{name}.json also gets `init_sha`,
    the hash of its warm start's metrics.jsonl (every SFT loss to 17 digits): two runs with the
    same init_sha started from the same warm start, which is what pairs them by seed (the hash
    of the losses alone, losses_sha; runs recorded before it was used carry the file's hash)."""
    for src, dst in (("metrics.jsonl", f"metrics_{name}.jsonl"), ("run.json", f"run_{name}.json")):
        if os.path.exists(os.path.join(out, src)):
            shutil.copyfile(os.path.join(out, src), os.path.join(root, dst))
    run_json = os.path.join(root, f"run_{name}.json")
    if os.path.exists(run_json):
        with open(run_json) as f:
            run = json.load(f)
        if init:
            run["init_sha"] = losses_sha(os.path.join(init, "metrics.jsonl"))
        write_json(run_json, run)


def provenance(root, seeds):
    """One line a seed: where each of its runs was trained and which warm start each RL run
    started from (a replication spread over sessions lands on both kinds of CPU, and a fresh
    clone retrains a warm start it needs: its RL runs then pair with each other, not with the
    RL runs of the earlier one)."""
    lines = []
    for seed in seeds:
        runs = {}
        for f in sorted(os.listdir(root)):
            if f.startswith("run_") and f.endswith(f"-s{seed}.json"):
                with open(os.path.join(root, f)) as fh:
                    runs[f[len("run_"):-len(".json")]] = json.load(fh)
        if not runs:
            continue
        warm = warm_identity(root, f"warm-s{seed}")
        parts = []
        for name, run in runs.items():
            part = f"{name}: {run.get('machine', 'machine not recorded')}"
            if name.startswith("grpo-") or "init_sha" in run:
                init = run.get("init_sha")
                part += (" (warm start not recorded)" if init is None else
                         f" (from warm-s{seed} as in metrics_warm-s{seed}.jsonl)" if init in warm
                         else f" (from another warm start, {init})")
            parts.append(part)
        lines.append(f"- seed {seed}: " + "; ".join(parts))
    return lines


def recorded_seeds(root):
    """The seeds with an evaluation in the report folder (eval_{method}-s{seed}.json; a set-aside
    eval_...stale.json does not count)."""
    return {int(m.group(1)) for f in os.listdir(root)
            for m in [re.fullmatch(r"eval_.+-s(\d+)\.json", f)] if m}


def load_eval(root, name, suites=None):
    """The suites eval_{name}.json has, of these (None: all; {} if there is no file)."""
    path = os.path.join(root, f"eval_{name}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        res = json.load(f)
    return {s: v for s, v in res.items() if suites is None or s in suites}


def run_eval(name, model, root, limit, gen, suites=SUITES):
    """eval_{name}.json, written after each suite: an interrupted evaluation keeps the suites
    it finished and does only the others when run again (the model loaded once)."""
    path = os.path.join(root, f"eval_{name}.json")
    res = load_eval(root, name)

    def save(done):
        res.update(done)
        write_json(path, res)
    todo = [s for s in suites if s not in res]
    if todo:
        evaluate_model(model, todo, limit=limit, trained_on=IN_DOMAIN, on_suite=save, **gen)
    return {s: res[s] for s in suites}


def mean_curve(paths, key, phase):
    """Mean over seeds of metrics[key] per step (steps every seed has)."""
    runs = []
    for p in paths:
        if os.path.exists(p):
            with open(p) as f:
                rows = [json.loads(line) for line in f]
            runs.append([row[key] for row in rows if row["phase"] == phase])
    n = min(map(len, runs), default=0)
    return np.arange(1, n + 1), np.mean([r[:n] for r in runs], 0) if n else []


def curves(methods, root, seeds):
    """training_curves.png: per method, mean over seeds of reward, rollout accuracy, groups
    with signal (GRPO) and of the SFT loss."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for m in methods:
        paths = [os.path.join(root, f"metrics_{m}-s{s}.jsonl") for s in seeds]
        phase = "sft" if m in ("sft", "sft-slow", "warm") else "grpo"
        keys = ["sft_loss"] if phase == "sft" else ["reward_mean", "accuracy", "groups_with_signal"]
        for key in keys:
            ax = axes[3] if key == "sft_loss" else axes[["reward_mean", "accuracy",
                                                         "groups_with_signal"].index(key)]
            x, y = mean_curve(paths, key, phase)
            if len(x):
                ax.plot(x, y, "o-", ms=3, label=m)
    titles = ["mean reward (each run's own reward)", "rollout accuracy (sampled)",
              "groups with signal", "SFT loss (teacher trajectories)"]
    for ax, t, xl in zip(axes, titles, ["GRPO step"] * 3 + ["SFT step"]):
        ax.set(title=t + f" - mean of {len(seeds)} seeds", xlabel=xl)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "training_curves.png"), dpi=110)
    plt.close("all")


def cell(values):
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def design(p, cfg):
    """What a seed trains, in words, for table.md."""
    warm = f"warm start {p['warm_steps']} SFT steps" + (f" on {p['warm_suite']}"
                                                        if p.get("warm_suite") else "")
    sft = (f"warm start + {p['rl_steps']} SFT steps" if p.get("sft_from_warm") else
           f"{p['warm_steps'] + p['rl_steps']} SFT steps")
    return (f"{warm}; sft {sft}; grpo-* warm start + {p['rl_steps']} GRPO steps (equal "
            f"optimizer steps), drawing up to {cfg.max_sample_batches} batches of questions a step")


def paired(starts, a, b):
    """May runs a and b be compared as a pair? Not when both say where they started and it is
    not the same warm start (a seed retrained elsewhere: its new runs pair with each other)."""
    sa, sb = starts.get(a), starts.get(b)
    return sa is None or sb is None or bool(sa & sb)


def ci_row(results, a, b, seeds, suites, starts, per_problem):
    """'| a - b | seeds | d [lo, hi] | ...': the paired bootstrap CI of a - b per suite, over
    the seeds whose runs a and b both have per_problem(result) (0/1 per problem) and started
    from the same warm start; None when no seed has both."""
    both = {suite: [s for s in seeds
                    if per_problem(results.get(f"{a}-s{s}", {}).get(suite, {})) is not None
                    and per_problem(results.get(f"{b}-s{s}", {}).get(suite, {})) is not None
                    and paired(starts, f"{a}-s{s}", f"{b}-s{s}")] for suite in suites}
    most = max(map(len, both.values()))
    if not most:
        return None
    cells = []
    for suite, ss in both.items():
        if not ss:
            cells.append("-")
            continue
        d, lo, hi = paired_bootstrap_ci([per_problem(results[f"{a}-s{s}"][suite]) for s in ss],
                                        [per_problem(results[f"{b}-s{s}"][suite]) for s in ss])
        cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" +
                     ("" if len(ss) == most else f" ({len(ss)} seeds)"))
    return f"| {a} - {b} | {most} | " + " | ".join(cells) + " |"


TOOL_USE = {"tool_set_match": "Tool-set match (the rollout's valid tools equal the teacher's)",
            "hallucinated_tool_rate": "Hallucinated-tool rate (a call names a tool not shown)"}


def tables(results, methods, seeds, suites=SUITES, sft_from_warm=False, starts=None):
    """Markdown: mean ± std over seeds per method and suite; paired bootstrap CIs over the
    seeds whose two runs started from the same warm start (starts: {run: started_from})."""
    starts = starts or {}
    per = {m: [results["base"]] if m == "base" else [results[f"{m}-s{s}"] for s in seeds
                                                      if set(suites) <= set(results.get(f"{m}-s{s}", {}))]
           for m in methods}
    n = {s: results["base"][s]["n"] for s in suites}
    lines = ["| method | seeds | " + " | ".join(f"{s} acc (n={n[s]})" for s in suites) + " | " +
             " | ".join(f"{s} tool-JSD" for s in suites) + " |", "|" + "---|" * (2 + 2 * len(suites))]
    for m, rs in per.items():
        if rs:
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(
                cell([r[s][k] for r in rs]) for k in ("accuracy", "tool_jsd") for s in suites) + " |")
    # what the MENTOR reward pays for besides the answer (reward.py's tool-set match and
    # no-hallucination parts), measured greedily: did RL with it change how tools are used?
    claims = (("grpo-mentor", "sft"), ("grpo-mentor", "grpo-sparse"),
              ("grpo-mentor", "sft-slow"))        # the last: a check on the SFT baseline
    for k, what in TOOL_USE.items():
        if all(k in r[s] for rs in per.values() for r in rs for s in suites):
            lines += ["", f"{what}, mean ± std over seeds:", "",
                      "| method | " + " | ".join(suites) + " |", "|" + "---|" * (1 + len(suites))]
            lines += [f"| {m} | " + " | ".join(cell([r[s][k] for r in rs]) for s in suites) + " |"
                      for m, rs in per.items() if rs]
            # evaluations that kept it per problem (evaluate.py's per_problem) also pair
            rows = [ci_row(results, a, b, seeds, suites, starts,
                           lambda r: r.get("per_problem", {}).get(k)) for a, b in claims]
            rows = [row for row in rows if row]
            if rows:
                lines += ["", "Paired bootstrap 95% CI of its difference:", "",
                          "| comparison | seeds | " + " | ".join(suites) + " |",
                          "|" + "---|" * (2 + len(suites))] + rows
    lines += ["", "Paired bootstrap 95% CI of the accuracy difference (problems and seeds "
              "resampled, 10,000 replicates; seeds paired by their shared warm start):", "",
              "| comparison | seeds | " + " | ".join(suites) + " |", "|" + "---|" * (2 + len(suites))]
    # the two claims (and MENTOR - sft-slow), then what each run did to the warm start it
    # started from (suite by suite: a warm start's evaluation may lack suites, see main)
    for a, b in claims + (("grpo-mentor", "warm"), ("grpo-sparse", "warm")) + \
            ((("sft", "warm"), ("sft-slow", "warm")) if sft_from_warm else ()):
        row = ci_row(results, a, b, seeds, suites, starts, lambda r: r.get("correct"))
        if row:
            lines.append(row)
    return "\n".join(lines), {m: {s: {"accuracy": float(np.mean([r[s]["accuracy"] for r in rs])),
                                     "accuracy_std": float(np.std([r[s]["accuracy"] for r in rs])),
                                     "tool_jsd": float(np.mean([r[s]["tool_jsd"] for r in rs]))}
                                 for s in suites} for m, rs in per.items() if rs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--sft-slow", action="store_true",
                    help="also train sft-slow per seed: sft at RL's lr instead of sft_lr")
    ap.add_argument("--runs", nargs="+", metavar="METHOD",
                    help="train and evaluate only these of a seed's runs (e.g. grpo-mentor "
                         "grpo-sparse: a session too short for a whole seed); the warm start is "
                         "still trained when they need it, and evaluated only if 'warm' is named")
    ap.add_argument("--report", action="store_true",
                    help="rewrite table.md and the plots from the evaluations in results/; train nothing")
    args = ap.parse_args(argv)
    p = dict(PRESETS[args.preset])
    runs_dir, root = p.pop("out"), p.pop("report")      # checkpoints; what gets committed
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    # eval_n=0: train.py skips its own before/after check; every model is evaluated below
    # train.py's defaults (its cpu preset), or its gpu preset, give lr, token limits, precision
    preset = "gpu" if args.preset == "gpu" else "cpu"
    common = {**{k: v for k, v in (GPU_PRESET if preset == "gpu" else {}).items()
                 if k not in ("steps", "warmup_sft_steps", "eval_n")}, "preset": preset,
              "student": p["student"], "eval_n": 0, **{k: p[k] for k in TRAIN_KEYS if k in p}}
    cfg = Config(**common)
    # evaluated in the precision it trains in, as train.py's own evaluations are; each record
    # names its precision (results/replicate-cpu's predate the cpu preset's fp32: bf16 on AVX-512)
    gen = dict(max_new_tokens=cfg.max_new_tokens, max_total_tokens=cfg.max_total_tokens,
               max_turns=cfg.max_turns, precision=cfg.precision)
    rewards = ["sparse", "mentor"] + (["partial", "no_tool_match", "f1"] if args.ablations else [])
    # sft-slow, once evaluated, stays in the table (a later --report need not repeat the flag)
    slow = args.sft_slow or any(f.startswith("eval_sft-slow-s") for f in os.listdir(root))
    methods = ["base"] + (["warm"] if p["warm_steps"] else []) + ["sft"] + \
        (["sft-slow"] if slow else []) + [f"grpo-{r}" for r in rewards]
    slow_sft = f"; sft-slow as sft at lr {cfg.lr:g} (sft: {cfg.sft_lr:g})" if slow else ""
    suites = p.get("suites", SUITES)
    # trained only when asked for (--sft-slow, or named in --runs)
    runs = args.runs or [m for m in methods[1:] if m != "sft-slow" or args.sft_slow]
    if set(runs) - set(methods[1:]):
        ap.error(f"--runs: not a method of this preset: {sorted(set(runs) - set(methods[1:]))} "
                 f"(its methods: {' '.join(methods[1:])})")
    results = {"base": run_eval("base", p["student"], root, p["eval_limit"], gen, suites)}
    # what earlier invocations (other sessions) finished: the table is whole from the first
    # report on, whichever seeds this invocation trains (--seeds 1 2 still tables seed 0). A
    # warm start's partial evaluation (its checkpoint lost mid-evaluation) counts too: each
    # suite it has still measures where that seed's RL runs started (the RL - warm rows)
    table_seeds = sorted(set(args.seeds) | recorded_seeds(root))
    for s in table_seeds:
        for m in methods[1:]:
            done = load_eval(root, f"{m}-s{s}", suites)
            if done and (m == "warm" or len(done) == len(suites)):
                results[f"{m}-s{s}"] = done

    def report():
        """table.md and the plots from every evaluation so far (rewritten after each one)."""
        table, summary = tables(results, methods, table_seeds, suites,
                                p.get("sft_from_warm", False),
                                {name: started_from(root, name) for name in results})
        plot(summary, suites, root)
        curves(methods[1:], root, table_seeds)
        with open(os.path.join(root, "table.md"), "w") as f:
            f.write(f"{table}\n\npreset {args.preset}, seeds {table_seeds}; per seed: "
                    f"{design(p, cfg)}{slow_sft}; wall time of this invocation "
                    f"{time.time() - t0:.0f} s"
                    "\n\nWhere each run was trained:\n\n" +
                    "\n".join(provenance(root, table_seeds)) + "\n")
        print(table, flush=True)

    if args.report:
        report()
        return
    # A seed at a time, and each run evaluated as soon as it is trained, so that an interrupted
    # invocation leaves finished evaluations behind. The warm start first: every other run of
    # the seed starts from it, and its scores say whether the seed is worth its hours.
    for seed in args.seeds:
        warm = os.path.join(runs_dir, f"warm-s{seed}") if p["warm_steps"] else None
        # equal optimizer steps: SFT gets the warm start's steps plus as many as RL takes
        sft = (dict(common, method="sft", init=warm, steps=p["rl_steps"], seed=seed)
               if p.get("sft_from_warm") else
               dict(common, method="sft", steps=p["warm_steps"] + p["rl_steps"], seed=seed))
        todo = [(f"sft-s{seed}", sft)]
        # MENTOR first of the RL runs: both comparisons need it, so a session cut off after two
        # runs of a seed (a seed is hours on 2 cores) leaves one comparison complete
        todo += [(f"grpo-{r}-s{seed}", dict(common, method="grpo", reward=r, init=warm,
                                            warmup_sft_steps=0, steps=p["rl_steps"], seed=seed))
                 for r in sorted(rewards, key=lambda r: r != "mentor")]
        todo += [(f"sft-slow-s{seed}", dict(sft, sft_lr=cfg.lr))] if slow else []
        seed_runs = [n for n, kw in todo if kw.get("init") == warm]
        todo = [(n, kw) for n, kw in todo if n.rsplit("-s", 1)[0] in runs]
        with_warm = "warm" in runs            # this invocation evaluates the warm start too
        warm_eval = os.path.join(root, f"eval_warm-s{seed}.json")
        # the warm start is (re)trained while a run (of those this invocation does, or any, if
        # it does the warm start) still needs it or its own evaluation is unfinished; a machine
        # that cannot reproduce it leaves the seed after CHECK_STEPS steps (unfinished and
        # unrecorded: nothing to check a retrained one against, so it stays)
        needing = seed_runs if with_warm else [n for n, _ in todo if n in seed_runs]
        if warm and (not all(evaluated(root, n, suites) for n in needing) or (
                with_warm and not evaluated(root, f"warm-s{seed}", suites)
                and os.path.exists(os.path.join(root, f"metrics_warm-s{seed}.jsonl")))):
            if not retrain_warm(root, f"warm-s{seed}", dict(
                    common, method="sft", steps=p["warm_steps"], seed=seed, out=warm,
                    **({"suite": p["warm_suite"]} if p.get("warm_suite") else {})), results,
                    seed_runs):
                continue
        if warm and with_warm and os.path.exists(os.path.join(warm, "result.json")):
            results[f"warm-s{seed}"] = run_eval(f"warm-s{seed}", warm, root, p["eval_limit"],
                                                 gen, suites)
            report()
        elif warm and with_warm:
            print(f"warm-s{seed}: its checkpoint is gone and its runs are evaluated; its "
                  f"evaluation stays as it is ({warm_eval}: "
                  f"{'partial' if os.path.exists(warm_eval) else 'none'})", flush=True)
        for name, kwargs in todo:
            out = os.path.join(runs_dir, name)
            if not evaluated(root, name, suites):
                set_aside_stale_eval(root, name, out)
                run_train(dict(kwargs, out=out))
                keep_metrics(out, root, name, kwargs.get("init"))
            results[name] = run_eval(name, out, root, p["eval_limit"], gen, suites)
            report()
    print(f"wrote {root}/table.md, accuracy.png, jsd_vs_accuracy.png, training_curves.png")


if __name__ == "__main__":
    main()
