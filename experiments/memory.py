"""How much memory one training step needs: measured on CPU, extrapolated to a GPU.

    python experiments/memory.py                 # the README's table (a few minutes, 2 cores)
    python experiments/memory.py --check-full    # + Qwen2.5-0.5B's exact shape, whole (24 layers)
    python experiments/memory.py --step          # + one GRPO step at that size: time, peak RSS

No download: the students' shapes are written below and the models are randomly
initialised (memory and FLOPs do not depend on the weights' values).

The model of a GRPO step's peak (the backward of its largest micro-batch), P parameters:

    16 P    fp32 master weights, gradients, AdamW's two moments (model.py's precision rule)
  +  4 P    the frozen KL reference (an fp32 copy)
  +  2 P    autocast's bf16 copies of the weights, kept for backward (bf16_copies; with
            --grad-checkpointing only the output head's: a layer casts again when recomputed)
  +  a * tokens        activations kept for backward, a bytes a token: measured here on
                       one- and two-layer models of the student's width (a = fixed + L * per_layer;
                       bytes_per_token). With --grad-checkpointing per_layer is the layer's input
                       only, and the layer being recomputed in backward adds one layer's whole
                       activations (the per_layer measured without checkpointing)
  +  a * prefix        the shared system prompt's activations, kept for the whole pass
  +  logits            LOGITS_CHUNK positions x vocabulary x (bf16 + fp32 logits + log-softmax
                       + its gradient) = 14 bytes each, the chunk being recomputed in backward

`tokens` is the micro-batch's padded tokens (rows x longest row), what --micro-batch-tokens
bounds. Rollouts come before the update and take less (the bf16 policy copy and the KV cache).
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402
from model import autocast  # noqa: E402

GiB = 2**30
# The students' shapes (their config.json), for randomly initialised models. The embedded
# SmolLM2-135M is a Llama (no QKV bias, vocabulary 49,152); the Qwen2.5 students are Qwen2.
SMOLLM2 = dict(arch="llama", vocab=49_152, hidden_size=576, intermediate_size=1536,
               num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
SHAPES = {
    "SmolLM2-135M": SMOLLM2,
    "Qwen2.5-0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2),
    "Qwen2.5-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
    "Qwen2.5-3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2),
}
QWEN_VOCAB = 151_936
LOGIT_BYTES = 2 + 4 + 4 + 4      # per position and vocabulary entry, at the backward peak
PREFIX_TOKENS = 900              # the tool prompt of the math suite (~850-950 tokens)
PRESET_TOKENS = 8192             # train.py's gpu preset: --micro-batch-tokens


def shape_of(shape):
    """A shape given by its name in SHAPES, or as a dict."""
    return SHAPES[shape] if isinstance(shape, str) else shape


def dims(shape):
    """The config fields of a shape, without arch and vocab."""
    return {k: v for k, v in shape_of(shape).items() if k not in ("arch", "vocab")}


def vocab_of(shape):
    return shape_of(shape).get("vocab", QWEN_VOCAB)


def build(shape, layers=None, vocab=None, seed=0):
    """A randomly initialised model of `shape` with tied embeddings and grouped KV heads:
    Qwen2 (QKV bias) unless the shape says arch "llama" (SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    llama = shape_of(shape).get("arch") == "llama"
    cfg = {**dims(shape), **({"num_hidden_layers": layers} if layers else {})}
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if llama else \
        (Qwen2Config, Qwen2ForCausalLM)
    return model_class(config_class(vocab_size=vocab or vocab_of(shape), tie_word_embeddings=True,
                                    max_position_embeddings=4096, **cfg)).float()


def n_params(shape, vocab=None):
    """Parameters of a shape with tied embeddings (QKV biases for Qwen2)."""
    vocab, bias = vocab or vocab_of(shape), shape.get("arch") != "llama"
    H, I, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = H // shape["num_attention_heads"] * shape["num_key_value_heads"]
    layer = H * H + 2 * H * kv + bias * (H + 2 * kv) + H * H + 3 * H * I + 2 * H
    return vocab * H + L * layer + H


def matmul_params(shape, vocab=None):
    """Parameters that go through a matmul (autocast keeps a bf16 copy of each during a
    forward): all but the norms' weights and the QKV biases."""
    H, L = shape["hidden_size"], shape["num_hidden_layers"]
    kv = H // shape["num_attention_heads"] * shape["num_key_value_heads"]
    bias = shape.get("arch") != "llama"
    return n_params(shape, vocab) - (2 * L + 1) * H - bias * L * (H + 2 * kv)


def bf16_copies(shape, grad_checkpointing, vocab=None):
    """Bytes of autocast's bf16 weight copies kept for backward: every matmul's; under grad
    checkpointing only the output head's (a checkpointed layer casts its weights again when it
    is recomputed, one layer at a time)."""
    if grad_checkpointing:
        return 2 * (vocab or vocab_of(shape)) * shape["hidden_size"]
    return 2 * matmul_params(shape, vocab)


def saved_bytes(model, rows, T, grad_checkpointing, dtype=torch.bfloat16):
    """Bytes of the tensors one loss forward of (rows, T) tokens keeps for backward (storages
    counted once, parameters left out, autocast's bf16 weight copies in), as engine.backward
    runs it."""
    engine.set_grad_checkpointing(model, grad_checkpointing)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t
    ids = torch.randint(0, model.config.vocab_size, (rows, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(model, dtype):
        lp = engine.sequence_logprobs(model, ids[0, :0], ids, torch.ones_like(ids))
    lp.sum().backward()
    model.zero_grad(set_to_none=True)
    engine.set_grad_checkpointing(model, False)
    return sum(seen.values())


def bytes_per_token(shape, grad_checkpointing):
    """(fixed, per_layer, per_vocab): activation bytes a token = fixed + layers x per_layer +
    vocabulary x per_vocab (the saved logits, when a micro-batch is one logits chunk). Measured
    on models of `shape`'s width with 1 and 2 layers and vocabularies of 256 and 512, each at
    two lengths so that what does not grow with tokens drops out."""
    def per(layers, vocab):
        m = build(shape, layers, vocab)
        a, b = (saved_bytes(m, 2, T, grad_checkpointing) for T in (64, 128))
        return (b - a) / (2 * 64)
    one, two, wide = per(1, 256), per(2, 256), per(1, 512)
    per_layer, per_vocab = two - one, (wide - one) / 256
    return one - per_layer - 256 * per_vocab, per_layer, per_vocab


def step_peak(shape, tokens, grad_checkpointing, per_token, vocab=None):
    """The model above: bytes at the backward peak of a micro-batch of `tokens` tokens.
    per_token: {False: bytes_per_token(shape, False), True: the same with checkpointing}."""
    vocab = vocab or vocab_of(shape)
    P = n_params(shape, vocab)
    fixed, per_layer, _ = per_token[grad_checkpointing]
    a = fixed + shape["num_hidden_layers"] * per_layer + \
        (per_token[False][1] if grad_checkpointing else 0)     # the layer being recomputed
    logits = engine.LOGITS_CHUNK * vocab * LOGIT_BYTES
    fixed_bytes = 20 * P + bf16_copies(shape, grad_checkpointing, vocab)
    return {"weights_optimizer_ref": fixed_bytes, "activations_per_token": a,
            "prefix": a * PREFIX_TOKENS, "logits": logits,
            "total": fixed_bytes + a * (tokens + PREFIX_TOKENS) + logits}


def max_tokens(shape, gpu_bytes, grad_checkpointing, per_token):
    """The largest micro-batch (tokens) whose step_peak fits, leaving 10% for the allocator."""
    base = step_peak(shape, 0, grad_checkpointing, per_token)
    room = 0.9 * gpu_bytes - base["total"]
    return max(0, int(room // base["activations_per_token"]))


def one_step(shape, rows, T, grad_checkpointing):
    """One GRPO update (engine.backward + AdamW) on rows x T tokens at full size, on CPU:
    (seconds, peak RSS in GiB)."""
    import train
    model = build(shape)
    engine.set_grad_checkpointing(model, grad_checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    prompt = list(range(10, 10 + PREFIX_TOKENS))
    seqs = [(prompt + [5 + r], list(range(100 + r, 100 + r + T)), [1] * T, [0.0] * T)
            for r in range(rows)]
    cfg = train.Config(micro_batch=16, micro_batch_tokens=rows * T, kl_coef=0.0,
                       precision="auto")                 # the gpu preset's
    adv = torch.tensor([1.0, -1.0] * (rows // 2))
    t0 = time.time()
    train.policy_update(model, None, opt, 0, seqs, adv, cfg)
    return time.time() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-full", action="store_true",
                    help="measure Qwen2.5-0.5B's shape whole and compare with the model")
    ap.add_argument("--step", action="store_true", help="time one update at 0.5B on CPU")
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--out", default="results/gpu-memory/memory.json")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    out = {"logits_chunk": engine.LOGITS_CHUNK, "prefix_tokens": PREFIX_TOKENS, "students": {}}
    print("| student | params | grad ckpt | activations / token | fixed: weights, Adam, ref, bf16 copies "
          f"| peak at {PRESET_TOKENS:,} tokens | max micro-batch tokens, 24 GB | 80 GB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape in ({} if args.skip_table else SHAPES).items():
        per = {gc: bytes_per_token(shape, gc) for gc in (False, True)}
        for gc in (False, True):
            peak = step_peak(shape, 0, gc, per)
            row = {"params": n_params(shape), "per_token_fixed": per[gc][0],
                   "per_token_per_layer": per[gc][1], "per_token_per_vocab": per[gc][2],
                   "activations_per_token":
                   peak["activations_per_token"], "fixed_bytes": peak["weights_optimizer_ref"],
                   "peak_at_preset_tokens": step_peak(shape, PRESET_TOKENS, gc, per)["total"],
                   "max_tokens_24GB": max_tokens(shape, 24e9, gc, per),
                   "max_tokens_80GB": max_tokens(shape, 80e9, gc, per)}
            out["students"][f"{name}{' +ckpt' if gc else ''}"] = row
            print(f"| {name} | {row['params'] / 1e9:.2f}B | {'on' if gc else 'off'} | "
                  f"{row['activations_per_token'] / 2**20:.2f} MiB | "
                  f"{row['fixed_bytes'] / GiB:.1f} GiB | {row['peak_at_preset_tokens'] / GiB:.1f} GiB"
                  f" | {row['max_tokens_24GB']:,} | "
                  f"{row['max_tokens_80GB']:,} |", flush=True)
    if args.check_full:
        shape, rows, T = SHAPES["Qwen2.5-0.5B"], 2, 256
        model = build("Qwen2.5-0.5B")
        for gc in (False, True):
            fixed, per_layer, per_vocab = bytes_per_token(shape, gc)
            predicted = (fixed + shape["num_hidden_layers"] * per_layer) * rows * T
            measured = saved_bytes(model, rows, T, gc)
            logits = rows * T * QWEN_VOCAB * per_vocab      # one logits chunk: all kept
            predicted += bf16_copies(shape, gc)             # autocast's bf16 weight copies
            out[f"check_full{'_ckpt' if gc else ''}"] = {
                "tokens": rows * T, "measured_saved_bytes": measured,
                "predicted_activations": predicted, "predicted_logits": logits}
            print(f"Qwen2.5-0.5B whole, {rows}x{T} tokens, grad ckpt {'on' if gc else 'off'}: "
                  f"saved {measured / GiB:.3f} GiB, model {(predicted + logits) / GiB:.3f} GiB "
                  f"({(predicted + logits) / measured - 1:+.1%})", flush=True)
    if args.step:
        for gc in (True,):
            secs, rss = one_step("Qwen2.5-0.5B", 4, 256, gc)
            out["step_0.5B"] = {"rows": 4, "tokens_per_row": 256, "grad_checkpointing": gc,
                                "seconds": round(secs, 1), "peak_rss_GiB": round(rss, 2),
                                "machine": engine_machine()}
            print(f"one GRPO update at Qwen2.5-0.5B's shape, 4 rows x 256 tokens after a "
                  f"{PREFIX_TOKENS}-token prompt, grad ckpt {gc}: {secs:.1f} s, "
                  f"peak RSS {rss:.2f} GiB", flush=True)
    out["machine"] = engine_machine()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


def engine_machine():
    from model import machine
    return machine("cpu")


if __name__ == "__main__":
    main()
