"""GRPO with MENTOR's teacher-guided reward, plus sparse-RL and SFT baselines, by hand.

    python train.py                                   # embedded SmolLM2-135M, CPU, ~15 min
    python train.py --student Qwen2.5-0.5B            # one GPU, bf16
    python train.py --reward sparse                   # sparse-reward RL baseline
    python train.py --method sft --steps 100          # SFT on teacher trajectories
    python train.py --resume --out runs/mentor        # continue a killed run
    python train.py --precision fp32                  # no bf16 matmuls (default: where fast)
    torchrun --nproc_per_node 8 train.py --fsdp ...   # several GPUs (distributed.py)

One GRPO step (docs/paper.md, "The method"):
  1. sample batch_size training questions, group_size rollouts each (rollout.py)
     (--max-sample-batches N: more batches while too few groups have signal, DAPO);
  2. score every rollout with the reward (reward.py) -> r of shape (B, G);
  3. A = (r - mean_group) / (std_group + eps), the same for every token of a rollout;
     rows with A == 0 (a group whose rewards are all equal) carry no policy gradient
     and are left out of the loss pass (DAPO drops such groups too);
  4. loss = token mean over generated tokens of
         -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + kl_coef * k3(ref, pi)
     where ratio = pi / pi_rollout and tool-response tokens are masked out.

Precision (model.py): weights and AdamW state stay fp32 on a CPU; where bf16
matmuls are fast (a bf16 GPU, an AVX-512 CPU) the rollout samples from a bf16
copy of the weights and the loss forwards run under bf16 autocast. The loss
recomputes log-probs from the trained weights, so ratio == 1 still holds.

Cold start: a 135M student given the tool prompt calls no tool and boxes no
answer, so every rollout earns the same reward and GRPO has no signal. The
default pipeline therefore gives RL a short SFT warm start on the teacher's
trajectories (--warmup-sft-steps), and the frozen KL reference is the policy
after that warm start. Instruct students that already call tools (Qwen2.5)
start RL directly (their preset has no warm start).
"""
import argparse
import copy
import functools
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tqdm import tqdm

from distributed import (all_sum, barrier, clip_grad_norm, full_state, gather, is_main,
                         is_sharded, mean_metrics, my_share, rank, setup as setup_distributed,
                         shard, shard_optimizer_state, sync_gradients, teardown, unsharded, world)
from engine import backward, logprobs, make_batch, set_grad_checkpointing
from evaluate import paired_bootstrap_ci, plot_training, rollout_metrics
from model import (CHECKPOINT_FILE, DEFAULT_STUDENT, PRECISIONS, ModelNotAvailable,
                   compute_dtype, load_model, machine, release_memory, rollout_weights)
from reward import VARIANTS, compute_reward
from rollout import encode_prompt, generate_rollouts, trajectory_ids
from tasks import SuiteError, load_suite
from teacher import apply_teacher_tools, read_cache, reference_messages


@dataclass
class Config:
    student: str = DEFAULT_STUDENT
    method: str = "grpo"            # grpo | sft
    reward: str = "mentor"          # mentor | sparse | partial | no_tool_match | f1
    suite: str = "math"
    teacher: str = "reference"      # trajectory JSONL from teacher.py, or 'reference' (offline solver)
    init: str = None                # start from this run folder (e.g. a shared SFT warm start)
    steps: int = 10                 # GRPO (or SFT) steps after the warm start
    warmup_sft_steps: int = 18      # SFT steps on teacher trajectories before RL (cold start)
    batch_size: int = 8             # questions per step (SFT: trajectories per step)
    sft_batch_size: int = 8
    group_size: int = 4             # G rollouts per question
    max_sample_batches: int = 1     # >1: DAPO's dynamic sampling (grpo_step): draw up to this many
                                    # batches a step until batch_size groups have signal
    lr: float = 1e-5
    sft_lr: float = 1e-4
    clip_eps: float = 0.2
    kl_coef: float = 0.001
    ppo_epochs: int = 1             # 1: ratio == 1, on-policy GRPO
    max_turns: int = 5
    max_new_tokens: int = 64        # per assistant turn
    max_total_tokens: int = 192     # generated tokens per rollout, all turns
    temperature: float = 0.6        # of the rollouts; at 1.0 RL lowered greedy accuracy (rl-log)
    micro_batch: int = 4            # rows per forward/backward (memory) ...
    micro_batch_tokens: int = 0     # ... and padded tokens (rows x longest row); 0: rows alone
    grad_checkpointing: bool = False  # keep layer inputs only, recompute in backward (memory)
    eval_n: int = 100               # held-out problems for the evaluations (0: skip)
    save_every: int = 2
    seed: int = 0
    precision: str = "auto"         # matmuls in bf16 where fast (model.compute_dtype) | fp32 | bf16
    out: str = "runs/default"
    device: str = None
    resume: bool = False
    preset: str = None              # cpu | gpu (PRESETS); None: from the device
    fsdp: bool = False              # shard decoder layers over the ranks (distributed.py)


# --preset: cpu is the defaults above (the embedded student, 2 cores) with dynamic sampling,
# the setting under which GRPO raised held-out accuracy on 2 CPU cores (`make train-long`,
# results/rl-log.md section 6; `make train` is the quick demo without it); gpu suits one GPU
# and the Qwen students, which call tools already, so (as in the paper) no warm start.
# Default: gpu where CUDA is, else cpu; flags given on the command line win over either.
# The gpu preset's micro-batch fits a 24 GB GPU for students up to 1.5B by the measured
# memory model (experiments/memory.py, README "One GPU"); save_every: a 0.5B checkpoint is ~6 GB.
PRESETS = {"cpu": dict(max_sample_batches=4),
           "gpu": dict(warmup_sft_steps=0, steps=200, batch_size=16, group_size=8, lr=1e-6,
                       max_new_tokens=512, max_total_tokens=1536, micro_batch=16,
                       micro_batch_tokens=8192, grad_checkpointing=True, eval_n=200,
                       save_every=25)}


# ----------------------------------------------------------------------------
# The objective: small pure functions. N rollouts, T tokens after the prompt.

def masked_mean(x, mask):
    """Mean of x over positions where mask == 1 (0 if there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def has_signal(rewards):
    """(B, G) rewards -> (B,) bool: the group's rewards are not all equal, so it has a gradient."""
    return rewards.amax(1) > rewards.amin(1)


def group_advantages(rewards, eps=1e-6):
    """(B, G) rewards -> (B, G) advantages (r - mean) / (std + eps) within each group.

    std is the population std (unbiased=False). A group whose rewards are all equal
    (or a group of one) gets advantage exactly 0, so no policy gradient: set
    explicitly, because in float32 the mean of 8 rewards of 0.16 is not exactly 0.16,
    and (r - mean) / eps would turn that rounding into advantages of about 0.01-0.06.
    """
    mean = rewards.mean(1, keepdim=True)                  # (B, 1)
    std = rewards.std(1, unbiased=False, keepdim=True)    # (B, 1)
    flat = ~has_signal(rewards)[:, None]                  # (B, 1)
    return ((rewards - mean) / (std + eps)).masked_fill(flat, 0.0)


def kl_k3(logp, ref_logp):
    """(N, T) per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2, kl_coef=0.001):
    """Clipped GRPO surrogate + k3 KL, averaged over all generated tokens of the batch.

    Args:
        logp:       (N, T) log pi_theta(token), with grad
        old_logp:   (N, T) log pi at rollout time (no grad)
        ref_logp:   (N, T) log pi_ref, or None when kl_coef == 0
        advantages: (N,)   one advantage per rollout, broadcast over its tokens
        mask:       (N, T) 1 on tokens the model generated, 0 on prompt, tool responses, padding
    Returns:
        loss (scalar, token mean), metrics dict
    """
    ratio = torch.exp(logp - old_logp)                                     # (N, T)
    A = advantages[:, None]                                                # (N, 1)
    surrogate = torch.min(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    per_token = -surrogate                                                 # (N, T)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = per_token + kl_coef * kl
    clipped = ((ratio - 1).abs() > clip_eps).float()
    return masked_mean(per_token, mask), {"kl": masked_mean(kl, mask).item(),
                                          "clip_frac": masked_mean(clipped, mask).item()}


def sft_loss(logp, mask):
    """Next-token NLL on the teacher's generated tokens only (token mean)."""
    return masked_mean(-logp, mask)


# ----------------------------------------------------------------------------
# Steps

def sft_step(model, opt, tok, trajs, cfg):
    """One optimizer step of SFT on teacher trajectories [(prompt_ids, ids, mask)] -> metrics.
    Under torchrun each rank takes its share of them (distributed.py)."""
    model.train()
    opt.zero_grad()
    batch = make_batch(my_share(trajs), cfg.micro_batch, tok.pad_token_id, model.device,
                       cfg.micro_batch_tokens)
    batch.n_tokens = all_sum(batch.n_tokens)       # the token mean is over every rank's tokens
    loss, _ = backward(model, batch, lambda k, mb, logp: (sft_loss(logp, mb.mask), {}),
                       compute_dtype(model.device, cfg.precision))
    sync_gradients(model)
    clip_grad_norm(model, 1.0)
    opt.step()
    return {"sft_loss": all_sum(loss), "tokens": batch.n_tokens}


def grpo_step(model, ref_model, opt, tok, suite, problems, cfg, draw=None):
    """Rollouts, rewards, advantages and ppo_epochs optimizer steps -> metrics.
    Under torchrun each rank takes whole groups: its share of `problems` (distributed.py).

    Dynamic sampling (DAPO), cfg.max_sample_batches > 1: a group whose rewards are all equal
    teaches nothing, and a step whose batch has one or two groups with signal still takes a
    full-size AdamW step, on one or two questions. So while fewer than batch_size groups have
    signal, draw() another batch of questions and roll it out, up to max_sample_batches
    batches; the step then trains on the first batch_size groups with signal. The metrics
    (reward, accuracy, ...) are over every rollout sampled.
    """
    if cfg.max_sample_batches > 1 and draw is None:
        raise ValueError("max_sample_batches > 1 needs draw(), the source of further batches")
    t0 = time.time()
    model.eval()
    policy = rollout_weights(unsharded(model), compute_dtype(model.device, cfg.precision))
    G, share = cfg.group_size, cfg.batch_size // world()
    # every rollout drawn, its (reward, parts), the (B, G) rewards of each batch; batches drawn
    sampled, scores, sampled_rewards, batches = [], [], [], 0
    train_rollouts, train_rewards = [], []       # what the loss sees: groups (G rollouts, (G,))
    while True:
        batch = my_share(problems if batches == 0 else draw())
        batches += 1
        rollouts = generate_rollouts(policy, tok, batch, suite.tools, suite.schemas,
                                     group_size=G, max_turns=cfg.max_turns,
                                     max_new_tokens=cfg.max_new_tokens,
                                     max_total_tokens=cfg.max_total_tokens,
                                     temperature=cfg.temperature)
        scored = [compute_reward(cfg.reward, r, suite) for r in rollouts]
        rewards = torch.tensor([s for s, _ in scored]).view(len(batch), G)         # (B, G)
        sampled += rollouts
        scores += scored
        sampled_rewards.append(rewards)
        if cfg.max_sample_batches == 1:          # plain GRPO: flat groups get advantage 0
            train_rollouts, train_rewards = rollouts, list(rewards)
            break
        for i in has_signal(rewards).nonzero().flatten().tolist()[:share - len(train_rewards)]:
            train_rollouts += rollouts[i * G:(i + 1) * G]
            train_rewards.append(rewards[i])
        # every rank loops alike: stop when all have their share, or at the cap
        if all_sum(len(train_rewards)) == cfg.batch_size or batches == cfg.max_sample_batches:
            break
    t_rollout = time.time() - t0
    adv = group_advantages(torch.stack(train_rewards) if train_rewards else torch.zeros(0, G))
    metrics = mean_metrics({**step_reward_metrics(sampled_rewards, scores),
                            **rollout_metrics(sampled, suite),
                            "rollout_time": t_rollout, "sample_batches": batches})
    metrics["rollout_tok_s"] = metrics["response_tokens"] * len(sampled) / t_rollout
    seqs = [(r.prompt_ids, r.ids, r.mask) for r in train_rollouts]
    del policy                                   # the bf16 copy: its memory is the update's
    return {**metrics, **policy_update(model, ref_model, opt, tok.pad_token_id, seqs,
                                       adv.flatten().to(model.device), cfg)}


def policy_update(model, ref_model, opt, pad_id, seqs, adv, cfg):
    """ppo_epochs optimizer steps on rollouts [(prompt_ids, ids, mask)] with advantages (N,).

    Rows of a group whose rewards are all equal have advantage exactly 0: their policy
    gradient is 0, so they are left out of the loss (their only term would be the KL
    penalty), as DAPO's dynamic sampling drops them. The loss is the token mean over the
    rows that remain, on every rank; with none left anywhere, there is no optimizer step.
    Under --fsdp every rank must run as many forward and backward passes (each is a
    collective), so there all rows stay.
    """
    keep = range(len(seqs)) if is_sharded(model) else (adv != 0).nonzero().flatten().tolist()
    seqs, adv = [seqs[i] for i in keep], adv[keep]
    out = {"trained_rows": all_sum(len(seqs)), "loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    n_tokens = all_sum(sum(sum(m) for _, _, m in seqs))
    if n_tokens == 0:
        return out
    dtype = compute_dtype(model.device, cfg.precision)
    batch = make_batch(seqs, cfg.micro_batch, pad_id, model.device, cfg.micro_batch_tokens) \
        if seqs else None
    if batch:
        batch.n_tokens = n_tokens                  # each rank's share of the global token mean
        ref = logprobs(ref_model, batch, dtype) if ref_model else None           # no grad
        old = logprobs(model, batch, dtype) if cfg.ppo_epochs > 1 else None

    def loss_fn(k, mb, logp):
        old_logp = old[k] if old else logp.detach()        # one epoch: ratio == 1
        return grpo_loss(logp, old_logp, ref[k] if ref else None, adv[mb.rows], mb.mask,
                         cfg.clip_eps, cfg.kl_coef)

    model.train()
    for _ in range(cfg.ppo_epochs):
        opt.zero_grad()
        loss, m = backward(model, batch, loss_fn, dtype) if batch else (0.0, {})
        sync_gradients(model)                      # sum over ranks (a world of one: nothing)
        clip_grad_norm(model, 1.0)
        opt.step()
    out.update(loss=all_sum(loss), kl=all_sum(m.get("kl", 0.0)),
               clip_frac=all_sum(m.get("clip_frac", 0.0)))
    return out


def reward_metrics(rewards, scored):
    """A step's rewards (B, G): mean, std, each part's mean, groups with signal."""
    parts = {}
    for _, p in scored:
        for k, v in p.items():
            parts[k] = parts.get(k, 0.0) + v / len(scored)
    return {"reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
            **{f"reward/{k}": v for k, v in parts.items()},
            "groups_with_signal": has_signal(rewards).float().mean().item()}


def step_reward_metrics(sampled_rewards, scores):
    """reward_metrics of a step's rollouts on every rank together (one process: its own).
    sampled_rewards: this rank's list of (B, G) tensors; scores: its (reward, parts) pairs."""
    everyone = gather((torch.cat(sampled_rewards), scores))
    return reward_metrics(torch.cat([r for r, _ in everyone]),              # (B' * world, G)
                          [s for _, sc in everyone for s in sc])


@torch.no_grad()
def accuracy(model, tok, suite, problems, cfg, batch=25):
    """Greedy accuracy, tool-call and boxed rates on `problems`, and each problem's 0/1."""
    model.eval()
    policy = rollout_weights(model, compute_dtype(model.device, cfg.precision))
    rs = []
    for i in range(0, len(problems), batch):
        rs += generate_rollouts(policy, tok, problems[i:i + batch], suite.tools, suite.schemas,
                                max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                                max_total_tokens=cfg.max_total_tokens, temperature=0)
    return {**rollout_metrics(rs, suite), "correct": [int(suite.is_correct(r)) for r in rs]}


# ----------------------------------------------------------------------------
# Data, checkpoints, logging

def teacher_trajectories(cfg, suite, tok):
    """[(prompt_ids, ids, mask)] of the teacher's correct trajectories on the training split."""
    train = suite.split("train")
    if cfg.teacher == "reference":
        if not all("solution" in p for p in train):
            sys.exit(f"suite {cfg.suite} has no reference solutions: run teacher.py and pass "
                     f"--teacher TRAJ.jsonl")
        pairs = [(p, reference_messages(p, suite.tools)) for p in train]
    else:
        shown = {p["question"]: p for p in train}
        pairs = [(shown.get(r["question"], {"question": r["question"]}), r["messages"])
                 for r in read_cache(cfg.teacher) if r["solved"]]
    if not pairs:
        sys.exit(f"no solved teacher trajectories in {cfg.teacher}")
    # the prompt shows the tools the problem shows (its own `schemas`, else the suite's), as
    # the rollouts do
    return [(encode_prompt(tok, p["question"], p.get("schemas", suite.schemas)),
             *trajectory_ids(tok, m)) for p, m in pairs]


def save_checkpoint(path, model, opt, step, cfg, phase):
    """Atomic: write a temp file in the same folder, then rename over the old checkpoint.
    Under torchrun rank 0 writes it, with every rank's RNG state ("rng_ranks"), and under
    --fsdp with the shards gathered: whole weights and optimizer state, which any number of
    processes can load."""
    rngs = gather({"python": random.getstate(), "numpy": np.random.get_state(),
                   "torch": torch.get_rng_state(),
                   **({"cuda": torch.cuda.get_rng_state(model.device)}
                      if model.device.type == "cuda" else {})})
    weights, opt_state = full_state(model.state_dict()), full_state(opt.state_dict())
    if is_main():
        state = {"model": weights, "optimizer": opt_state, "step": step,
                 "phase": phase, "config": asdict(cfg), "rng": rngs[0], "rng_ranks": rngs}
        tmp = path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
    barrier()


def write_json(path, obj):
    """json.dump, atomically: a process killed while writing leaves the old file, never half
    of the new one."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def drop_metrics_after(path, phase, step):
    """Keep the metric lines up to the checkpoint (phase, step): a run killed after logging a
    step but before saving it redoes that step, and logs it once. Rewritten atomically."""
    if not os.path.exists(path):
        return
    order = {"sft": 0, "grpo": 1}
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        row = json.loads(line) if line.endswith("\n") else None   # a torn last line is dropped
        if row and (order[row["phase"]], row["step"]) <= (order[phase], step):
            keep.append(line)
    if len(keep) < len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


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


def write_line(log, m):
    """One JSON line of metrics (rank 0 only holds the log)."""
    if log:
        log.write(json.dumps(m) + "\n")
        log.flush()


CHOICES = {"method": ["grpo", "sft"], "precision": PRECISIONS, "reward": VARIANTS,
           "preset": list(PRESETS)}


def suite_name(value):
    """--suite, checked at parse time: a built-in name or a .py file that loads."""
    try:
        load_suite(value)
    except SuiteError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Config()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            ap.add_argument(flag, action="store_true", default=None)
        else:
            kind = suite_name if name == "suite" else type(value) if value is not None else str
            ap.add_argument(flag, type=kind, default=None, choices=CHOICES.get(name))
    args = ap.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}   # 0 is a value
    preset = given.pop("preset", None) or ("gpu" if torch.cuda.is_available() else "cpu")
    return Config(**{**asdict(defaults), **PRESETS[preset], **given, "preset": preset})


def run_sft(model, opt, tok, suite, cfg, log, ckpt_path, step, steps):
    """SFT steps step..steps on the teacher's trajectories (warm start or the SFT baseline)."""
    trajs = teacher_trajectories(cfg, suite, tok)
    bar = tqdm(range(step, steps), desc="sft warm start" if cfg.method == "grpo" else "sft",
               disable=not is_main())
    for step in bar:
        t0 = time.time()
        batch = random.sample(trajs, min(cfg.sft_batch_size, len(trajs)))
        m = {"phase": "sft", "step": step + 1, **sft_step(model, opt, tok, batch, cfg),
             "step_time": time.time() - t0}
        write_line(log, m)
        bar.set_postfix(loss=f"{m['sft_loss']:.3f}", s=f"{m['step_time']:.1f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, model, opt, step + 1, cfg, "sft")


def run_grpo(model, opt, tok, suite, cfg, log, ckpt_path, step):
    """GRPO steps step..cfg.steps against a frozen reference: the policy RL starts from."""
    ref_model = None
    if cfg.kl_coef > 0:
        # kept on disk so that a resumed run compares against the same weights
        ref_path = os.path.join(cfg.out, "reference.pt")
        if step == 0 or not os.path.exists(ref_path):
            weights = full_state(model.state_dict())
            if is_main():
                torch.save(weights, ref_path + ".tmp")
                os.replace(ref_path + ".tmp", ref_path)
        barrier()                                   # written before any rank reads it
        # a plain copy (under --fsdp too: whole on every rank, no gradients, no collectives)
        ref_model = copy.deepcopy(unsharded(model)).requires_grad_(False).eval()
        ref_model.load_state_dict(torch.load(ref_path, map_location=model.device))
    train_set = suite.split("train")
    bar = tqdm(range(step, cfg.steps), desc=f"grpo/{cfg.reward}", disable=not is_main())

    def draw():                                 # the same questions on every rank
        return random.sample(train_set, cfg.batch_size)
    for step in bar:
        t0 = time.time()
        m = grpo_step(model, ref_model, opt, tok, suite, draw(), cfg, draw)
        m = {"phase": "grpo", "step": step + 1, **m, "step_time": time.time() - t0}
        write_line(log, m)
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy']:.2f}",
                        tools=f"{m['tool_call_rate']:.2f}", s=f"{m['step_time']:.0f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(ckpt_path, model, opt, step + 1, cfg, "grpo")


def held_out(evals, name, model, tok, suite, test_set, cfg, path):
    """Greedy evaluation `name` ("start", "rl_start", "end"), done once: kept in OUT/evals.json
    (written atomically) so that a resumed run reports the evaluations of its earlier part."""
    if name not in evals:
        policy = unsharded(model)                         # every rank: a collective under --fsdp
        if is_main():                                     # the other ranks wait
            release_memory()                              # the training steps' dead heap
            evals[name] = accuracy(policy, tok, suite, test_set, cfg)
            write_json(path, evals)
    barrier()
    return evals.get(name)


def gain(before, after):
    """'0.170 -> 0.260 (+0.090, 95% CI [+0.020, +0.160], paired bootstrap, n=100)'."""
    d, lo, hi = paired_bootstrap_ci(after["correct"], before["correct"])
    return (f"{before['accuracy']:.3f} -> {after['accuracy']:.3f} ({d:+.3f}, 95% CI "
            f"[{lo:+.3f}, {hi:+.3f}], paired bootstrap, n={len(after['correct'])})")


def train(cfg):
    device = setup_distributed(cfg.fsdp) or cfg.device   # torchrun: a process group, a device each
    if cfg.batch_size % world() or cfg.sft_batch_size % world():
        sys.exit(f"--batch-size {cfg.batch_size} and --sft-batch-size {cfg.sft_batch_size} must "
                 f"be multiples of the {world()} processes (each takes whole groups)")
    if cfg.max_sample_batches < 1:
        sys.exit(f"--max-sample-batches {cfg.max_sample_batches}: at least 1 batch a step")
    if cfg.fsdp and cfg.max_sample_batches > 1:
        sys.exit("--max-sample-batches > 1 does not go with --fsdp: ranks could keep different "
                 "numbers of groups, and every sharded forward is a collective")
    # the same questions on every rank (Python/NumPy), its own rollouts on each (torch)
    random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed + rank())
    os.makedirs(cfg.out, exist_ok=True)
    ckpt_path = os.path.join(cfg.out, CHECKPOINT_FILE)
    tok, model = load_model(cfg.init or cfg.student, device=device)      # fp32 master weights
    if cfg.grad_checkpointing:
        set_grad_checkpointing(model)
    suite = load_suite(cfg.suite)
    if cfg.teacher != "reference":
        suite.problems = apply_teacher_tools(suite.problems, cfg.teacher)
    test_set = suite.split("test")[:cfg.eval_n]
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

    sft_steps = cfg.steps if cfg.method == "sft" else cfg.warmup_sft_steps
    rl_steps = cfg.steps if cfg.method == "grpo" else 0
    step, phase = 0, "sft" if sft_steps else "grpo"
    resumed = cfg.resume and os.path.exists(ckpt_path)
    if resumed:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])             # whole weights, before any sharding
    if cfg.fsdp:
        shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr if sft_steps else cfg.lr,
                            weight_decay=0.0)
    if resumed:
        step, phase = state["step"], state["phase"]
        if cfg.fsdp:                                      # each rank keeps its shard of it
            shard_optimizer_state(opt, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])       # its lr included
        restore_rng(state, cfg.seed)
        if is_main():
            drop_metrics_after(os.path.join(cfg.out, "metrics.jsonl"), phase, step)
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
    evaluate_once = functools.partial(held_out, evals, model=model, tok=tok, suite=suite,
                                      test_set=test_set, cfg=cfg, path=evals_path)

    if test_set and phase == "sft" and step == 0:
        show("start", evaluate_once("start"))
    if phase == "sft" and sft_steps:
        run_sft(model, opt, tok, suite, cfg, log, ckpt_path, step, sft_steps)
        step, phase = 0, "grpo"
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        if rl_steps:
            save_checkpoint(ckpt_path, model, opt, 0, cfg, "grpo")
    if phase == "grpo" and rl_steps:
        if test_set and (step == 0 or "rl_start" in evals):   # the policy RL starts from
            show("RL start", evaluate_once("rl_start"))
        run_grpo(model, opt, tok, suite, cfg, log, ckpt_path, step)

    result = {"eval_problems": len(test_set)}
    if test_set:
        evaluate_once("end")
        result.update(evals)
    if not is_main():
        teardown()
        return result
    if test_set:
        where = f"held-out accuracy, {len(test_set)} {cfg.suite} test problems, greedy"
        if "start" in evals and sft_steps and ("rl_start" in evals or not rl_steps):
            what = "warm start" if cfg.method == "grpo" else "SFT"
            print(f"{what} ({sft_steps} SFT steps), {where}: "
                  f"{gain(evals['start'], evals['rl_start' if rl_steps else 'end'])}")
        if rl_steps and "rl_start" in evals:
            print(f"RL phase ({rl_steps} GRPO steps, {cfg.reward} reward), {where}: "
                  f"{gain(evals['rl_start'], evals['end'])}")
    write_json(os.path.join(cfg.out, "result.json"), result)   # replicate.py: the run is done
    plot_training(os.path.join(cfg.out, "metrics.jsonl"), os.path.join(cfg.out, "curves.png"))
    teardown()
    return result


def show(name, m):
    if m is not None:                               # None: not rank 0
        print(f"{name}: {brief(m)}")


def brief(m):
    return " | ".join(f"{k} {m[k]:.3f}" for k in ("accuracy", "tool_call_rate", "boxed_rate",
                                                 "truncated_rate"))


if __name__ == "__main__":
    try:
        train(parse_args())
    except ModelNotAvailable as e:
        sys.exit(str(e))
