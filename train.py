"""GRPO with MENTOR's teacher-guided reward, plus sparse-RL and SFT baselines, by hand.

    python train.py                                   # embedded SmolLM2-135M, CPU
    python train.py --student Qwen2.5-0.5B            # one GPU (the gpu preset)
    python train.py --reward sparse                   # sparse-reward RL baseline
    python train.py --method sft --steps 100          # SFT on teacher trajectories
    python train.py --resume --out runs/mentor        # continue a killed run

One GRPO step (docs/paper.md, "The method"):
  1. sample batch_size training questions, group_size rollouts each (rollout.py)
     (--max-sample-batches N: more batches while too few groups have signal, DAPO);
  2. score every rollout with the reward (reward.py) -> r of shape (B, G);
  3. A = (r - mean_group) / (std_group + eps), the same for every token of a rollout;
     the rows of a flat group (A == 0) are left out of the loss pass, as DAPO drops them;
  4. loss = token mean over generated tokens of
         -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + kl_coef * k3(ref, pi)
     where ratio = pi / pi_rollout and tool-response tokens are masked out.

Cold start: the 135M student calls no tool, so every reward is equal and GRPO has no signal;
the cpu preset warms it up with SFT on the teacher's trajectories (the KL reference is the
policy after it). Qwen students (gpu preset) start RL directly, as the paper does.
"""
import random
import sys
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

import runs
from distributed import (all_sum, clip_grad_norm, is_main, is_sharded, mean_metrics, my_share,
                         sync_gradients, unsharded, world)
from engine import backward, logprobs, make_batch
from evaluate import rollout_metrics
from model import DEFAULT_STUDENT, ModelNotAvailable, compute_dtype, rollout_weights
from reward import compute_reward
from rollout import generate_rollouts
from tasks import SuiteError
from teacher import trajectories


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
    batch_size: int = 8             # questions per GRPO step
    sft_batch_size: int = 8         # teacher trajectories per SFT step
    group_size: int = 4             # G rollouts per question
    max_sample_batches: int = 1     # >1: DAPO's dynamic sampling, up to this many batches a step
    first_sample_batches: int = 1   # ... the first draw generates this many at once
    lr: float = 1e-5
    sft_lr: float = 1e-4
    advantage: str = "grpo"         # grpo: (r - mean) / std | dr_grpo: r - mean (Dr. GRPO)
    clip_eps: float = 0.2
    kl_coef: float = 0.001
    ppo_epochs: int = 1             # 1: ratio == 1, on-policy GRPO
    tis_cap: float = 0.0            # >0: truncated importance sampling (tis_weights); 0: off
    max_turns: int = 5
    max_new_tokens: int = 64        # per assistant turn
    max_total_tokens: int = 192     # generated tokens per rollout, all turns
    temperature: float = 0.6        # of the rollouts; at 1.0 RL lowered greedy accuracy (rl-log)
    micro_batch: int = 4            # rows per forward/backward (memory) ...
    micro_batch_tokens: int = 0     # ... and padded tokens (rows x longest row); 0: rows alone
    grad_checkpointing: bool = False  # keep layer inputs only, recompute in backward (memory)
    eval_n: int = 100               # held-out problems for the evaluations (0: skip)
    eval_every: int = 0             # GRPO steps between more of them (0: where RL starts and ends)
    rollout_budget: int = 0         # >0: GRPO stops at this many rollouts drawn (steps: a cap)
    eval_rollouts: int = 0          # >0: an evaluation each time this many more are drawn
    save_every: int = 2
    seed: int = 0
    precision: str = "auto"         # matmuls in bf16 where fast (model.compute_dtype) | fp32 | bf16
    sft_precision: str = None       # the SFT steps' matmuls; None: as precision
    update_precision: str = None    # the GRPO update's matmuls; None: as precision (the sampler's)
    out: str = "runs/default"
    device: str = None
    resume: bool = False
    preset: str = None              # cpu | gpu (PRESETS); None: from the device
    fsdp: bool = False              # shard decoder layers over the ranks (distributed.py)


# --preset: cpu (make train): dynamic sampling (GRPO learned with it on 2 CPU cores), 15 steps (at
# 10, 2 seeds of 10 were flat), 200 held-out problems (CI ~+-0.08 on +0.2), fp32 (lr < bf16 spacing)
PRESETS = {"cpu": dict(steps=15, max_sample_batches=4, eval_n=200, eval_every=5, save_every=5,
                       precision="fp32"),
           "gpu": dict(warmup_sft_steps=0, steps=200, batch_size=16, group_size=8, lr=1e-6,
                       max_new_tokens=512, max_total_tokens=1536, micro_batch=16,
                       micro_batch_tokens=8192, grad_checkpointing=True, eval_n=200, save_every=25)}


# ----------------------------------------------------------------------------
# The objective: small pure functions. N rollouts, T tokens after the prompt.

def masked_mean(x, mask):
    """Mean of x over positions where mask == 1 (0 if there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def has_signal(rewards):
    """(B, G) rewards -> (B,) bool: the group's rewards are not all equal, so it has a gradient."""
    return rewards.amax(1) > rewards.amin(1)


def group_advantages(rewards, kind="grpo", eps=1e-6):
    """(B, G) rewards -> (B, G) advantages: (r - mean) / (std + eps) within each group (GRPO),
    or r - mean (kind "dr_grpo": Dr. GRPO, no division, so a small reward gap stays small).
    std is the population std. A flat group (or a group of one) gets exactly 0, set explicitly:
    float32's mean of 8 rewards of 0.16 is not 0.16, and (r - mean) / eps would make 0.01-0.06.
    """
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
    """(N, T) min(pi_old / pi_sampler, cap), no grad: truncated importance sampling (as verl,
    TRL, NeMo-RL). The tokens came from the sampler (in bf16: a copy), not from pi_old (the
    trained weights); the cap keeps a token the sampler overrated from dominating the step."""
    return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2, kl_coef=0.001,
              is_weights=None):
    """Clipped GRPO surrogate + k3 KL, averaged over all generated tokens of the batch
    -> (loss: a scalar, the token mean; metrics: dict). Args:
        logp:       (N, T) log pi_theta(token), with grad
        old_logp:   (N, T) log pi at rollout time (no grad)
        ref_logp:   (N, T) log pi_ref, or None when kl_coef == 0
        advantages: (N,)   one advantage per rollout, broadcast over its tokens
        mask:       (N, T) 1 on tokens the model generated, 0 on prompt, tool responses, padding
        is_weights: (N, T) importance weights of the surrogate (tis_weights), or None
    """
    ratio = torch.exp(logp - old_logp)                                     # (N, T)
    A = advantages[:, None]                                                # (N, 1)
    surrogate = torch.min(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    if is_weights is not None:
        surrogate = surrogate * is_weights
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = -surrogate + kl_coef * kl                                  # (N, T)
    clipped = ((ratio - 1).abs() > clip_eps).float()
    return masked_mean(per_token, mask), {"kl": masked_mean(kl, mask).item(),
                                          "clip_frac": masked_mean(clipped, mask).item()}


def sft_loss(logp, mask):
    """Next-token NLL on the teacher's generated tokens only (token mean)."""
    return masked_mean(-logp, mask)


def batch_share(loss, metrics, mask, n_tokens):
    """A micro-batch's part of the batch's token mean: its token mean weighted by its share of
    the batch's n_tokens, so the parts (engine.backward sums them) add up to the token mean.
    With grpo_loss, the one place the loss is aggregated (a mean per sequence: edit these)."""
    w = mask.sum().item() / n_tokens
    return loss * w, {"loss": loss.item() * w, **{k: v * w for k, v in metrics.items()}}


# ----------------------------------------------------------------------------
# Steps

def sft_step(model, opt, tok, trajs, cfg):
    """One SFT step on teacher trajectories [(prompt_ids, ids, mask)], a share a rank -> metrics."""
    model.train()
    opt.zero_grad()
    batch = make_batch(my_share(trajs), cfg.micro_batch, tok.pad_token_id, model.device,
                       cfg.micro_batch_tokens)
    n_tokens = all_sum(batch.n_tokens)             # the token mean is over every rank's tokens
    m = backward(model, batch, lambda k, mb, logp: batch_share(sft_loss(logp, mb.mask), {},
                 mb.mask, n_tokens), compute_dtype(model.device, cfg.sft_precision or cfg.precision))
    sync_gradients(model)
    clip_grad_norm(model, 1.0)
    opt.step()
    return {"sft_loss": all_sum(m["loss"]), "tokens": n_tokens}


def sample_groups(policy, tok, suite, problems, cfg, draw):
    """Roll out and score group_size samples of each question -> (the rollouts to train on,
    their (B, G) rewards, every rollout sampled, its (reward, parts), each batch's rewards).
    Dynamic sampling (DAPO), max_sample_batches > 1: a flat group teaches nothing, yet AdamW's
    step is full-size even when one group has signal; so while fewer than batch_size groups have
    signal, draw() another batch (up to the cap; the first first_sample_batches in one generate
    call: more rows, faster a token) and train on the first batch_size."""
    G, share = cfg.group_size, cfg.batch_size // world()
    sampled, scores, batches, keep, keep_rewards = [], [], [], [], []
    while True:
        n = min(cfg.first_sample_batches, cfg.max_sample_batches) if not batches else 1
        drawn = [problems] + [draw() for _ in range(n - 1)] if not batches else [draw()]
        questions = [q for b in drawn for q in my_share(b)]
        rollouts = generate_rollouts(policy, tok, questions, suite.tools, suite.schemas,
                                     group_size=G, max_turns=cfg.max_turns,
                                     max_new_tokens=cfg.max_new_tokens,
                                     max_total_tokens=cfg.max_total_tokens,
                                     temperature=cfg.temperature)
        scored = [compute_reward(cfg.reward, r, suite) for r in rollouts]
        rewards = torch.tensor([s for s, _ in scored]).view(len(questions), G)     # (n*B, G)
        sampled, scores = sampled + rollouts, scores + scored
        batches += list(rewards.split(len(questions) // n))
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
    if cfg.max_sample_batches > 1 and draw is None:
        raise ValueError("max_sample_batches > 1 needs draw(), the source of more batches")
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
    advantages (N,); sampler_kl: k3 of KL(sampler || pi_old), the sampler-trainer mismatch.
    A flat group's rows (advantage exactly 0: only a KL term) are left out, as DAPO drops them;
    the loss: the token mean over the rest on all ranks (none: no step); --fsdp keeps them all."""
    keep = range(len(seqs)) if is_sharded(model) else (adv != 0).nonzero().flatten().tolist()
    seqs, adv = [seqs[i] for i in keep], adv[keep]
    out = dict(trained_rows=all_sum(len(seqs)), loss=0.0, kl=0.0, clip_frac=0.0, sampler_kl=0.0)
    n_tokens = all_sum(sum(sum(m) for _, _, m, _ in seqs))
    if n_tokens == 0:
        return out
    dtype = compute_dtype(model.device, cfg.update_precision or cfg.precision)
    batch = make_batch(seqs, cfg.micro_batch, pad_id, model.device, cfg.micro_batch_tokens) \
        if seqs else None
    if batch:
        ref = logprobs(ref_model, batch, dtype) if ref_model else None           # no grad
        old = logprobs(model, batch, dtype) if cfg.ppo_epochs > 1 else None

    def loss_fn(k, mb, logp):
        old_logp = old[k] if old else logp.detach()        # one epoch: ratio == 1
        w = tis_weights(old_logp, mb.sampler_logp, cfg.tis_cap) if cfg.tis_cap else None
        loss, m = grpo_loss(logp, old_logp, ref[k] if ref else None, adv[mb.rows], mb.mask,
                            cfg.clip_eps, cfg.kl_coef, w)
        m["sampler_kl"] = masked_mean(kl_k3(mb.sampler_logp, old_logp), mb.mask).item()
        return batch_share(loss, m, mb.mask, n_tokens)

    model.train()
    for _ in range(cfg.ppo_epochs):
        opt.zero_grad()
        m = backward(model, batch, loss_fn, dtype) if batch else {}
        sync_gradients(model)                      # sum over ranks (a world of one: nothing)
        clip_grad_norm(model, 1.0)
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
    train_set = run.suite.split("train")

    def draw():                                 # the same questions on every rank
        return random.sample(train_set, cfg.batch_size)
    bar = tqdm(range(run.step, cfg.steps), desc=f"grpo/{cfg.reward}", disable=not is_main())
    for step in bar:
        if 0 < cfg.rollout_budget <= run.rollouts:
            break
        t0 = time.time()
        step_cfg = replace(cfg, max_sample_batches=runs.batches_allowed(run))
        m = grpo_step(run.model, ref_model, run.opt, run.tok, run.suite, draw(), step_cfg, draw)
        m = {"phase": "grpo", "step": step + 1, **m, "step_time": time.time() - t0}
        run.log_step(m)
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy']:.2f}",
                        tools=f"{m['tool_call_rate']:.2f}", s=f"{m['step_time']:.0f}")
        last = step + 1 == cfg.steps or 0 < cfg.rollout_budget <= run.rollouts
        if (step + 1) % cfg.save_every == 0 or last:
            run.save(step + 1, "grpo")
        if not last:                          # the end's evaluation is train()'s
            run.evaluate_along()


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


def parse_args(argv=None):
    """Every Config field is a flag; --preset (default: gpu where CUDA is, else cpu) sets
    several, and the flags given win (runs.parse_args)."""
    return runs.parse_args(Config, PRESETS, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    try:
        train(parse_args())
    except (ModelNotAvailable, SuiteError) as e:       # one line, no stack trace
        sys.exit(str(e))
