"""Rollouts on the real embedded student."""
import os

import pytest
import torch
import torch.nn.functional as F

from model import ModelNotAvailable, load_model
from rollout import between_turns_ids, generate_rollouts

CALL = '<think>Multiply.</think><tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>'


class ForceFirstTokens(torch.nn.Module):
    """Wraps the real model; batch row 0's first len(script) sampled tokens are forced to `script`.

    The real forward still runs (and fills the real cache), so everything after
    the script -- the tool response and the model's next turn -- is the real
    model's own work.
    """

    def __init__(self, model, script):
        super().__init__()
        self.model, self.script, self.calls = model, script, 0

    @property
    def device(self):
        return self.model.device

    @property
    def generation_config(self):
        return self.model.generation_config

    @property
    def config(self):
        return self.model.config

    def forward(self, **kw):
        out = self.model(**kw)
        if "attention_mask" not in kw:  # the shared-prefix prefill samples nothing
            return out
        if self.calls < len(self.script):
            out.logits[0] = -1e4
            out.logits[0, ..., self.script[self.calls]] = 1e4
        self.calls += 1
        return out


def test_tool_call_is_executed_and_its_response_is_masked(student, math_suite):
    tok, model = student
    script = tok(CALL, add_special_tokens=False).input_ids
    problem = {"question": "What is 6 times 7?", "answer": "42", "teacher_tools": ["multiply"]}
    others = math_suite.split("test")[:2]   # decode greedily while row 0's tool response is fed
    forced = ForceFirstTokens(model, script)
    rollouts = generate_rollouts(forced, tok, [problem] + others, math_suite.tools,
                                 math_suite.schemas, group_size=1, max_new_tokens=40,
                                 max_total_tokens=80, temperature=0)
    r = rollouts[0]
    assert r.tool_calls[0] == "multiply"
    assert r.ids[:len(script)] == script and r.mask[:len(script)] == [1] * len(script)
    # right after </tool_call>: the <|im_end|> we insert and the tool response, all mask 0
    tail = [tok.convert_tokens_to_ids("<|im_end|>")] + \
        between_turns_ids(tok, ['{"name": "multiply", "result": 42}'])
    k = len(script)
    assert r.ids[k:k + len(tail)] == tail and r.mask[k:k + len(tail)] == [0] * len(tail)
    assert r.mask[k + len(tail)] == 1          # then the model's own next turn
    assert "<tool_response>" in tok.decode(tail)
    assert len(r.turns) >= 2 and sum(r.mask) == r.n_generated

    # The cached, chunked generation equals a plain forward over each final sequence:
    # every token a row chose greedily (after row 0's script) is the argmax there too,
    # though the rows were left-padded against each other and row 0's tool response
    # went in over several steps.
    for r, start in zip(rollouts, [len(script), 0, 0]):
        ids = torch.tensor([r.prompt_ids + r.ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        P = len(r.prompt_ids)
        for t in range(start, len(r.ids)):
            if r.mask[t]:
                row = logits[P + t - 1]
                assert row[r.ids[t]] >= row.max() - 1e-3, t


def test_sampler_logp_is_each_tokens_log_prob_under_a_plain_forward(student, math_suite):
    """Rollout.sampler_logp: log p(token) under the distribution sampled from, softmax(logits /
    0.7) of the sampling weights, recorded at sampling time (train.py's sampler_kl and --tis-cap
    read it), 0 where the mask is 0."""
    tok, model = student
    torch.manual_seed(0)
    rollouts = generate_rollouts(model, tok, math_suite.split("test")[:2], math_suite.tools,
                                 math_suite.schemas, group_size=2, max_new_tokens=20,
                                 max_total_tokens=40, temperature=0.7)
    for r in rollouts:
        assert len(r.sampler_logp) == len(r.ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([r.prompt_ids + r.ids])).logits[0]
        lp = torch.log_softmax(logits[len(r.prompt_ids) - 1:-1].float() / 0.7, -1)
        plain = lp.gather(1, torch.tensor(r.ids)[:, None])[:, 0] * torch.tensor(r.mask)
        assert torch.allclose(torch.tensor(r.sampler_logp), plain, atol=1e-3)


def test_batched_group_rollouts_are_well_formed(student, math_suite):
    tok, model = student
    torch.manual_seed(0)
    problems = math_suite.split("test")[:2]
    rollouts = generate_rollouts(model, tok, problems, math_suite.tools, math_suite.schemas,
                                 group_size=3, max_new_tokens=24, max_total_tokens=48)
    assert len(rollouts) == 6
    assert [r.problem for r in rollouts] == [problems[0]] * 3 + [problems[1]] * 3
    for r in rollouts:
        assert len(r.ids) == len(r.mask) and 0 < sum(r.mask) <= 48
        assert r.truncated or r.ids[-1] in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) \
            or len(r.turns) == 5


def test_row_cut_off_mid_turn_is_truncated_with_its_text(student, math_suite):
    tok, model = student
    problems = math_suite.split("test")[:2]
    rollouts = generate_rollouts(model, tok, problems, math_suite.tools, math_suite.schemas,
                                 max_new_tokens=3, max_total_tokens=3, temperature=0)
    for r in rollouts:
        if r.ids[-1] in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")):
            continue  # ended on its own within 3 tokens: not truncated
        assert r.truncated and r.n_generated == 3 and len(r.ids) == 3
        assert r.turns == [tok.decode(r.ids, skip_special_tokens=True)]
    assert any(r.truncated for r in rollouts)


def test_unknown_model_is_one_clear_line():
    """(The tests run with HF_HUB_OFFLINE=1: conftest.py.)"""
    with pytest.raises(ModelNotAvailable) as e:
        load_model("no-such-org/no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and "`hf download no-such-org/no-such-model`" in msg
    assert "HF_HUB_OFFLINE=1" in msg


def test_sampling_follows_the_distribution():
    from engine import _sample
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = p.clamp(min=1e-12).log().expand(40_000, -1)
    ids, logp = _sample(logits, 1.0)
    freq = torch.bincount(ids, minlength=5) / 40_000
    assert torch.allclose(freq, p, atol=0.01) and freq[4] == 0      # 0.01 is > 4 standard errors
    assert torch.allclose(logp, p[ids].log())                        # each token's log-prob
    ids, logp = _sample(logits[:3] * 2, 0)                           # temperature 0: argmax,
    assert (ids == 0).all() and torch.allclose(logp, torch.log_softmax(logits[0] * 2, -1)[0])
    # temperature 0.5 samples from q = p^2 / sum(p^2) and reports log q, the distribution it
    # drew from; logits shifted by 100 (exp(100) is past fp32's range) give the same: the max
    # is taken out
    ids, logp = _sample(logits + 100, 0.5)
    freq, q = torch.bincount(ids, minlength=5) / 40_000, p ** 2 / (p ** 2).sum()
    assert torch.allclose(freq, q, atol=0.01) and freq[4] == 0
    assert torch.allclose(logp, q[ids].log(), atol=1e-5)


def test_growing_kv_matches_concatenation_across_growth_repeat_and_drop():
    from engine import GrowingKV
    torch.manual_seed(0)
    layer, ref_k, ref_v = GrowingKV(), None, None

    def step(n_new):
        nonlocal ref_k, ref_v
        rows = 1 if ref_k is None else ref_k.shape[0]
        k, v = torch.randn(2, rows, 3, n_new, 4).unbind(0)        # (rows, kv_heads, n, head_dim)
        ref_k = k if ref_k is None else torch.cat([ref_k, k], 2)
        ref_v = v if ref_v is None else torch.cat([ref_v, v], 2)
        keys, values = layer.update(k, v)
        assert torch.equal(keys, ref_k) and torch.equal(values, ref_v)

    step(200)                                   # room 456
    layer.batch_repeat_interleave(4)
    ref_k, ref_v = ref_k.repeat_interleave(4, 0), ref_v.repeat_interleave(4, 0)
    for n in (1, 100, 1, 300, 1):               # grows twice
        step(n)
    keep = torch.tensor([0, 2, 3])
    layer.batch_select_indices(keep)
    ref_k, ref_v = ref_k[keep], ref_v[keep]
    assert torch.equal(layer.keys, ref_k) and layer.get_seq_length() == 603
    for n in (1, 200):                          # and once more after the drop
        step(n)


def test_shared_prefix_attention_equals_attention_over_the_concatenation():
    """The prompt part once for all rows + each row's own part == SDPA over [prompt; row], with
    the CPU's fused kernel (two parts merged by log-sum-exp) and with plain matmuls."""
    import types
    import torch.nn.functional as F
    import engine
    torch.manual_seed(0)
    n, kvh, g, w, L, P, d = 3, 2, 3, 4, 6, 5, 8             # 3 query heads per kv head
    q = torch.randn(n, kvh * g, w, d)
    k, v = torch.randn(n, kvh, L, d), torch.randn(n, kvh, L, d)
    pk, pv = torch.randn(kvh, P, d), torch.randn(kvh, P, d)
    mask = torch.ones(w, L, dtype=torch.bool).tril(L - w).repeat(n, 1, 1, 1)  # causal chunk
    mask[1, ..., :2] = False                                                 # row 1: holes
    mask[2, :, 0] = False          # row 2: a pad query that sees none of its own keys ...
    layer = types.SimpleNamespace(layer_idx=1)
    for flash in (True, False):
        for m in (mask, None):
            real = engine.attend
            engine.attend = lambda *a: real(*a, flash=flash)
            try:
                out, _ = engine.shared_prefix_attention(layer, q, k, v, m, d ** -0.5,
                                                        [None, (pk, pv)])
            finally:
                engine.attend = real
            full_k = torch.cat([pk.expand(n, -1, -1, -1), k], 2).repeat_interleave(g, 1)
            full_v = torch.cat([pv.expand(n, -1, -1, -1), v], 2).repeat_interleave(g, 1)
            own = (mask if m is not None else mask[:1].expand(n, -1, -1, -1)).clone()
            own[2, :, 0, L - w] = True                                  # ... but its own position
            full_m = torch.cat([torch.ones(n, 1, w, P, dtype=torch.bool), own], -1)
            ref = F.scaled_dot_product_attention(q, full_k, full_v, attn_mask=full_m)
            assert out.shape == (n, w, kvh * g, d)
            assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5), (flash, m is None)


def test_split_flash_attention_has_the_gradient_of_the_plain_attention():
    """engine.SplitFlashAttention's backward (the fused kernel's, fed the merged output and
    log-sum-exp) == autograd through attend's plain matmuls: gradients of the queries, the
    rows' own keys and values and the shared prompt's, in fp32 and bf16."""
    import engine
    torch.manual_seed(0)
    n, kvh, g, w, L, P, d = 3, 2, 3, 5, 5, 7, 8
    ok = torch.ones(w, L, dtype=torch.bool).tril().repeat(n, 1, 1, 1)        # causal, own part
    ok[1, ..., 3:] = False                                                   # row 1: right pad
    bias = engine.additive_mask(ok, torch.float32)
    leaves = [torch.randn(n, kvh * g, w, d), torch.randn(n, kvh, L, d), torch.randn(n, kvh, L, d),
              torch.randn(kvh, P, d), torch.randn(kvh, P, d)]
    weight = torch.randn(n, w, kvh * g, d)                   # a loss that weighs every output
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 0.03)):
        grads = {}
        for flash in (True, False):
            x = [t.to(dtype).clone().requires_grad_() for t in leaves]
            out = engine.attend(x[0], x[1], x[2], (x[3], x[4]), bias.to(dtype), d ** -0.5, flash)
            (out.float() * weight).sum().backward()
            grads[flash] = [t.grad.float() for t in x]
        for a, b in zip(grads[True], grads[False]):
            assert (a - b).abs().max() <= tol * b.abs().max(), dtype


def test_hand_written_decode_step_equals_the_models_forward(student):
    """engine.decode_forward (fused weights, by hand) against the model's own forward through
    the same cache, step by step: a prefill of ragged tails, one-token steps, and chunks of
    several tokens with left padding (a tool response going in), on the real student (fp32
    and bf16), a tiny Qwen2 (q/k/v biases) and a tiny Llama (every bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from engine import DecodeWeights, feed, prefill
    tok, smol = student
    torch.manual_seed(0)
    small = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5)
    qwen = Qwen2ForCausalLM(Qwen2Config(**small)).eval()
    biased = LlamaForCausalLM(LlamaConfig(attention_bias=True, mlp_bias=True, **small)).eval()
    for name, p in list(qwen.named_parameters()) + list(biased.named_parameters()):
        if name.endswith("bias"):
            torch.nn.init.normal_(p.data)                   # initialised to 0: would hide one
    prompt = torch.randint(100, 5000, (40,)).tolist()
    tails = [prompt[30:], prompt[30:33], [7]]
    steps = [[[5], [6], [7]], [[8, 9, 10], [], [11]], [[12], [13, 14], [15, 16, 17, 18]], [[1]] * 3]
    import copy
    for model, tol in ((smol, 1e-5), (copy.deepcopy(smol).to(torch.bfloat16), 0.03), (qwen, 1e-5), (biased, 1e-5)):
        assert DecodeWeights.of(model) is not None
        with torch.inference_mode():
            (fast, a), (plain, b) = (prefill(model, prompt[:30], tails, fused) for fused in (True, False))
            for chunks in [None] + steps:
                if chunks:
                    a, b = feed(model, fast, chunks), feed(model, plain, chunks)
                scale = b.float().abs().max()
                assert (a.float() - b.float()).abs().max() <= tol * scale, model.dtype
        assert torch.equal(fast.n_real, plain.n_real)


def test_greedy_rollouts_match_a_plain_forward_on_qwen_architectures(student, math_suite):
    """The rollout's cache layout and attention on tiny random Qwen2 (qkv bias) and Qwen3
    (q/k norm) models, the families of the --student Qwen presets."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
    tok, _ = student
    small = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                 initializer_range=0.5)          # peaked attention: a wrong one shows
    problems = math_suite.split("test")[:2]
    for cls, cfg in ((Qwen2ForCausalLM, Qwen2Config(**small)),
                     (Qwen3ForCausalLM, Qwen3Config(head_dim=8, **small))):
        torch.manual_seed(0)
        model = cls(cfg).eval()
        rollouts = generate_rollouts(model, tok, problems, math_suite.tools, math_suite.schemas,
                                     group_size=2, max_new_tokens=12, max_total_tokens=12,
                                     temperature=0)
        for r in rollouts:
            ids = torch.tensor([r.prompt_ids + r.ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0]
            P = len(r.prompt_ids)
            for t in range(len(r.ids)):
                if r.mask[t]:
                    row = logits[P + t - 1]
                    assert row[r.ids[t]] >= row.max() - 1e-4, (cls.__name__, t)


def test_advance_one_row_by_hand(student, math_suite):
    """The per-row step: sampled tokens get mask 1 and the turn goes on; at </tool_call> the
    tool runs and its response is appended with mask 0; a final answer ends the row."""
    from model import stop_token_ids
    from rollout import Env, Rollout, advance
    tok, model = student
    env = Env(tok, math_suite.tools, set(stop_token_ids(tok, model)),
              tok.convert_tokens_to_ids("<|im_end|>"), max_turns=5, max_new_tokens=64,
              max_total_tokens=200)
    r = Rollout({"question": "6 * 7?", "answer": "42", "teacher_tools": ["multiply"]}, [1, 2])
    call = tok(CALL, add_special_tokens=False).input_ids
    for t in call[:-1]:
        assert advance(r, t, env) == [t]                 # mid-turn: feed the token itself
    fed = advance(r, call[-1], env)                      # '</tool_call>' is complete
    inserted = [env.im_end] + between_turns_ids(tok, [r.responses[0][0]])
    assert fed == [call[-1]] + inserted
    assert '"result": 42' in r.responses[0][0] and r.turns == [tok.decode(call)]
    assert r.ids == call + inserted and r.mask == [1] * len(call) + [0] * len(inserted)
    answer = tok("The answer is \\boxed{42}.", add_special_tokens=False).input_ids
    for t in answer:
        assert advance(r, t, env) == [t]
    assert advance(r, env.im_end, env) is None           # <|im_end|> after no call: done
    assert r.mask[-len(answer) - 1:] == [1] * (len(answer) + 1) and not r.truncated
    assert r.n_generated == len(call) + len(answer) + 1 and len(r.turns) == 2


def test_advance_truncates_and_stops_at_max_turns(student, math_suite):
    from model import stop_token_ids
    from rollout import Env, Rollout, advance
    tok, model = student
    env = Env(tok, math_suite.tools, set(stop_token_ids(tok, model)),
              tok.convert_tokens_to_ids("<|im_end|>"), max_turns=1, max_new_tokens=4,
              max_total_tokens=100)
    r = Rollout({"question": "q", "answer": "1", "teacher_tools": []}, [1])
    word = tok("hello", add_special_tokens=False).input_ids[0]
    assert [advance(r, word, env) for _ in range(4)] == [[word]] * 3 + [None]
    assert r.truncated and r.mask == [1] * 4
    env.max_new_tokens = 64
    r = Rollout({"question": "q", "answer": "42", "teacher_tools": []}, [1])
    call = tok(CALL, add_special_tokens=False).input_ids
    results = [advance(r, t, env) for t in call]
    assert results[-1] is None and r.responses == []     # max_turns=1: the call is not run
    assert not r.truncated and r.tool_calls == []        # names are filled in by generate_rollouts


def test_packed_linear_equals_f_linear():
    """engine.Linear: where it packs the weight for oneDNN (a CPU: fp32, and bf16 where
    native) its output equals F.linear's up to rounding (bf16: 8 bits of mantissa; fp32: 24,
    summed in another order), with and without bias, on 2-D and 3-D inputs; unpacked it is
    F.linear itself."""
    from engine import Linear
    torch.manual_seed(0)
    mkldnn = torch.backends.mkldnn.is_available()
    for dtype, packs, tol in ((torch.bfloat16, torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                               2 ** -7), (torch.float32, True, 1e-5)):
        weight, bias = torch.randn(96, 64, dtype=dtype), torch.randn(96, dtype=dtype)
        for b in (None, bias):
            lin = Linear(weight, b)
            assert (lin.packed is not None) == (mkldnn and packs)
            for shape in ((1, 64), (32, 64), (5, 3, 64)):
                x = torch.randn(shape, dtype=dtype)
                out, ref = lin(x).float(), F.linear(x, weight, b).float()
                assert out.shape == ref.shape
                if lin.packed is None:
                    assert torch.equal(out, ref)
                else:
                    assert (out - ref).abs().max() <= tol * ref.abs().max()


def test_the_first_load_leaves_the_seeded_rng_alone(tmp_path, monkeypatch):
    """De-quantising the embedded GGUF (a fresh machine's first load) copies it into a randomly
    initialised model: that must not draw from the seeded RNG, or a machine's first `make train`
    would be another run than every rerun of its seed (seen: a 2-step run, rollouts apart)."""
    import model
    monkeypatch.setattr(model, "CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    folder, _ = model.resolve("SmolLM2-135M")
    assert folder.startswith(str(tmp_path)) and os.path.exists(os.path.join(folder, "config.json"))
    assert torch.equal(torch.get_rng_state(), before)
