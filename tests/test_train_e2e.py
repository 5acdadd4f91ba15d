"""train.py end to end on the real embedded student, with tiny settings (CPU)."""
import copy
import json
import os

import pytest
import torch

import runs
import train
from runs import save_checkpoint
from train import Config

# Config's defaults (the cpu preset) with tiny sizes, plain GRPO (one batch a step) unless a test
# is about dynamic sampling, and a checkpoint only at a phase's end (each is 1.6 GB: 3 s)
TINY = dict(batch_size=1, group_size=2, sft_batch_size=2, max_new_tokens=16, max_total_tokens=24,
            max_turns=2, eval_n=2, eval_every=0, save_every=100, max_sample_batches=1)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_grpo_with_warm_start_runs_and_logs_everything(tmp_path, capsys):
    out = str(tmp_path / "mentor")
    # fp32, the cpu preset's; the bf16 path is pinned on a tiny model below, whatever the CPU
    result = train.train(Config(**TINY, warmup_sft_steps=2, steps=2, out=out))
    rows = metrics(out)
    assert [r["phase"] for r in rows] == ["sft", "sft", "grpo", "grpo"]
    for key in ("reward_mean", "reward_std", "accuracy", "tool_call_rate", "hallucinated_tool_rate",
                "kl", "clip_frac", "response_tokens", "rollout_tok_s", "step_time"):
        assert key in rows[-1], key
    assert rows[-1]["clip_frac"] == 0.0  # one PPO epoch: ratio is exactly 1
    assert set(result) >= {"start", "rl_start", "end"}
    assert len(result["end"]["correct"]) == result["eval_problems"] == 2
    # where the minutes went: the step times logged and each evaluation's own
    said = capsys.readouterr().out.splitlines()
    evals = {k: result[k] for k in ("start", "rl_start", "end")}
    assert said[-1] == runs.time_spent(os.path.join(out, "metrics.jsonl"), evals)
    assert all(e["eval_minutes"] > 0 for e in evals.values())
    sft, grpo = (sum(r["step_time"] for r in rows if r["phase"] == p) / 60 for p in ("sft", "grpo"))
    assert said[-1].startswith(f"minutes: SFT {sft:.1f} | GRPO {grpo:.1f} (rollouts ")
    assert said[-1].endswith(
        f" | 3 evaluations {sum(e['eval_minutes'] for e in evals.values()):.1f}")
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    # the run folder is a model: evaluate/load_model read it back
    from model import load_model
    _, model = load_model(out, device="cpu")
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["model"]
    name, w = next(iter(state.items()))
    assert torch.equal(model.state_dict()[name], w)
    assert w.dtype == torch.float32           # trained weights stay fp32


def tiny_llama_with_real_tokenizer():
    """The real tokenizer and a randomly initialised 2-layer Llama: fast on any CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from model import load_model
    tok, _ = load_model("SmolLM2-135M", device="cpu")
    torch.manual_seed(0)
    return tok, LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                             intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=2048))


def test_bf16_grpo_step_keeps_fp32_weights(math_suite, monkeypatch):
    """The mixed path (bf16 rollout copy, bf16 autocast loss) on a tiny random model with the
    real tokenizer: fast on any CPU. The weights move, and stay fp32 and finite."""
    tok, model = tiny_llama_with_real_tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = Config(**dict(TINY, group_size=4), precision="bf16")
    rewards = iter([0.0, 1.0, 0.1, 0.5] * 2)         # a random model earns nothing: force a signal
    monkeypatch.setattr(train, "compute_reward", lambda *a: (next(rewards), {}))
    m = train.grpo_step(model, None, opt, tok, math_suite, math_suite.split("train")[:2], cfg)
    assert {"loss", "reward_mean", "kl"} <= set(m)
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
    assert m["groups_with_signal"] == 1.0
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items()
               if "rotary" not in k)


def test_sft_steps_compute_in_sft_precision(monkeypatch):
    """--sft-precision sets the SFT steps' matmuls alone (e.g. auto: bf16 where native, with RL
    in fp32); unset, SFT computes as --precision says. The weights stay fp32 and move."""
    tok, model = tiny_llama_with_real_tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = tok("What is 2 + 3? \\boxed{5}")["input_ids"]
    trajs = [(ids[:4], ids[4:], [1] * len(ids[4:]))] * 2
    dtypes = []
    backward = train.backward
    monkeypatch.setattr(train, "backward",
                        lambda m, b, f, dtype: dtypes.append(dtype) or backward(m, b, f, dtype))
    before = next(model.parameters()).clone()
    for sft_precision in ("bf16", None):
        train.sft_step(model, opt, tok, trajs, Config(precision="fp32", sft_precision=sft_precision))
    assert dtypes == [torch.bfloat16, torch.float32]
    w = next(model.parameters())
    assert w.dtype == torch.float32 and not torch.equal(w, before)


def test_update_computes_in_update_precision(monkeypatch):
    """--update-precision sets the GRPO update's matmuls alone (reference and policy forwards);
    unset, as --precision. The weights stay fp32 and move; in bf16 the fp32 sampler's log-probs
    and the update's differ (sampler_kl > 0), in fp32 they are the same."""
    tok, model = tiny_llama_with_real_tokenizer()
    ref = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = tok("What is 2 + 3? \\boxed{5}")["input_ids"]
    prompt, resp = ids[:4], ids[4:]

    def sampled(T):                     # as the fp32 sampler logs them, from the weights now
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, len(prompt) - 1:-1].float()
        logp = (logits / T).log_softmax(-1).gather(1, torch.tensor(resp)[:, None])[:, 0].tolist()
        return [(prompt, resp, [1] * len(resp), logp)] * 2

    dtypes, logp_dtypes = [], []
    backward, logprobs = train.backward, train.logprobs
    monkeypatch.setattr(train, "backward", lambda m, b, f, dtype, T: dtypes.append(dtype)
                        or backward(m, b, f, dtype, T))
    monkeypatch.setattr(train, "logprobs", lambda m, b, dtype, T: logp_dtypes.append(dtype)
                        or logprobs(m, b, dtype, T))
    before = next(model.parameters()).clone()
    kls = []
    for update_precision in ("bf16", None):
        cfg = Config(precision="fp32", update_precision=update_precision)
        kls.append(train.policy_update(model, ref, opt, tok.pad_token_id, sampled(cfg.temperature),
                                       torch.tensor([1.0, -1.0]), cfg)["sampler_kl"])
    assert dtypes == logp_dtypes == [torch.bfloat16, torch.float32]
    assert kls[0] > 1e-8 and abs(kls[1]) < 1e-10     # tiny logits: 7e-8 and 0.0 when written
    w = next(model.parameters())
    assert w.dtype == torch.float32 and not torch.equal(w, before)


def test_sampler_kl_sees_a_temperature_mismatch(student, math_suite):
    """The real student samples at T = 0.6 in fp32; an update that takes its log-probs at the
    same T finds the sampler's log-probs again (sampler_kl ~0), one at T = 1 (the old bug)
    does not (sampler_kl clearly > 0): the check sees what it exists for."""
    from rollout import generate_rollouts
    tok, base = student
    model = copy.deepcopy(base)
    torch.manual_seed(0)
    rollouts = generate_rollouts(model, tok, math_suite.split("train")[:2], math_suite.tools,
                                 math_suite.schemas, group_size=2, max_new_tokens=12,
                                 max_total_tokens=12, temperature=0.6)
    seqs = [(r.prompt_ids, r.ids, r.mask, r.sampler_logp) for r in rollouts]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)      # measure, do not move
    kl = {T: train.policy_update(model, None, opt, tok.pad_token_id, seqs,
                                 torch.tensor([1.0, -1.0, 1.0, -1.0]),
                                 Config(temperature=T, kl_coef=0.0))["sampler_kl"]
          for T in (0.6, 1.0)}
    assert abs(kl[0.6]) < 1e-5 and kl[1.0] > 1e-2, kl


def test_a_second_ppo_epoch_clips(math_suite):
    """ppo_epochs 2: the second pass sees the ratio of the weights after the first step, and
    the clip acts (clip_frac > 0); with one epoch it never does (the ratio is exactly 1)."""
    tok, model = tiny_llama_with_real_tokenizer()
    ids = tok("What is 2 + 3? \\boxed{5}")["input_ids"]
    seqs = [(ids[:4], ids[4:], [1] * len(ids[4:]), [0.0] * len(ids[4:]))]
    clip = {}
    for epochs in (1, 2):
        opt = torch.optim.SGD(model.parameters(), lr=50.0)
        clip[epochs] = train.policy_update(model, None, opt, tok.pad_token_id, seqs,
                                           torch.tensor([1.0]),
                                           Config(ppo_epochs=epochs, kl_coef=0.0))["clip_frac"]
    assert clip[1] == 0.0 and clip[2] > 0.0, clip


def test_dynamic_sampling_draws_until_enough_groups_have_signal(math_suite, monkeypatch):
    """max_sample_batches > 1 (DAPO): flat groups are skipped and more batches drawn until
    batch_size groups have signal, or the cap; the loss sees only those groups."""
    tok, model = tiny_llama_with_real_tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    questions = math_suite.split("train")

    calls = []                                   # questions per generate call
    generate = train.generate_rollouts
    monkeypatch.setattr(train, "generate_rollouts",
                        lambda p, t, qs, *a, **k: calls.append(len(qs)) or generate(p, t, qs, *a, **k))

    def run(rewards, cap):
        cfg = Config(**dict(TINY, batch_size=2, group_size=2, max_new_tokens=4,
                            max_total_tokens=8, max_sample_batches=cap))
        it = iter(rewards)
        monkeypatch.setattr(train, "compute_reward", lambda *a: (next(it), {}))
        draws = iter(range(2, 100, 2))
        draw = lambda: questions[next(draws):][:2]              # noqa: E731
        calls.clear()
        return train.grpo_step(model, None, opt, tok, math_suite, questions[:2], cfg, draw)

    # batch 1: two flat groups; batch 2: one with signal, one flat; batch 3: two with signal
    m = run([0.1, 0.1, 0.0, 0.0] + [0.0, 1.0, 0.1, 0.1] + [0.1, 0.16, 1.0, 0.1], cap=4)
    assert m["sample_batches"] == 3 and calls == [2, 2, 2]
    assert m["trained_rows"] == 4                # 2 groups with signal, the third one not kept
    assert m["groups_with_signal"] == 3 / 6      # over every group sampled
    # where the first batch has enough, no second one is drawn
    m = run([0.0, 1.0, 0.1, 0.2], cap=4)
    assert calls == [2] and m["sample_batches"] == 1 and m["trained_rows"] == 4
    # the cap: only one group with signal in 2 batches, the step trains on it alone
    m = run([0.1, 0.1, 0.0, 0.0] + [0.0, 1.0, 0.1, 0.1], cap=2)
    assert m["sample_batches"] == 2 and m["trained_rows"] == 2
    with pytest.raises(AssertionError):
        train.grpo_step(model, None, opt, tok, math_suite, questions[:2],
                        Config(max_sample_batches=2))


def test_rollout_budget_stops_grpo_and_evaluations_fall_on_exact_budgets(tmp_path, monkeypatch):
    """--rollout-budget 10 with --eval-rollouts 4, 2 rollouts a batch, up to 4 batches a step,
    every group flat (so every step draws all it may): a step stops at the next mark, giving
    4, 8, then 10 rollouts (2, 2, 1 batches); evaluations at 4 and 8, the end at 10; a resumed
    finished run draws nothing more."""
    monkeypatch.setattr(train, "compute_reward", lambda *a: (0.0, {}))
    out = str(tmp_path / "budget")
    cfg = dict(TINY, warmup_sft_steps=0, steps=100, rollout_budget=10, eval_rollouts=4,
               save_every=100, out=out)
    cfg["max_sample_batches"] = 4
    result = train.train(Config(**cfg))
    rows = metrics(out)
    assert [(r["step"], r["sample_batches"], r["rollouts"]) for r in rows] == \
        [(1, 2, 4), (2, 2, 8), (3, 1, 10)]
    assert {k: result[k]["rollouts"] for k in result if k != "eval_problems"} == \
        {"rl_start": 0, "rollouts_4": 4, "rollouts_8": 8, "end": 10}
    resumed = train.train(Config(**cfg, resume=True))
    assert len(metrics(out)) == 3 and resumed["end"] == result["end"]
    with pytest.raises(SystemExit):                 # not a multiple of a batch's rollouts
        train.train(Config(**dict(cfg, rollout_budget=9, out=str(tmp_path / "odd"))))


def test_a_finished_run_resumed_with_more_steps_evaluates_its_new_end(tmp_path):
    """A 1-step run, then --resume --steps 2: step 2 runs, the old end is kept as "grpo_1" and
    a new end is taken after step 2 (before the fix, the old end was reported again)."""
    out = str(tmp_path / "longer")
    cfg = dict(TINY, warmup_sft_steps=0, out=out, resume=True)
    first = train.train(Config(**cfg, steps=1))
    longer = train.train(Config(**cfg, steps=2))
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert longer["grpo_1"] == first["end"]
    assert (first["end"]["step"], longer["end"]["step"]) == (1, 2)
    assert longer["end"]["rollouts"] == 2 * first["end"]["rollouts"]


def test_sft_baseline_lowers_its_loss(tmp_path):
    """method sft end to end: two steps of two trajectories (the first step's loss is about
    1.1-1.3 on the base model, the second about 0.5), one checkpoint, the evaluations."""
    out = str(tmp_path / "sft")
    result = train.train(Config(**dict(TINY, save_every=2), method="sft", steps=2, out=out))
    losses = [r["sft_loss"] for r in metrics(out)]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert {"start", "end"} <= set(result)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, model, opt, 1, Config(), "grpo")
    good = open(path, "rb").read()

    def dies_midway(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt  # killed while writing
    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, 2, Config(), "grpo")
    assert open(path, "rb").read() == good


def test_zero_is_a_value_and_names_are_checked_at_parse_time():
    cfg = train.parse_args(["--kl-coef", "0", "--warmup-sft-steps", "0", "--eval-n", "0"])
    assert (cfg.kl_coef, cfg.warmup_sft_steps, cfg.eval_n) == (0.0, 0, 0)
    with pytest.raises(SystemExit):
        train.parse_args(["--reward", "mentr"])
    with pytest.raises(SystemExit):
        train.parse_args(["--suite", "no_such_suite"])
    assert train.parse_args(["--suite", "shop"]).suite == "shop"


def test_sigkill_mid_grpo_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A train.py process killed with SIGKILL during a GRPO step and run again with --resume
    ends with the same metrics and bit-identical weights as a run that was never killed."""
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = ["--warmup-sft-steps", "0", "--steps", "2", "--batch-size", "1", "--group-size", "2",
             "--max-new-tokens", "16", "--max-total-tokens", "24", "--max-turns", "2",
             "--eval-n", "0", "--save-every", "1", "--seed", "3"]

    def run(out, *extra):
        return subprocess.Popen([sys.executable, "train.py", *flags, "--out", out, *extra],
                                cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    assert run(full).wait(timeout=600) == 0
    p = run(killed)
    deadline = time.time() + 600
    while not os.path.exists(os.path.join(killed, "checkpoint.pt")):   # step 1 saved
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)                                      # step 2 under way
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert len(metrics(killed)) < 2                      # it died before the end
    assert run(killed, "--resume").wait(timeout=600) == 0
    a, b = metrics(full), metrics(killed)
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("loss", "reward_mean", "response_tokens", "kl", "accuracy"):
            assert ra[key] == rb[key], (ra["step"], key)
    wa = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=False)["model"]
    wb = torch.load(os.path.join(killed, "checkpoint.pt"), weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_evaluations_along_grpo_print_the_rl_phase_so_far(tmp_path, monkeypatch, capsys):
    """An evaluation along GRPO prints its accuracy, then the RL phase so far with its CI."""
    scores = iter([[1, 0, 0, 0], [1, 1, 1, 1]])                 # RL start, then after step 5
    monkeypatch.setattr(runs, "accuracy", lambda *a, **k: dict(
        zip(("accuracy", "tool_call_rate", "boxed_rate", "truncated_rate", "correct"),
            (0.5, 1.0, 1.0, 0.0, next(scores)))))
    run = runs.Run(Config(out=str(tmp_path), eval_every=5), None, None, None, None,
                   [{}] * 4, "grpo", 0, None, {})
    run.evaluate("rl_start", "RL start")
    run.step = 4
    run.evaluate_along()                                        # not due: prints nothing
    assert capsys.readouterr().out.splitlines() == [
        "RL start (n=4): accuracy 0.500 | tool_call_rate 1.000 | boxed_rate 1.000 | "
        "truncated_rate 0.000"]
    run.step = 5
    run.evaluate_along()
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("after GRPO step 5 (n=4): accuracy 0.500")
    # 0.25 -> 1.00 on the same 4 problems: +0.750; the CI's low end is above 0
    assert said[1].startswith("RL phase so far: 0.250 -> 1.000 (+0.750, 95% CI [+")
    assert said[1].endswith("paired bootstrap, n=4)") and len(said) == 2


def test_the_readme_suite_example_trains_as_written(tmp_path):
    """The README's bring-your-own-suite example, copied out as it stands, trains with the
    default (offline reference) teacher, which replays its solutions, and is evaluated."""
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md")).read()
    section = text[text.index("## Bring your own suite"):]
    (tmp_path / "my_suite.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    result = train.train(Config(**dict(TINY, eval_n=4), suite=str(tmp_path / "my_suite.py"),
                                warmup_sft_steps=1, steps=1, out=str(tmp_path / "run")))
    assert len(result["end"]["correct"]) == 4
    assert [r["phase"] for r in metrics(str(tmp_path / "run"))] == ["sft", "grpo"]


def test_an_evaluation_shows_its_progress_and_redraws_the_curves(tmp_path, capfd):
    """A run's first evaluation (before any step) prints a progress bar of problems done, with
    a rate and time left, and writes curves.png at once, not only when the run ends."""
    out = str(tmp_path / "progress")
    run = runs.start(Config(**dict(TINY, eval_n=3), out=out), "sft", 1e-4)
    capfd.readouterr()
    run.evaluate("start", "start")
    err = capfd.readouterr().err
    assert "evaluating math" in err and "/3 [" in err and "problem" in err, err[-300:]
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
