"""Mixed precision: which dtype matmuls run in, the rollout's bf16 copy, bf16 log-probs;
and giving a training's freed memory back to the OS."""
import os
import platform

import pytest
import torch

from engine import sequence_logprobs
from model import autocast, compute_dtype, machine, rollout_weights


def test_compute_dtype_follows_the_flag_and_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    assert compute_dtype(cpu, "fp32") == torch.float32
    assert compute_dtype(cpu, "bf16") == torch.bfloat16
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert compute_dtype(cpu) == torch.float32          # bf16 is emulated, slow, without AVX-512
    # what run.json and every evaluation record: the kind of CPU and the dtype it implies
    assert machine("cpu").endswith("CPU cores (AVX2), matmuls in float32")
    assert machine("cpu", "bf16").endswith("(AVX2), matmuls in bfloat16")


def test_rollout_weights_are_a_rounded_copy_and_leave_the_policy_alone(tiny_model):
    assert rollout_weights(tiny_model, torch.float32) is tiny_model
    policy = rollout_weights(tiny_model, torch.bfloat16)
    assert policy is not tiny_model and policy.dtype == torch.bfloat16 and not policy.training
    for p, q in zip(tiny_model.parameters(), policy.parameters()):
        assert p.dtype == torch.float32 and p.requires_grad and not q.requires_grad
        assert torch.equal(p.to(torch.bfloat16), q)
    # buffers stay as they are, as from_pretrained(dtype=bf16) keeps them: the rotary inv_freq
    # in bf16 would put 0.94 rad of phase error at 1,000 tokens for Qwen2.5's theta
    buffers = dict(tiny_model.named_buffers())
    assert any("inv_freq" in name for name in buffers)
    for name, b in policy.named_buffers():
        assert b.dtype == buffers[name].dtype and torch.equal(b, buffers[name]), name


def test_bf16_logprobs_stay_close_to_fp32(student, math_suite):
    """On a teacher trajectory under the tool prompt: the log-probs the loss uses."""
    from rollout import encode_prompt, trajectory_ids
    from teacher import reference_messages
    tok, model = student
    problem = math_suite.split("train")[0]
    prompt = encode_prompt(tok, problem["question"], math_suite.schemas)
    ids, mask = trajectory_ids(tok, reference_messages(problem, math_suite.tools))
    x = torch.tensor([prompt + ids])
    needed = torch.tensor([[0] * len(prompt) + mask])
    with torch.no_grad():
        ref = sequence_logprobs(model, x[0, :0], x, torch.ones_like(x), needed)
        with autocast(model, torch.float32):                 # disabled: the same computation
            same = sequence_logprobs(model, x[0, :0], x, torch.ones_like(x), needed)
        with autocast(model, torch.bfloat16):
            low = sequence_logprobs(model, x[0, :0], x, torch.ones_like(x), needed)
    sel = needed.bool()
    assert torch.equal(same, ref)
    diff = (low - ref)[sel].abs()
    assert low.dtype == torch.float32 and 0 < diff.mean() < 0.05      # measured: 0.021
    assert abs(low[sel].sum() / ref[sel].sum() - 1) < 0.02            # measured: 0.6%


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or platform.libc_ver()[0] != "glibc",
                    reason="RSS from /proc and malloc_trim are Linux + glibc")
def test_release_memory_gives_freed_heap_back():
    """Freed tensors below glibc's mmap threshold stay in its heap (a training step's
    activations); release_memory hands them back. 400 MB of 1 MB tensors, the last kept
    alive so the heap's top cannot shrink by itself."""
    from model import release_memory

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    big = torch.ones(2**22)           # freeing a 16 MB mmap raises glibc's threshold past 1 MB
    del big
    xs = [torch.ones(2**18) for _ in range(400)]
    keep = xs[-1]
    del xs
    before = rss_mb()
    release_memory()
    assert before - rss_mb() > 200, (before, rss_mb())
    assert keep.sum().item() == 2**18


def test_an_rl_step_is_below_bf16s_spacing(monkeypatch):
    """bf16 keeps 8 significant bits: at 0.03 (in [2^-6, 2^-5)) its spacing is 2^-13 = 1.2e-4.
    An AdamW step of lr 1e-5 there leaves the bf16 copy unchanged (what bf16 adds is -1e-5:
    the whole change is lost); a step that carries the weight across a rounding boundary moves
    the copy by a whole spacing (what bf16 adds: 2^-13 - 1e-5)."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    from bf16_resolution import bf16_resolution
    w0 = torch.tensor([[0.03]])
    change, rounding, moved = bf16_resolution(w0, w0 + 1e-5)
    assert moved == 0 and rounding == pytest.approx(change) and change == pytest.approx(1e-10)
    boundary = w0.bfloat16().float() + 2 ** -14                 # half a spacing above 0.03's bf16
    change, rounding, moved = bf16_resolution(boundary - 5e-6, boundary + 5e-6)
    assert moved == 1 and rounding == pytest.approx((2 ** -13 - 1e-5) ** 2, rel=1e-3)
