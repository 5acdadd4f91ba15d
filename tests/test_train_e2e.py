"""train.py end to end on the real embedded student, with tiny settings (CPU)."""
import json
import os

import pytest
import torch

import train
from train import Config, save_checkpoint

TINY = dict(batch_size=1, group_size=2, sft_batch_size=2, max_new_tokens=16, max_total_tokens=24,
            max_turns=2, eval_n=2, save_every=1, lr=1e-5, sft_lr=1e-4)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_grpo_with_warm_start_runs_and_logs_everything(tmp_path):
    out = str(tmp_path / "mentor")
    # bf16 matmuls whatever the CPU ('auto' picks them only with AVX-512): the mixed path runs
    result = train.train(Config(**TINY, warmup_sft_steps=2, steps=2, precision="bf16", out=out))
    rows = metrics(out)
    assert [r["phase"] for r in rows] == ["sft", "sft", "grpo", "grpo"]
    for key in ("reward_mean", "reward_std", "accuracy", "tool_call_rate", "hallucinated_tool_rate",
                "kl", "clip_frac", "response_tokens", "rollout_tok_s", "step_time"):
        assert key in rows[-1], key
    assert rows[-1]["clip_frac"] == 0.0  # one PPO epoch: ratio is exactly 1
    assert set(result) >= {"before", "after"}
    # the run folder is a model: evaluate/load_model read it back
    from model import load_model
    _, model = load_model(out, device="cpu")
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["model"]
    name, w = next(iter(state.items()))
    assert torch.equal(model.state_dict()[name], w)
    assert w.dtype == torch.float32           # trained weights stay fp32; only matmuls were bf16


def test_sft_baseline_lowers_its_loss(tmp_path):
    out = str(tmp_path / "sft")
    train.train(Config(**dict(TINY, sft_batch_size=4), method="sft", steps=4, out=out))
    losses = [r["sft_loss"] for r in metrics(out)]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_resume_reproduces_the_next_step(tmp_path):
    cfg = dict(TINY, warmup_sft_steps=0, steps=2, kl_coef=0.001)
    full = str(tmp_path / "full")
    train.train(Config(**cfg, out=full))
    part = str(tmp_path / "part")
    train.train(Config(**dict(cfg, steps=1), out=part))       # "killed" after step 1
    train.train(Config(**cfg, out=part, resume=True))          # resume -> step 2
    a, b = metrics(full)[-1], metrics(part)[-1]
    assert b["step"] == 2
    for key in ("loss", "reward_mean", "response_tokens", "kl"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key


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


def test_qwen_student_gets_the_gpu_preset_and_flags_win():
    cfg = train.parse_args(["--student", "Qwen2.5-0.5B", "--steps", "7"])
    assert cfg.warmup_sft_steps == 0 and cfg.lr == 1e-6 and cfg.group_size == 8 and cfg.steps == 7
    default = train.parse_args([])
    assert default.student == "SmolLM2-135M" and default.warmup_sft_steps > 0


def test_missing_model_is_a_one_line_error(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "train.py", "--student", "Qwen2.5-0.5B",
                        "--out", str(tmp_path / "q")], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "Qwen/Qwen2.5-0.5B-Instruct" in last and "not available offline" in last
    assert "Traceback" not in p.stderr
