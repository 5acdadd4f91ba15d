"""A training run's folder: setup, checkpoints, resume, RNG, the metrics log, the held-out
evaluations. Second reading: train.py calls these, and none of it is the method.

    OUT/run.json         the Config and the machine it ran on
    OUT/metrics.jsonl    one line a step (phase, step, reward parts, rates, KL, times)
    OUT/checkpoint.pt    weights, optimizer, phase and step, every rank's RNG (written atomically)
    OUT/reference.pt     the frozen KL reference, so a resumed run compares against the same weights
    OUT/evals.json       each held-out evaluation ("start", "rl_start", "end"), done once
    OUT/curves.png       the per-step curves
    OUT/model/           the trained student as a standard model folder (model.export)
    OUT/result.json      written last: the run is done (replicate.py looks for it)

`--resume` continues from checkpoint.pt: the metric lines logged after it are dropped, the
evaluations already done are kept, and the RNG states are restored, so on CPU a killed and
resumed run is the same run bit for bit (tests/test_train_e2e.py kills one with SIGKILL). A
finished run resumed with more --steps goes on from its last step; its old end evaluation is
kept as a point along the way ("grpo_10") and the new end is evaluated.
"""
import argparse
import copy
import inspect
import json
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from distributed import (all_sum, barrier, full_state, gather, is_main, rank,
                         setup as setup_distributed, shard, shard_optimizer_state, teardown,
                         unsharded, world)
from engine import set_grad_checkpointing
from evaluate import accuracy, paired_bootstrap_ci, plot_training
from model import (CHECKPOINT_FILE, EXPORT_DIR, PRECISIONS, ModelNotAvailable, export, load_model,
                   machine, release_memory)
from reward import VARIANTS
from tasks import BUILTIN_SUITES, SuiteError, load_suite
from teacher import apply_teacher_tools, no_solution_message, read_cache


# Held-out problems the base student is evaluated on before the SFT warm start: the 135M
# student has scored 0.000 with no tool call on every run so far (results/), so a full
# evaluation would only spend minutes; the warm start's gain is paired on these problems.
START_EVAL_N = 25


@dataclass
class Run:
    """What the training loops share: the model, its optimizer, where the run stands."""
    cfg: object
    tok: object
    model: object
    opt: object
    suite: object
    test_set: list
    phase: str                  # "sft" | "grpo": the phase the run is in
    step: int                   # optimizer steps done in that phase
    log: object                 # metrics.jsonl (rank 0), else None
    evals: dict                 # the held-out evaluations done so far
    train_seconds: float = 0.0  # optimizer steps' wall time so far (evaluations not counted)
    rollouts: int = 0           # rollouts drawn by GRPO so far
    grpo_clock: tuple = None    # (time, step) where this process's GRPO steps started

    def path(self, name):
        return os.path.join(self.cfg.out, name)

    def save(self, step, phase):
        save_checkpoint(self.path(CHECKPOINT_FILE), self.model, self.opt, step, self.cfg, phase)

    @property
    def batch_rollouts(self):
        """Rollouts in one batch of questions: batch_size x group_size."""
        return self.cfg.batch_size * self.cfg.group_size

    def minutes_left(self):
        """'~12 min': the GRPO steps left at the pace of this process's steps so far, the
        evaluations along the way included (the one at the end not)."""
        t0, first = self.grpo_clock
        pace = (time.time() - t0) / max(self.step - first, 1)
        return f"~{pace * (self.cfg.steps - self.step) / 60:.0f} min"

    def log_step(self, m):
        """One JSON line of metrics (rank 0 only holds the log); a GRPO step's adds the
        rollouts drawn so far."""
        if m["phase"] == "grpo" and not self.grpo_clock:     # its first step in this process
            self.grpo_clock = (time.time() - m["step_time"], m["step"] - 1)
        self.step, self.train_seconds = m["step"], self.train_seconds + m["step_time"]
        if m["phase"] == "grpo":
            self.rollouts += m["sample_batches"] * self.batch_rollouts
            m["rollouts"] = self.rollouts
        if self.log:
            self.log.write(json.dumps(m) + "\n")
            self.log.flush()

    def evaluate_along(self):
        """The evaluations along GRPO: every eval_every steps, every eval_rollouts rollouts,
        each printed with the RL phase so far and its CI (a look along the way: the run's test
        is the one at the end)."""
        due = []
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            due.append((f"grpo_{self.step}", f"after GRPO step {self.step}"))
        if self.cfg.eval_rollouts and self.rollouts % self.cfg.eval_rollouts == 0:
            due.append((f"rollouts_{self.rollouts}", f"after {self.rollouts} rollouts"))
        for name, label in due:
            self.evaluate(name, label)
            if is_main() and name in self.evals and "rl_start" in self.evals:
                print(f"RL phase so far: {gain(self.evals['rl_start'], self.evals[name])}")

    def evaluate(self, name, label, n=None):
        """Greedy accuracy on the (first n) held-out problems, done once, with a progress bar:
        kept in OUT/evals.json (written atomically), so a resumed run reports the evaluations of
        its earlier part; OUT/curves.png is redrawn with it."""
        if not self.test_set:
            return
        if name not in self.evals:
            policy = unsharded(self.model)                # every rank: a collective under --fsdp
            if is_main():                                 # the other ranks wait
                release_memory()                          # the training steps' dead heap
                t0 = time.time()
                self.evals[name] = accuracy(policy, self.tok, self.suite, self.test_set[:n],
                                            self.cfg, progress=True)
                self.evals[name]["eval_minutes"] = (time.time() - t0) / 60
                self.evals[name]["train_minutes"] = self.train_seconds / 60   # time-to-accuracy
                self.evals[name].update(rollouts=self.rollouts, phase=self.phase, step=self.step)
                write_json(self.path("evals.json"), self.evals)
                plot_training(self.path("metrics.jsonl"), self.path("curves.png"), self.evals)
        barrier()
        if label and name in self.evals:
            e = self.evals[name]
            print(f"{label} (n={len(e['correct'])}): " + " | ".join(
                f"{k} {e[k]:.3f}" for k in ("accuracy", "tool_call_rate", "boxed_rate",
                                             "truncated_rate")))


def start(cfg, first_phase, first_lr):
    """Join the process group, load the student (fp32 master weights) and the suite, write
    run.json, and resume from OUT/checkpoint.pt if --resume finds one -> Run."""
    problem = config_error(cfg)                     # a Config built in code is checked too
    if problem:
        sys.exit(problem)
    device = setup_distributed(cfg.fsdp) or cfg.device   # torchrun: a process group, a device each
    if cfg.batch_size % world() or cfg.sft_batch_size % world():
        sys.exit(f"--batch-size {cfg.batch_size} and --sft-batch-size {cfg.sft_batch_size} must "
                 f"be multiples of the {world()} processes (each takes whole groups)")
    # the same questions on every rank (Python/NumPy), its own rollouts on each (torch)
    random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed + rank())
    ckpt_path = os.path.join(cfg.out, CHECKPOINT_FILE)
    suite = load_suite(cfg.suite)                   # the suite and the model before --out exists
    if cfg.teacher != "reference":
        suite.problems = apply_teacher_tools(suite.problems, cfg.teacher)
    elif (cfg.method == "sft" or cfg.warmup_sft_steps) and \
            not all("solution" in p for p in suite.split("train")):
        sys.exit(no_solution_message(cfg.suite))     # the offline solver replays solutions
    tok, model = load_model(cfg.init or cfg.student, device=device)
    if cfg.grad_checkpointing:
        set_grad_checkpointing(model)
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.preset and is_main():
        print(f"preset {cfg.preset} ({'a CUDA device' if cfg.preset == 'gpu' else 'CPU settings'}; "
              f"--preset {'cpu' if cfg.preset == 'gpu' else 'gpu'} for the other); "
              + (f"{cfg.steps} SFT steps of {cfg.sft_batch_size}, lr {cfg.sft_lr:g}"
                 if cfg.method == "sft" else
                 f"{cfg.warmup_sft_steps} SFT + {cfg.steps} GRPO steps of {cfg.batch_size} x "
                 f"{cfg.group_size}, lr {cfg.lr:g}") + f", on {model.device}")
    if is_main():
        write_json(os.path.join(cfg.out, "run.json"),
                   {"student": cfg.student, **asdict(cfg), "world_size": world(),
                    "machine": machine(model.device, cfg.precision)})
    step, phase, logged = 0, first_phase, []        # logged: metric rows kept on resume
    resumed = cfg.resume and os.path.exists(ckpt_path)
    if resumed:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])             # whole weights, before any sharding
    if cfg.fsdp:
        shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=first_lr, weight_decay=0.0)
    if resumed:
        step, phase = state["step"], state["phase"]
        if cfg.fsdp:                                      # each rank keeps its shard of it
            shard_optimizer_state(opt, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])       # its lr included
        restore_rng(state, cfg.seed)
        if is_main():
            logged = drop_metrics_after(os.path.join(cfg.out, "metrics.jsonl"), phase, step)
            print(f"resumed {cfg.out} at {phase} step {step}")
    elif cfg.resume and is_main():
        print(f"not resumed: no checkpoint in {cfg.out}, starting fresh")
    barrier()                                       # every rank has read the checkpoint
    # a fresh run writes its log anew; rank 0 alone logs, evaluates and saves
    log = open(os.path.join(cfg.out, "metrics.jsonl"), "a" if resumed else "w") \
        if is_main() else None
    evals_path = os.path.join(cfg.out, "evals.json")
    evals = {}
    if resumed and os.path.exists(evals_path):
        with open(evals_path) as f:
            evals = json.load(f)
    seconds = sum(row["step_time"] for row in logged)             # rank 0's; the others 0
    batches = sum(row.get("sample_batches", 1) for row in logged if row["phase"] == "grpo")
    return Run(cfg, tok, model, opt, suite, suite.split("test")[:cfg.eval_n], phase, step, log,
               evals, seconds, int(all_sum(batches)) * cfg.batch_size * cfg.group_size)


def batches_allowed(run):
    """Batches the next GRPO step may draw: max_sample_batches, fewer where the rollout budget
    or the next eval_rollouts mark comes first (both multiples of a batch: start checks)."""
    cfg = run.cfg
    marks = [cfg.rollout_budget] if cfg.rollout_budget else []
    if cfg.eval_rollouts:
        marks.append((run.rollouts // cfg.eval_rollouts + 1) * cfg.eval_rollouts)
    return min([cfg.max_sample_batches] + [(m - run.rollouts) // run.batch_rollouts
                                           for m in marks])


def frozen_reference(run):
    """The KL reference: the policy as it is now (RL's start), written to OUT/reference.pt once
    so that a resumed run compares against the same weights; a plain copy (under --fsdp too:
    whole on every rank, no gradients, no collectives)."""
    ref_path = run.path("reference.pt")
    if run.step == 0 or not os.path.exists(ref_path):
        weights = full_state(run.model.state_dict())
        if is_main():
            torch.save(weights, ref_path + ".tmp")
            os.replace(ref_path + ".tmp", ref_path)
    barrier()                                       # written before any rank reads it
    ref_model = copy.deepcopy(unsharded(run.model)).requires_grad_(False).eval()
    ref_model.load_state_dict(torch.load(ref_path, map_location=run.model.device))
    return ref_model


def finish(run, sft_steps, rl_steps):
    """The last evaluation, the gains with their CIs, OUT/model/ (model.export), result.json
    and the curves."""
    cfg, evals = run.cfg, run.evals
    result = {"eval_problems": len(run.test_set)}
    if run.test_set:
        end = evals.get("end")
        if end and "step" in end and (end["phase"], end["step"]) != (run.phase, run.step):
            # a finished run resumed with more --steps: its old end is a point along the way
            evals[f"{end['phase']}_{end['step']}"] = evals.pop("end")
        run.evaluate("end", None)
        result.update(evals)
    policy = unsharded(run.model)                   # every rank: a collective under --fsdp
    if not is_main():
        teardown()
        return result
    if run.test_set:
        where = f"held-out {cfg.suite} test problems, greedy"
        if "start" in evals and sft_steps and ("rl_start" in evals or not rl_steps):
            what = "warm start" if cfg.method == "grpo" else "SFT"
            print(f"{what} ({sft_steps} SFT steps), {where}: "
                  f"{gain(evals['start'], evals['rl_start' if rl_steps else 'end'])}")
        if rl_steps and "rl_start" in evals:
            print(f"RL phase ({run.step} GRPO steps, {run.rollouts} rollouts, {cfg.reward} "
                  f"reward), {where}: "
                  f"{gain(evals['rl_start'], evals['end'])}")
    if os.path.exists(run.path(CHECKPOINT_FILE)):         # trained: its weights, in memory
        print(f"the trained student as a standard model folder (transformers, vLLM): "
              f"{export(cfg.out, run.path(EXPORT_DIR), run.tok, policy)}")
    print(time_spent(run.path("metrics.jsonl"), evals))
    write_json(run.path("result.json"), result)      # replicate.py: the run is done
    plot_training(run.path("metrics.jsonl"), run.path("curves.png"), evals)
    teardown()
    return result


def time_spent(metrics_path, evals):
    """Where the run's minutes went, from metrics.jsonl's step times and each evaluation's own
    -> 'minutes: SFT 6.3 | GRPO 26.8 (rollouts 11.8) | 4 evaluations 5.1' (loading the model,
    checkpoints and the plot not counted; what a resumed run repeated, not counted twice)."""
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f]
    minutes = {phase: sum(r["step_time"] for r in rows if r["phase"] == phase) / 60
               for phase in ("sft", "grpo")}
    rollouts = sum(r["rollout_time"] for r in rows if r["phase"] == "grpo") / 60
    timed = [e["eval_minutes"] for e in evals.values() if "eval_minutes" in e]
    return (f"minutes: SFT {minutes['sft']:.1f} | GRPO {minutes['grpo']:.1f} (rollouts "
            f"{rollouts:.1f}) | {len(timed)} evaluations {sum(timed):.1f}")


def gain(before, after):
    """'0.170 -> 0.260 (+0.090, 95% CI [+0.020, +0.160], paired bootstrap, n=100)', on the
    problems both evaluated (the first n: an evaluation of fewer problems takes the first)."""
    n = min(len(before["correct"]), len(after["correct"]))
    b, a = before["correct"][:n], after["correct"][:n]
    d, lo, hi = paired_bootstrap_ci(a, b)
    return (f"{sum(b) / n:.3f} -> {sum(a) / n:.3f} ({d:+.3f}, 95% CI "
            f"[{lo:+.3f}, {hi:+.3f}], paired bootstrap, n={n})")


# ----------------------------------------------------------------------------
# The command line: every Config field is a flag, its comment the flag's help

CHOICES = {"method": ["grpo", "sft"], "precision": PRECISIONS, "sft_precision": PRECISIONS,
           "update_precision": PRECISIONS, "reward": VARIANTS, "advantage": ["grpo", "dr_grpo"],
           "preset": ["cpu", "gpu"]}
AT_LEAST = {1: ("batch_size", "sft_batch_size", "max_sample_batches",
                "ppo_epochs", "max_turns", "max_new_tokens", "max_total_tokens", "micro_batch",
                "save_every"),
            0: ("steps", "warmup_sft_steps", "micro_batch_tokens", "eval_n", "eval_every",
                "rollout_budget", "eval_rollouts", "kl_coef", "clip_eps", "tis_cap")}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def config_error(cfg):
    """What is wrong with a Config's values, in one line naming the flag (None: nothing)."""
    def flag(name):
        return f"--{name.replace('_', '-')} {getattr(cfg, name)}"
    for low, names in AT_LEAST.items():
        for name in names:
            if getattr(cfg, name) < low:
                return f"{flag(name)}: at least {low}"
    for name in ("lr", "sft_lr", "temperature"):
        if not getattr(cfg, name) > 0:
            return f"{flag(name)}: must be > 0" + (" (rollouts sample from softmax(logits / "
                                                   "T))" if name == "temperature" else "")
    if cfg.method == "grpo" and cfg.steps and cfg.group_size < 2:
        return (f"{flag('group_size')}: GRPO's advantage compares the rollouts of a group "
                f"(r - group mean); a group of one has advantage 0 and nothing to learn: use 2 "
                f"or more")
    per_batch = cfg.batch_size * cfg.group_size
    if cfg.rollout_budget % per_batch or cfg.eval_rollouts % per_batch:
        return (f"--rollout-budget {cfg.rollout_budget} and --eval-rollouts {cfg.eval_rollouts} "
                f"must be multiples of a batch's {per_batch} rollouts (batch x group size)")
    if cfg.fsdp and cfg.max_sample_batches > 1:
        return ("--fsdp needs --max-sample-batches 1 (plain GRPO; the gpu preset's): with dynamic "
                "sampling ranks keep different numbers of groups")
    return None


def field_help(config_class):
    """{field: the comment beside it in the class's source, continuation lines joined}: the
    one source of every flag's --help."""
    helps, last = {}, None
    for line in inspect.getsource(config_class).splitlines():
        field = re.match(r"\s+(\w+): [^#]*#\s?(.*)$", line)
        more = re.match(r"\s+#\s?(.*)$", line)
        if field:
            last = field.group(1)
            helps[last] = field.group(2).strip()
        elif more and last:
            helps[last] += " " + more.group(1).strip()
        else:
            last = None
    return helps


def suite_name(value):
    """--suite, checked at parse time: a built-in name, or a suite file that loads (its errors
    name the bad entry before any model loads; a built-in suite loads once, in start)."""
    if value in BUILTIN_SUITES:
        return value
    try:
        load_suite(value)
    except SuiteError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def teacher_file(value):
    """--teacher, checked at parse time: the offline solver, or a trajectory file that reads."""
    if value == "reference":
        return value
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"no trajectory file {value} (teacher.py writes one; "
                                         f"'reference' is the offline solver)")
    try:
        read_cache(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main(train, parse_args):
    """train.py's command: parse, train; a model or suite that is not there ends in one line."""
    try:
        train(parse_args())
    except (ModelNotAvailable, SuiteError) as e:
        sys.exit(str(e))


def parse_args(config_class, gpu_preset, argv=None, description=None, choices=None):
    """-> config_class(its defaults (the cpu preset), then --preset gpu's values where chosen,
    then a --config file's, then the flags given), checked (config_error). Booleans are
    switches; 0 is a value; --preset defaults to gpu where CUDA is, else cpu. --help shows
    the value a plain run takes here, and the other preset's where it differs."""
    here = "gpu" if torch.cuda.is_available() else "cpu"
    ap = Parser(description=description)
    ap.add_argument("--config", metavar="RUN.json", help="replay a run: the settings in its "
                    "run.json (the flags given still win)")
    defaults, helps = asdict(config_class()), field_help(config_class)
    presets = {"cpu": {}, "gpu": gpu_preset}
    for name, value in defaults.items():
        flag = "--" + name.replace("_", "-")
        shown = {p: presets[p].get(name, value) if name != "preset" else here for p in presets}
        text = helps.get(name, "") + f" (default: {shown[here]}" + "".join(
            f"; --preset {p}: {v}" for p, v in shown.items() if p != here and v != shown[here])
        text = (text + ")").replace("%", "%%")
        if isinstance(value, bool):
            ap.add_argument(flag, action="store_true", default=None, help=text)
        else:
            kind = {"suite": suite_name, "teacher": teacher_file}.get(name) or \
                (type(value) if value is not None else str)
            ap.add_argument(flag, type=kind, default=None, help=text,
                            choices={**CHOICES, **(choices or {})}.get(name))
    args = ap.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}   # 0 is a value
    replay = {}
    if given.get("config"):
        try:
            with open(given.pop("config")) as f:
                replay = {k: v for k, v in json.load(f).items() if k in defaults and k != "resume"}
        except (OSError, ValueError) as e:
            ap.error(f"--config: {e}")
    given.pop("config", None)
    preset = given.pop("preset", None) or replay.pop("preset", None) or here
    fields = {**{k: v for k, v in defaults.items() if k != "warmup_sft_steps"},
              **presets[preset], **replay, **given, "preset": preset}
    cfg = config_class(**fields)
    problem = config_error(cfg)
    if problem:
        ap.error(problem)
    return cfg


# ----------------------------------------------------------------------------
# Checkpoints, RNG, atomic files

def save_checkpoint(path, model, opt, step, cfg, phase):
    """Atomic: write a temp file in the same folder, then rename over the old checkpoint.
    Under torchrun rank 0 writes it, with every rank's RNG state ("rng_ranks"; the CUDA one
    where sampling draws from it), and under --fsdp with the shards gathered: whole weights
    and optimizer state, which any number of processes can load."""
    device = getattr(model, "device", None) or next(model.parameters()).device   # HF: .device
    rngs = gather({"python": random.getstate(), "numpy": np.random.get_state(),
                   "torch": torch.get_rng_state(),
                   **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})})
    weights, opt_state = full_state(model.state_dict()), full_state(opt.state_dict())
    if is_main():
        state = {"model": weights, "optimizer": opt_state, "step": step,
                 "phase": phase, "config": asdict(cfg), "rng": rngs[0], "rng_ranks": rngs}
        tmp = path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
    barrier()


def restore_rng(state, seed):
    """Every rank's RNG as saved. On another number of ranks than the checkpoint's, each
    rank takes rank 0's Python/NumPy state (the question order) and a fresh torch seed
    of its own: the run goes on, but is not the run an unbroken one would have been."""
    rngs = state.get("rng_ranks", [state["rng"]])
    rng = rngs[rank()] if len(rngs) == world() else rngs[0]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if len(rngs) == world():
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():   # sampling on a GPU draws from it
            torch.cuda.set_rng_state(rng["cuda"], torch.cuda.current_device())
    else:
        torch.manual_seed(seed + 1000 * state["step"] + rank())


def write_json(path, obj):
    """json.dump, atomically: a process killed while writing leaves the old file, never half
    of the new one."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def drop_metrics_after(path, phase, step):
    """Keep the metric lines up to the checkpoint (phase, step): a run killed after logging a
    step but before saving it redoes that step, and logs it once. Rewritten atomically.
    Returns the rows kept."""
    if not os.path.exists(path):
        return []
    order = {"sft": 0, "grpo": 1}
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        row = json.loads(line) if line.endswith("\n") else None   # a torn last line is dropped
        if row and (order[row["phase"]], row["step"]) <= (order[phase], step):
            keep.append((line, row))
    if len(keep) < len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(line for line, _ in keep)
        os.replace(path + ".tmp", path)
    return [row for _, row in keep]


# ----------------------------------------------------------------------------
# A step's reward metrics, pooled over ranks

def reward_metrics(rewards, scored):
    """A step's rewards (B, G): mean, std, each part's mean, groups with signal."""
    parts = {}
    for _, p in scored:
        for k, v in p.items():
            parts[k] = parts.get(k, 0.0) + v / len(scored)
    signal = rewards.amax(1) > rewards.amin(1)                   # train.has_signal
    return {"reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
            **{f"reward/{k}": v for k, v in parts.items()},
            "groups_with_signal": signal.float().mean().item()}


def step_reward_metrics(sampled_rewards, scores):
    """reward_metrics of a step's rollouts on every rank together (one process: its own).
    sampled_rewards: this rank's list of (B, G) tensors; scores: its (reward, parts) pairs."""
    everyone = gather((torch.cat(sampled_rewards), scores))
    return reward_metrics(torch.cat([r for r, _ in everyone]),              # (B' * world, G)
                          [s for _, sc in everyone for s in sc])
