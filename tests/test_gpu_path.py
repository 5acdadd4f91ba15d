"""The one-GPU path (`python train.py --student Qwen2.5-0.5B`), rehearsed on CPU in seconds:
fp32 master weights under bf16 compute, a loss whose memory is bounded by tokens, CUDA state
in checkpoints and collectives on the backend's device (both mocked: no GPU here)."""
import os
import sys

import pytest
import torch

import distributed
import engine
import model as model_py
import runs
import train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import memory  # noqa: E402

# Qwen2.5's chat template, the branches our conversations use (system, user, assistant with
# its <tool_call> text in the content, consecutive tool messages in one user turn)
QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def qwen_like_student(folder):
    """A tiny Qwen2 (tied embeddings, grouped KV heads, QKV bias) and the embedded tokenizer
    made Qwen-like: single non-special <tool_call> tokens, a pad distinct from EOS, Qwen2.5's
    template. Saved as a local folder, which is what --student takes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok, _ = model_py.load_model("SmolLM2-135M", device="cpu")
    tok.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = QWEN_TEMPLATE
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok, m


def test_gpu_preset_dry_run_moves_fp32_weights_at_lr_1e6(tmp_path, monkeypatch, math_suite):
    """One GRPO step of the gpu preset (its lr 1e-6, grad checkpointing, micro-batches bounded
    by tokens; sizes cut down) with bf16 compute as on a bf16 GPU. bf16 weights (what a GPU
    got before) would round most of an lr-1e-6 update away and every one on the norms."""
    folder, out = str(tmp_path / "student"), str(tmp_path / "run")
    tok, m = qwen_like_student(folder)
    assert len(tok("<tool_call>", add_special_tokens=False).input_ids) == 1
    assert tok.pad_token_id != tok.eos_token_id
    before = {k: v.clone() for k, v in m.state_dict().items()}
    monkeypatch.setattr(model_py, "bf16_native", lambda device: True)     # as on a GPU
    # a random model's rollouts are all truncated (reward 0): give the groups a signal
    seen = []

    def varied_reward(variant, r, suite):
        seen.append(r)
        return (sum(r.ids) % 7) / 7, {"answer": 0.0}
    monkeypatch.setattr(train, "compute_reward", varied_reward)
    cfg = train.Config(**{**train.GPU_PRESET, "student": folder, "out": out, "steps": 1,
                          "batch_size": 2, "group_size": 4, "max_new_tokens": 12,
                          "max_total_tokens": 24, "max_turns": 2, "micro_batch_tokens": 64,
                          "eval_n": 0, "preset": "gpu"})
    assert cfg.lr == 1e-6 and cfg.grad_checkpointing and cfg.micro_batch == 16
    assert cfg.warmup_sft_steps == 18       # a local folder not named Qwen: warmed as SmolLM2 is
    cfg.warmup_sft_steps = 0                # (the gpu preset's Qwen students start RL directly)
    train.train(cfg)
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    after, opt = state["model"], state["optimizer"]
    assert all(v.dtype == torch.float32 for v in after.values())               # master weights
    assert all(t.dtype == torch.float32 for s in opt["state"].values()
               for t in s.values() if t.dim() > 0)                             # AdamW moments
    moved = sum((after[k] != before[k]).sum().item() for k in before)
    assert moved / sum(v.numel() for v in before.values()) > 0.5, moved
    for k in before:
        if k.endswith("norm.weight"):                                           # ~1.0 each
            assert (after[k] != before[k]).float().mean() > 0.9, k
    # a rollout's tokens are the chat template applied to its messages
    from rollout import prompt_messages
    r = seen[0]
    text = tok.apply_chat_template(prompt_messages(r.problem["question"], math_suite.schemas)
                                   + r.messages(), tokenize=False)
    if r.truncated:                        # cut off mid-turn: the turn has no <|im_end|>
        text = text.removesuffix("<|im_end|>\n")
    assert tok.decode(r.prompt_ids + r.ids) == text.removesuffix("\n")


def test_memory_model_holds_on_a_qwen_shaped_model():
    """experiments/memory.py predicts a whole model's activations from one- and two-layer
    models of its width and vocabularies of 256 and 512, plus autocast's bf16 weight copies;
    on a 4-layer tiny Qwen2 with a 1,000-token vocabulary the prediction is within 20% of the
    bytes measured, grad checkpointing on and off."""
    shape = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2)
    V, rows, T = 1000, 2, 96
    m = memory.build(shape, vocab=V)
    for gc in (False, True):
        fixed, per_layer, per_vocab = memory.bytes_per_token(shape, gc)
        predicted = (fixed + 4 * per_layer + V * per_vocab) * rows * T + \
            memory.bf16_copies(shape, gc, V)                    # autocast's bf16 weight copies
        measured = memory.saved_bytes(m, rows, T, gc)
        assert abs(predicted / measured - 1) < 0.2, (gc, predicted, measured)
    assert memory.n_params(shape, V) == sum(p.numel() for p in m.parameters())
    llama = {**shape, "arch": "llama"}                               # SmolLM2's kind: no QKV bias
    assert memory.n_params(llama, V) == sum(p.numel() for p in memory.build(llama, vocab=V)
                                            .parameters())


def test_chunked_logprobs_equal_the_whole_computation(tiny_model, monkeypatch):
    """token_logprobs over chunks of 3 positions (recomputed in backward) gives the values and
    gradients of the unchunked computation; sequence_logprobs equals reference_logprobs."""
    ids = torch.tensor([[1, 5, 9, 3, 7, 2, 4], [6, 8, 3, 2, 0, 0, 0]])
    attn = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    grads = []
    for chunk in (1024, 3):
        monkeypatch.setattr(engine, "LOGITS_CHUNK", chunk)
        tiny_model.zero_grad()
        lp = engine.sequence_logprobs(tiny_model, ids[0, :0], ids, attn)
        lp.sum().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
        with torch.no_grad():
            ref = engine.reference_logprobs(tiny_model, ids, attn)
        torch.testing.assert_close(lp.detach(), ref, rtol=0, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_grad_checkpointing_gives_the_same_gradient(tiny_model):
    """engine.backward with a shared prefix, per-layer recomputation on and off. Checkpointed
    layers read the prefix through SDPA over [prefix ; row] instead of the split kernel, so
    the two agree to fp32 rounding, not bit for bit (an AVX-512 EPYC: 6e-6 relative on one
    element of 2,048 after the tests before it had run)."""
    seqs = [(list(range(1, 9)) + [10 + i], list(range(20, 25 + i)), [0] + [1] * (4 + i))
            for i in range(4)]
    grads = []
    for on in (False, True):
        engine.set_grad_checkpointing(tiny_model, on)
        tiny_model.train()
        tiny_model.zero_grad()
        batch = engine.make_batch(seqs, 2, 0, "cpu")

        def loss_fn(k, mb, lp):
            loss = train.aggregate(-lp, mb.mask, "token_mean", batch.n_tokens)
            return loss, {"loss": loss.item()}
        m = engine.backward(tiny_model, batch, loss_fn, torch.float32)
        grads.append((m["loss"], [p.grad.clone() for p in tiny_model.parameters()]))
    engine.set_grad_checkpointing(tiny_model, False)
    assert grads[0][0] == grads[1][0]
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_micro_batches_are_bounded_by_rows_and_tokens():
    lengths = [5, 1, 3, 9, 2]                       # ascending order: rows 1, 4, 2, 0, 3
    assert engine.micro_batches(lengths, 2) == [[1, 4], [2, 0], [3]]
    # at most 10 padded tokens: [1, 4, 2] is 3 x 3 = 9; row 0 (5) alone; row 3 (9) alone
    assert engine.micro_batches(lengths, 3, max_tokens=10) == [[1, 4, 2], [0], [3]]
    assert engine.micro_batches([12], 4, max_tokens=10) == [[0]]      # too long: still trained


def test_precision_rule_fp32_master_weights_bf16_only_where_native(monkeypatch):
    assert model_py.MASTER_DTYPE == torch.float32
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)   # a T4 / V100
    assert model_py.compute_dtype(cuda) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert model_py.compute_dtype(cuda) == torch.bfloat16                      # an A100 / H100
    assert model_py.compute_dtype(cuda, "fp32") == torch.float32


class _OnCuda(torch.nn.Module):
    """A CPU model that says it is on a GPU (for the checkpoint's RNG states)."""
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.device = torch.device("cuda", 0)


def test_checkpoint_keeps_and_restores_the_cuda_rng(tmp_path, monkeypatch):
    cuda_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state)
    m = _OnCuda()
    opt = torch.optim.AdamW(m.parameters())
    path = str(tmp_path / "checkpoint.pt")
    runs.save_checkpoint(path, m, opt, 3, train.Config(), "grpo")
    state = torch.load(path, weights_only=False)
    assert torch.equal(state["rng"]["cuda"], cuda_state)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s, d)))
    runs.restore_rng(state, seed=0)
    assert len(restored) == 1 and torch.equal(restored[0][0], cuda_state)


def test_collectives_put_their_tensors_on_the_backends_device(monkeypatch):
    """NCCL takes CUDA tensors only: all_sum and sync_gradients send theirs to backend_device()."""
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.backend_device() == torch.device("cuda", 1)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    assert distributed.backend_device() == torch.device("cpu")
    sent = []

    class Sent(Exception):
        pass

    def all_reduce(t):
        sent.append(t.device)
        raise Sent
    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(distributed, "backend_device", lambda: torch.device("meta"))
    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    for call in (lambda: distributed.all_sum(1.0),
                 lambda: distributed.sync_gradients(torch.nn.Linear(2, 2))):
        with pytest.raises(Sent):
            call()
    assert sent == [torch.device("meta")] * 2
