"""GRPO with MENTOR's teacher-guided reward, plus sparse-RL and SFT baselines, by hand.

    python train.py                                   # embedded SmolLM2-135M, CPU (make train)
    python train.py --student Qwen2.5-0.5B            # a hub student (--preset gpu on a GPU)
    python train.py --reward sparse                   # the sparse-reward RL baseline
    python train.py --method sft --steps 100          # SFT on teacher trajectories
    python train.py --help                            # every knob (Config, below)

One GRPO step (docs/paper.md, "The method"):
  1. sample batch_size questions, group_size rollouts each at `temperature` (rollout.py);
     --max-sample-batches N: more batches while too few groups have signal (DAPO);
  2. score every rollout with the reward (reward.py) -> r of shape (B, G);
  3. A = (r - mean_group) / (std_group + eps), the same for every token of a rollout;
  4. loss = aggregate over generated tokens (token mean) of
         -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + kl_coef * k3(ref, pi),
     every log-prob at the sampling temperature; tool-response tokens are masked out.
The 135M student calls no tool, so every reward would be equal: it gets an SFT warm start on the
teacher's trajectories first (the KL reference is the policy after it); Qwen students do not.
"""
import random
import time
from dataclasses import dataclass, replace
from functools import partial

import torch
from tqdm import tqdm

import runs
from distributed import (all_sum, clip_grad_norm, even_passes, is_main, mean_metrics, my_share,
                         sync_gradients, unsharded, world)
from engine import backward, logprobs, make_batch
from evaluate import rollout_metrics
from model import DEFAULT_STUDENT, calls_tools, compute_dtype, rollout_weights
from reward import compute_reward
from rollout import generate_rollouts
from teacher import trajectories


@dataclass
class Config:
    """A run's knobs: each is a flag (--group-size) whose --help is the comment beside it. The
    defaults are the cpu preset (make train's). [TRL: x]: TRL GRPOConfig's name for the knob."""
    student: str = DEFAULT_STUDENT  # short name (model.SHORT_NAMES), HF id, folder or run folder
    method: str = "grpo"            # grpo | sft (the SFT baseline: --steps SFT steps)
    reward: str = "mentor"          # mentor | sparse | partial | no_tool_match | f1 (reward.py)
    suite: str = "math"             # a built-in suite, a suite .py file or a problems .jsonl
    teacher: str = "reference"      # teacher.py's trajectory JSONL, or the offline solver
    init: str = None                # start from this run folder's weights (a shared warm start)
    steps: int = 15                 # GRPO steps after the warm start [TRL: max_steps]
    warmup_sft_steps: int = None    # SFT steps before RL: 18 for a student that calls no tool
                                    # (SmolLM2), 0 for one that does (Qwen: RL from the start)
    batch_size: int = 8             # questions a GRPO step (TRL's counts completions: x G)
    sft_batch_size: int = 8         # teacher trajectories per SFT step
    group_size: int = 4             # G rollouts per question [TRL: num_generations]
    max_sample_batches: int = 4     # DAPO's dynamic sampling: up to this many batches a step
                                    # until batch_size groups have signal; 1: plain GRPO
    lr: float = 1e-5                # AdamW's learning rate in GRPO [TRL: learning_rate]
    sft_lr: float = 1e-4            # ... in the SFT steps
    advantage: str = "grpo"         # grpo: (r - mean) / std | dr_grpo: r - mean
                                    # [TRL: scale_rewards "group" | "none"]
    loss_agg: str = "token_mean"    # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
                                    # (aggregate) [TRL: loss_type "dapo" | "grpo" | "dr_grpo"]
    clip_eps: float = 0.2           # PPO clip of the ratio [TRL: epsilon]
    kl_coef: float = 0.001          # k3 KL penalty to the frozen reference [TRL: beta]
    ppo_epochs: int = 1             # updates a batch (1: ratio = 1, no clip) [TRL: num_iterations]
    tis_cap: float = 0.0            # >0: truncated importance sampling, weights capped here
                                    # (tis_weights); 0: off [TRL: vllm_importance_sampling_cap]
    max_turns: int = 5              # assistant turns a rollout [TRL: max_tool_calling_iterations]
    max_new_tokens: int = 64        # tokens an assistant turn
    max_total_tokens: int = 192     # generated tokens a rollout [TRL: max_completion_length]
    temperature: float = 0.6        # sampling's, and every loss log-prob's [TRL: temperature]
    micro_batch: int = 4            # rows per forward/backward (memory) ...
    micro_batch_tokens: int = 0     # ... and padded tokens (rows x longest row); 0: rows alone
    grad_checkpointing: bool = False  # recompute each layer in backward (memory)
    eval_n: int = 200               # held-out problems of each evaluation (0: none)
    eval_every: int = 5             # GRPO steps between evaluations (0: where RL starts and ends)
    rollout_budget: int = 0         # >0: GRPO stops at this many rollouts drawn
    eval_rollouts: int = 0          # >0: an evaluation each time this many more are drawn
    save_every: int = 5             # steps between checkpoints
    seed: int = 0                   # questions, sampling, initialisation
    precision: str = "fp32"         # matmuls: fp32 | bf16 | auto (bf16 where native: model.py)
    sft_precision: str = None       # the SFT steps' matmuls; default: as --precision
    update_precision: str = None    # the GRPO update's matmuls; default: as --precision
    out: str = "runs/default"       # the run folder (runs.py)
    device: str = None              # cpu | cuda | cuda:1 ...; default: cuda where there is one
    resume: bool = False            # continue from OUT/checkpoint.pt
    preset: str = None              # cpu (these defaults) | gpu (GPU_PRESET); unset: gpu if CUDA
    fsdp: bool = False              # shard decoder layers over the torchrun ranks

    def __post_init__(self):
        if self.warmup_sft_steps is None:           # the warm start follows the student
            self.warmup_sft_steps = 0 if calls_tools(self.student) else 18


# --preset gpu changes these. The defaults suit 2 CPU cores: dynamic sampling, 15 steps (at 10, 2
# seeds of 10 were flat), 200 held-out problems, fp32 (an lr-1e-5 step is below bf16's spacing).
GPU_PRESET = dict(steps=200, batch_size=16, group_size=8, max_sample_batches=1, lr=1e-6,
                  max_new_tokens=512, max_total_tokens=1536, micro_batch=16, eval_every=0,
                  micro_batch_tokens=8192, grad_checkpointing=True, save_every=25, precision="auto")


# ----------------------------------------------------------------------------
# The objective: small pure functions. N rollouts, T tokens after the prompt.

def has_signal(rewards):
    """(B, G) rewards -> (B,) bool: the group's rewards are not all equal, so it has a gradient."""
    return rewards.amax(1) > rewards.amin(1)


def group_advantages(rewards, kind="grpo", eps=1e-6):
    """(B, G) rewards -> (B, G) advantages: (r - mean) / (std + eps) within each group (GRPO),
    or r - mean (kind "dr_grpo": Dr. GRPO, no division, so a small reward gap stays small).
    std: the population std (TRL's is the sample std, x sqrt((G-1)/G)). A flat group gets
    exactly 0: float32's mean of 8 rewards of 0.16 is not 0.16, and / eps would blow it up."""
    if not len(rewards):                        # no group kept (0, G): std() of nothing warns
        return rewards.clone()
    centred = rewards - rewards.mean(1, keepdim=True)                     # (B, G)
    std = rewards.std(1, unbiased=False, keepdim=True)                     # (B, 1)
    adv = centred / (std + eps) if kind == "grpo" else centred
    return adv.masked_fill(~has_signal(rewards)[:, None], 0.0)


def kl_k3(logp, ref_logp):
    """(N, T) per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def tis_weights(old_logp, sampler_logp, cap):
    """(N, T) min(pi_old / pi_sampler, cap), no grad: truncated importance sampling (verl, TRL):
    the tokens came from the sampler (a bf16 copy where matmuls run in bf16), not from pi_old."""
    return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()


def grpo_loss(logp, old_logp, ref_logp, advantages, clip_eps=0.2, kl_coef=0.001,
              is_weights=None):
    """Clipped GRPO surrogate + k3 KL per token -> ((N, T) loss, {"kl", "clip_frac"}: (N, T)).
    Every log-prob is of softmax(logits / temperature), the distribution sampled from. Args:
    logp (N, T) log pi_theta(token), with grad; old_logp (N, T) at rollout time, no grad;
    ref_logp (N, T) the reference's, or None when kl_coef == 0; advantages (N,), one a rollout,
    broadcast over its tokens; is_weights (N, T) of the surrogate (tis_weights), or None."""
    ratio = torch.exp(logp - old_logp)                                     # (N, T)
    A = advantages[:, None]                                                # (N, 1)
    surrogate = torch.min(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    if is_weights is not None:
        surrogate = surrogate * is_weights
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    clipped = ((ratio - 1).abs() > clip_eps).float()
    return -surrogate + kl_coef * kl, {"kl": kl.detach(), "clip_frac": clipped}


LOSS_AGG = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate(x, mask, mode="token_mean", n_tokens=None, n_seqs=None, horizon=None):
    """(N, T) per-token values and loss mask -> a scalar, the one place a loss is aggregated:
        token_mean               sum x*m / n_tokens                    (DAPO's; TRL "dapo")
        seq_mean_token_mean      sum_i (sum_t x*m / sum_t m) / n_seqs  (GRPO's; TRL "grpo")
        seq_mean_token_sum_norm  sum x*m / (n_seqs * horizon)          (Dr. GRPO's; TRL "dr_grpo")
    n_tokens, n_seqs: the whole batch's, over micro-batches and ranks (default: these rows'), so
    that the parts add up to the whole; horizon: a constant, max_total_tokens."""
    n_tokens = mask.sum() if n_tokens is None else n_tokens
    n_seqs = len(mask) if n_seqs is None else n_seqs
    if mode == "token_mean":
        return (x * mask).sum() / max(n_tokens, 1)
    if mode == "seq_mean_token_mean":
        return ((x * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / max(n_seqs, 1)
    return (x * mask).sum() / (max(n_seqs, 1) * horizon)


# ----------------------------------------------------------------------------
# Steps

def sft_step(model, opt, tok, trajs, cfg):
    """One SFT step on teacher trajectories [(prompt_ids, ids, mask)], a share a rank -> metrics:
    the token mean of the NLL (temperature 1) over every rank's generated tokens."""
    model.train()
    opt.zero_grad()
    batch = even_passes(make_batch(my_share(trajs), cfg.micro_batch, tok.pad_token_id,
                                   model.device, cfg.micro_batch_tokens), model)
    n_tokens = all_sum(batch.n_tokens)

    def loss_fn(k, mb, logp):
        loss = aggregate(-logp, mb.mask, "token_mean", n_tokens)
        return loss, {"loss": loss.item()}
    m = backward(model, batch, loss_fn, compute_dtype(model.device, cfg.sft_precision or
                                                      cfg.precision))
    sync_gradients(model)                          # sum over ranks (a world of one: nothing)
    norm = clip_grad_norm(model, 1.0)
    opt.step()
    return {"sft_loss": all_sum(m["loss"]), "tokens": n_tokens, "grad_norm": float(norm)}


def sample_groups(policy, tok, suite, problems, cfg, draw):
    """Roll out and score group_size samples of each question -> (the rollouts to train on,
    their (B, G) rewards, every rollout sampled, its (reward, parts), each batch's rewards).
    Dynamic sampling (DAPO), max_sample_batches > 1: a flat group teaches nothing, yet AdamW's
    step is full-size; so draw() batches (up to the cap) until batch_size groups have signal."""
    G, share = cfg.group_size, cfg.batch_size // world()
    sampled, scores, batches, keep, keep_rewards = [], [], [], [], []
    while True:
        questions = my_share(draw() if batches else problems)
        rollouts = generate_rollouts(policy, tok, questions, suite.tools, suite.schemas,
                                     group_size=G, max_turns=cfg.max_turns,
                                     max_new_tokens=cfg.max_new_tokens,
                                     max_total_tokens=cfg.max_total_tokens,
                                     temperature=cfg.temperature)
        scored = [compute_reward(cfg.reward, r, suite) for r in rollouts]
        rewards = torch.tensor([s for s, _ in scored]).view(len(questions), G)        # (B, G)
        sampled, scores, batches = sampled + rollouts, scores + scored, batches + [rewards]
        if cfg.max_sample_batches == 1:          # plain GRPO: flat groups get advantage 0
            return rollouts, rewards, sampled, scores, batches
        for i in has_signal(rewards).nonzero().flatten().tolist()[:share - len(keep_rewards)]:
            keep += rollouts[i * G:(i + 1) * G]
            keep_rewards.append(rewards[i])
        # every rank loops alike: stop when all have their share, or at the cap
        if all_sum(len(keep_rewards)) == cfg.batch_size or len(batches) == cfg.max_sample_batches:
            kept = torch.stack(keep_rewards) if keep_rewards else torch.zeros(0, G)
            return keep, kept, sampled, scores, batches


def grpo_step(model, ref_model, opt, tok, suite, problems, cfg, draw=None):
    """Rollouts, rewards, advantages and ppo_epochs optimizer steps -> metrics (over every
    rollout sampled). Under torchrun each rank takes whole groups: its share of `problems`."""
    assert draw or cfg.max_sample_batches == 1, "dynamic sampling needs draw(): more batches"
    t0 = time.time()
    model.eval()
    policy = rollout_weights(unsharded(model), compute_dtype(model.device, cfg.precision))
    rollouts, rewards, sampled, scores, batches = sample_groups(policy, tok, suite, problems,
                                                                cfg, draw)
    del policy                                   # the bf16 copy: its memory is the update's
    t_rollout = time.time() - t0
    adv = group_advantages(rewards, cfg.advantage)                                 # (B, G)
    metrics = mean_metrics({**runs.step_reward_metrics(batches, scores),
                            **rollout_metrics(sampled, suite),
                            "rollout_time": t_rollout, "sample_batches": len(batches)})
    metrics["rollout_tok_s"] = metrics["response_tokens"] * len(sampled) / t_rollout
    seqs = [(r.prompt_ids, r.ids, r.mask, r.sampler_logp) for r in rollouts]
    return {**metrics, **policy_update(model, ref_model, opt, tok.pad_token_id, seqs,
                                       adv.flatten().to(model.device), cfg)}


def policy_update(model, ref_model, opt, pad_id, seqs, adv, cfg):
    """ppo_epochs optimizer steps on rollouts [(prompt_ids, ids, mask, sampler_logp)] with
    advantages (N,). Every row given enters the loss, on every rank alike: a flat group's rows
    (A = 0) add their KL term and their tokens to the counts. Log-probs at cfg.temperature, as
    sampled; sampler_kl: k3 of KL(sampler || pi_old), the sampler-trainer mismatch."""
    out = dict(trained_rows=all_sum(len(seqs)), loss=0.0, kl=0.0, clip_frac=0.0, sampler_kl=0.0)
    n_tokens = all_sum(sum(sum(m) for _, _, m, _ in seqs))        # every rank's, for aggregate
    if n_tokens == 0:
        return out
    dtype, T = compute_dtype(model.device, cfg.update_precision or cfg.precision), cfg.temperature
    batch = even_passes(make_batch(seqs, cfg.micro_batch, pad_id, model.device,
                                   cfg.micro_batch_tokens), model) if seqs else None
    if batch:
        ref = logprobs(ref_model, batch, dtype, T) if ref_model else None        # no grad
        old = logprobs(model, batch, dtype, T) if cfg.ppo_epochs > 1 else None

    def loss_fn(k, mb, logp):
        old_logp = old[k] if old else logp.detach()        # one epoch: ratio == 1
        w = tis_weights(old_logp, mb.sampler_logp, cfg.tis_cap) if cfg.tis_cap else None
        per_token, stats = grpo_loss(logp, old_logp, ref[k] if ref else None, adv[mb.rows],
                                     cfg.clip_eps, cfg.kl_coef, w)
        loss = aggregate(per_token, mb.mask, cfg.loss_agg, n_tokens, out["trained_rows"],
                         cfg.max_total_tokens)
        stats["sampler_kl"] = kl_k3(mb.sampler_logp, old_logp)
        m = {k: aggregate(v, mb.mask, "token_mean", n_tokens).item() for k, v in stats.items()}
        return loss, {"loss": loss.item(), **m}              # the metrics: token means

    model.train()
    for _ in range(cfg.ppo_epochs):
        opt.zero_grad()
        m = backward(model, batch, loss_fn, dtype, T) if batch else {}
        sync_gradients(model)
        out["grad_norm"] = float(clip_grad_norm(model, 1.0))
        opt.step()
    out.update({k: all_sum(m.get(k, 0.0)) for k in ("loss", "kl", "clip_frac", "sampler_kl")})
    return out


# ----------------------------------------------------------------------------
# The loops

def run_sft(run, cfg, steps):
    """SFT steps run.step..steps on the teacher's trajectories (warm start or the SFT baseline)."""
    trajs = trajectories(cfg.teacher, run.suite, run.tok)
    bar = tqdm(range(run.step, steps), desc="sft", disable=not is_main())
    for step in bar:
        t0 = time.time()
        batch = random.sample(trajs, min(cfg.sft_batch_size, len(trajs)))
        m = {"phase": "sft", "step": step + 1, **sft_step(run.model, run.opt, run.tok, batch, cfg),
             "step_time": time.time() - t0}
        run.log_step(m)
        bar.set_postfix(loss=f"{m['sft_loss']:.3f}", s=f"{m['step_time']:.1f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
            run.save(step + 1, "sft")


def run_grpo(run, cfg):
    """GRPO steps run.step..cfg.steps (or to rollout_budget rollouts drawn; no step draws past
    it or past an eval_rollouts mark) against a frozen reference: the policy RL starts from."""
    ref_model = runs.frozen_reference(run) if cfg.kl_coef > 0 else None
    draw = partial(random.sample, run.suite.split("train"), cfg.batch_size)   # same on every rank
    bar = tqdm(range(run.step, cfg.steps), desc=f"grpo/{cfg.reward}", disable=not is_main())
    for step in bar:
        if 0 < cfg.rollout_budget <= run.rollouts:
            break
        t0 = time.time()
        step_cfg = replace(cfg, max_sample_batches=runs.batches_allowed(run))
        m = grpo_step(run.model, ref_model, run.opt, run.tok, run.suite, draw(), step_cfg, draw)
        m = {"phase": "grpo", "step": step + 1, **m, "step_time": time.time() - t0}
        run.log_step(m)
        last = step + 1 == cfg.steps or 0 < cfg.rollout_budget <= run.rollouts
        if (step + 1) % cfg.save_every == 0 or last:
            run.save(step + 1, "grpo")
        if not last:                          # the end's evaluation is train()'s
            run.evaluate_along()
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy']:.2f}",
                        tools=f"{m['tool_call_rate']:.2f}", s=f"{m['step_time']:.0f}",
                        left=run.minutes_left())


def train(cfg):
    """The SFT warm start (or the SFT baseline), then GRPO; greedy held-out evaluations at the
    start, where RL starts, and at the end -> {evaluation: metrics}."""
    sft_steps = cfg.steps if cfg.method == "sft" else cfg.warmup_sft_steps
    rl_steps = cfg.steps if cfg.method == "grpo" else 0
    run = runs.start(cfg, "sft" if sft_steps else "grpo", cfg.sft_lr if sft_steps else cfg.lr)
    if run.phase == "sft" and run.step == 0:       # the base student, on a few problems
        run.evaluate("start", "start", runs.START_EVAL_N)
    if run.phase == "sft" and sft_steps:
        run_sft(run, cfg, sft_steps)
        run.phase, run.step = "grpo", 0
        run.opt = torch.optim.AdamW(run.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        if rl_steps:
            run.save(0, "grpo")
    if run.phase == "grpo" and rl_steps:
        if run.step == 0 or "rl_start" in run.evals:      # the policy RL starts from
            run.evaluate("rl_start", "RL start")
        run_grpo(run, cfg)
    return runs.finish(run, sft_steps, rl_steps)


# Every Config field is a flag, its comment the help (runs.parse_args); --config RUN.json replays
parse_args = partial(runs.parse_args, Config, GPU_PRESET, description=__doc__.split("\n")[0],
                     choices={"loss_agg": LOSS_AGG})

if __name__ == "__main__":
    runs.main(train, parse_args)                  # a missing model or suite: one line, exit 1
