"""How it is made fast: skip this file on a first reading.

The method needs two things from a model, and this module gives them behind two calls:

    generate(model, prompts, group_size, advance, temperature)   # rollout.py samples with it
    backward(model, batch, loss_fn, dtype) / logprobs(model, batch, dtype)  # train.py's losses

Both would be a few lines with a plain forward per token / per sequence
(`reference_logprobs` is the one for log-probs); what is here only makes them cheaper
or smaller, and tests pin each fast path against the plain computation
(tests/test_rollout.py, tests/test_train_loss.py, tests/test_gpu_path.py).

Generation (`generate`). Every row starts with the same system prompt (the
tool schemas, ~850 tokens). It is run once and its KV kept once
(`attend` reads it once per step for all rows); each question's
tail is run once and its cache repeated for the G samples of its group. Every
step feeds each row its new tokens (the sampled token, or the next piece of a
tool response) as one left-padded chunk, so the logits needed are all at the
last position. Padding holes inside the cache are masked out and positions are
explicit, so each row sees exactly its own sequence. The cache is written in
place (GrowingKV); finished rows leave it. For Llama and Qwen2 students a step is
`decode_forward`, their forward written by hand with fewer, larger operators (a CPU pays
microseconds per operator); other models run transformers' forward on the same cache.

Log-probs (`logprobs`, `backward`). The shared system prompt of a batch is
run once as a `SharedPrefix`; micro-batches read its keys and values (on a CPU
once for all rows, through `attend` and `SplitFlashAttention`, its gradient by
hand). Gradients they send into it accumulate on detached leaves, and one
backward pass through the prefix at the end gives the exact gradient of a plain
forward over the full sequences.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from model import autocast

# Tokens fed per generation step across the batch when rows have a tool response to feed.
FEED_TOKENS_PER_STEP = 32
# Positions whose logits exist at once in a loss forward or backward (token_logprobs):
# 1024 x 151,936 x 4 bytes = 0.6 GB for Qwen. The cpu preset's micro-batches (4 rows of at
# most 192 generated tokens) fit in one chunk, where the chunking changes nothing.
LOGITS_CHUNK = 1024


# ----------------------------------------------------------------------------
# Generation

def _sample(logits, temperature):
    """(N, V) logits -> (N,) token ids drawn from softmax(logits / temperature), and (N,) their
    log-probs under that same distribution: the policy that acted, whose log-probs the loss
    takes too (train.py records these as the sampler's). temperature 0: greedy, log-probs at 1.
    Inverse-CDF sampling: one uniform number per row, 5x cheaper than torch.multinomial,
    which draws V exponentials per row. The CDF is of exp((logits - max) / T) left
    unnormalised (u is drawn up to its total), and that total gives the log-sum-exp of
    logits / T: two passes over (N, V) fewer than softmax then logsumexp (32 x 49,152: 6.1-6.3
    against 8.7-10.1 ms, AVX-512 EPYC)."""
    logits = logits.float()
    if temperature == 0:
        ids = logits.argmax(-1)
        return ids, logits.gather(1, ids[:, None])[:, 0] - logits.logsumexp(-1)
    m = logits.amax(-1, keepdim=True)                                  # (N, 1)
    x = logits - m
    cdf = (x if temperature == 1 else x.div_(temperature)).exp_().cumsum(-1)       # (N, V)
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]      # (N, 1) in [0, total)
    # first token whose cdf exceeds u (right=True never picks a zero-probability token)
    ids = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    lse = m[:, 0] / temperature + cdf[:, -1].log()                     # logsumexp(logits / T)
    return ids, logits.gather(1, ids[:, None])[:, 0] / temperature - lse


def shared_prefix_length(prompts, lengths):
    """Tokens every prompt starts with (the system prompt), leaving each row at least one
    token after them: at most min(lengths) - 1, lengths being the rows' full lengths."""
    n = min(min(map(len, prompts)), min(lengths) - 1)
    for i in range(n):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return n


class GrowingKV(DynamicLayer):
    """One layer's KV cache in a buffer with room to grow, written in place.

    transformers' DynamicLayer torch.cat-s the whole cache on every decode
    step; with the 900-token tool prompt that copy was half the rollout time.
    `keys`/`values` are views of the filled part of (rows, kv_heads, room, head_dim)
    buffers; a full buffer is copied into one with 256 more slots.
    """

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.is_initialized, self.device = True, key_states.device
            self._use(key_states[:, :, :0], value_states[:, :, :0], 0)
        old, n = self.length, key_states.shape[-2]
        if old + n > self.kbuf.shape[-2]:
            room = old + n + 256             # a copy every 256 tokens, not every token
            self._use(_with_room(self.keys, room), _with_room(self.values, room), old)
        self.kbuf[:, :, old:old + n] = key_states
        self.vbuf[:, :, old:old + n] = value_states
        self._use(self.kbuf, self.vbuf, old + n)
        return self.keys, self.values

    def _use(self, kbuf, vbuf, length):
        self.kbuf, self.vbuf, self.length = kbuf, vbuf, length
        self.keys, self.values = kbuf[:, :, :length], vbuf[:, :, :length]

    def batch_repeat_interleave(self, repeats):
        self._use(self.kbuf.repeat_interleave(repeats, 0), self.vbuf.repeat_interleave(repeats, 0),
                  self.length)

    def batch_select_indices(self, indices):  # compacts the kept rows in place
        m, n = len(indices), self.length
        self.kbuf[:m, :, :n] = self.keys.index_select(0, indices)
        self.vbuf[:m, :, :n] = self.values.index_select(0, indices)
        self._use(self.kbuf[:m], self.vbuf[:m], n)


def _with_room(x, room):
    """(n, h, L, d) -> (n, h, room, d) buffer whose first L slots hold x."""
    buf = x.new_empty(*x.shape[:2], room, x.shape[3])
    buf[:, :, :x.shape[2]] = x
    return buf


def attend(query, key, value, shared, bias, scaling, flash=None):
    """Attention over [system prompt ; the row's own tokens], the prompt's keys read once.

    Every row starts with the same system prompt (with 12 tool schemas, ~850 of
    a row's ~950 prompt tokens). Kept once instead of once per row, its keys
    and values are read once per step for all rows (with one copy per row,
    attention was 60% of a tool-prompt rollout).

        query: (n, h, w, d)   key, value: (n, kvh, L, d), the rows' own cache
        shared: ((kvh, P, d), (kvh, P, d)), the system prompt's keys and values
        bias: (n, 1, w, L) additive mask on the own cache: 0 attend, -inf not; every
              query attends at least to its own position
    Returns (n, w, h, d). flash (default: on a CPU) runs the two parts through torch's fused
    CPU attention kernel, each with its log-sum-exp, and merges them (no copy of the cache:
    a 32-row step 84 -> 67 ms here), with a gradient (SplitFlashAttention) for the loss pass;
    else they are plain matmuls under one softmax.
    """
    n, h, w, d = query.shape
    kvh, g = key.shape[1], h // key.shape[1]                # query heads per kv head
    q = query.reshape(n, kvh, g * w, d)                     # head j reads kv head j // g
    bias = bias[:, :, None].expand(n, 1, g, w, -1).reshape(n, 1, g * w, -1)
    pk, pv = shared
    if query.device.type == "cpu" if flash is None else flash:
        dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
        out = SplitFlashAttention.apply(*(x.to(dt) for x in (q, key, value, pk, pv, bias)),
                                        scaling)                # in autocast's dtype, as SDPA
    else:
        P = pk.shape[1]
        q_all = q.transpose(0, 1).reshape(kvh, n * g * w, d)    # every row's queries, per kv head
        s_prompt = (q_all @ pk.transpose(1, 2)).view(kvh, n, g * w, P).transpose(0, 1)
        s_own = q @ key.transpose(2, 3) + bias                  # (n, kvh, g*w, L)
        p = torch.softmax(torch.cat([s_prompt, s_own], -1).float() * scaling, -1).to(value.dtype)
        p_prompt = p[..., :P].transpose(0, 1).reshape(kvh, n * g * w, P)
        out = (p_prompt @ pv).view(kvh, n, g * w, d).transpose(0, 1) + p[..., P:] @ value
    return out.reshape(n, h, w, d).transpose(1, 2)


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu   # -> (out, logsumexp)
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _all_rows(x):
    """(n, kvh, m, ...) per row -> (1, kvh, n * m, ...): every row's queries as one batch."""
    return x.transpose(0, 1).reshape(1, x.shape[1], -1, *x.shape[3:])


def _per_row(x, n):
    """_all_rows undone: (1, kvh, n * m, ...) -> (n, kvh, m, ...)."""
    return x[0].view(x.shape[1], n, -1, *x.shape[3:]).transpose(0, 1)


class SplitFlashAttention(torch.autograd.Function):
    """attend's CPU path: the prompt part and the own part through torch's fused kernel, each
    returning its log-sum-exp, merged exactly (softmax over the union), and its gradient.

    q: (n, kvh, g*w, d); key, value: (n, kvh, L, d); pk, pv: (kvh, P, d); bias: (n, kvh or 1,
    g*w, L) -> (n, kvh, g*w, d). The kernel's log-sum-exp carries no gradient, so autograd
    cannot differentiate the merge; backward does it by hand. With the merged output and
    log-sum-exp the kernel's own backward recomputes each part's probabilities as shares of
    the full softmax and uses the full rowsum(dO * O), so each part's call gives that part's
    exact gradient (as ring attention's backward treats each block); the queries' parts add up.
    """

    @staticmethod
    def forward(ctx, q, key, value, pk, pv, bias, scaling):
        o1, lse1 = _FLASH_CPU(_all_rows(q), pk[None], pv[None], scale=scaling)
        o2, lse2 = _FLASH_CPU(q, key, value, attn_mask=bias, scale=scaling)
        o1, lse1 = _per_row(o1, len(q)), _per_row(lse1, len(q))
        lse = torch.logaddexp(lse1, lse2)                       # (n, kvh, g*w)
        out = (o1 * (lse1 - lse).exp()[..., None] + o2 * (lse2 - lse).exp()[..., None]).to(q.dtype)
        ctx.save_for_backward(q, key, value, pk, pv, bias, out, lse)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, dout):
        q, key, value, pk, pv, bias, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        dq1, dpk, dpv = _FLASH_CPU_BACKWARD(*map(_all_rows, (dout, q)), pk[None], pv[None],
                                            *map(_all_rows, (out, lse)), 0.0, False,
                                            scale=ctx.scaling)
        dq2, dkey, dvalue = _FLASH_CPU_BACKWARD(dout, q, key, value, out, lse.contiguous(), 0.0,
                                                False, attn_mask=bias, scale=ctx.scaling)
        dq = _per_row(dq1, len(q)) + dq2
        return dq, dkey, dvalue, dpk[0], dpv[0], None, None


def additive_mask(ok, dtype):
    """(n, 1, w, L) bool (True: attend) over a cache whose last w positions are the queries'
    -> `attend`'s bias (0 / -inf), each query's own position always in (a left pad's query
    would otherwise attend to nothing; its output is never used)."""
    w, L = ok.shape[-2:]
    diag = torch.arange(w, device=ok.device)
    ok = ok.clone()
    ok[..., diag, diag + L - w] = True
    return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(~ok, float("-inf"))


def own_bias(attn, w, dtype):
    """(n, L) 1 = real token, 0 = hole -> (n, 1, w, L) bias for the last w positions: causal,
    holes out (additive_mask)."""
    L = attn.shape[1]
    causal = torch.ones(w, L, dtype=torch.bool, device=attn.device).tril(L - w)
    return additive_mask(attn.bool()[:, None, None, :] & causal, dtype)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling, shared_kv,
                            **_):
    """`attend` as a transformers attention function: attention_mask (n, 1, w, L) bool (True:
    attend) or None (causal). Returns (n, w, h, d) and no weights."""
    n, _, w, _ = query.shape
    if attention_mask is None:
        attention_mask = torch.ones(n, 1, w, key.shape[2], dtype=torch.bool,
                                    device=query.device).tril(key.shape[2] - w)
    bias = additive_mask(attention_mask, torch.float32)
    return attend(query, key, value, shared_kv[module.layer_idx], bias, scaling), None


@contextmanager
def shared_prefix_attention_on(model):
    """Run `model` with shared_prefix_attention inside the block (registered on first use)."""
    if "shared_prefix" not in AttentionInterface._global_mapping:
        AttentionInterface.register("shared_prefix", shared_prefix_attention)
        AttentionMaskInterface.register("shared_prefix", sdpa_mask)  # (n, 1, w, L) bool masks
    old = model.config._attn_implementation
    model.config._attn_implementation = "shared_prefix"
    try:
        yield
    finally:
        model.config._attn_implementation = old


@dataclass
class KVBatch:
    """The rows being generated: the shared prompt's KV once, then each row's own cache.

    cache: GrowingKV layers (n, kvh, L, d); attn: (n, L) 0 marks holes (padding);
    n_real: (n,) tokens of each row so far, the shared prompt's included (its next position).
    weights: DecodeWeights, the hand-written forward's (None: the model's own forward).
    """
    shared_kv: list
    cache: Cache
    attn: torch.Tensor
    n_real: torch.Tensor
    weights: "DecodeWeights" = None

    def keep(self, idx):
        """Keep rows idx (a sorted (m,) tensor), in place."""
        self.cache.batch_select_indices(idx)
        self.attn, self.n_real = self.attn[idx], self.n_real[idx]

    def repeat(self, times):
        self.cache.batch_repeat_interleave(times)
        self.attn, self.n_real = (x.repeat_interleave(times, 0) for x in (self.attn, self.n_real))


def prefill(model, prompt_ids, tails, fused=True):
    """Run the shared prompt once (kept apart) and then each row's own tail, batched.

    Returns (KVBatch, (n, V) logits after each tail); every tail needs at least one token.
    fused: feed with the hand-written forward (decode_forward) where the model allows it.
    """
    dev = model.device
    prompt_cache = DynamicCache()
    model(input_ids=torch.tensor([prompt_ids], device=dev), cache=prompt_cache, use_cache=True,
          logits_to_keep=1)
    shared_kv = [(layer.keys[0], layer.values[0]) for layer in prompt_cache.layers]
    batch = KVBatch(shared_kv, Cache(layer_class_to_replicate=GrowingKV),
                    torch.ones(len(tails), 0, dtype=torch.long, device=dev),
                    torch.full((len(tails),), len(prompt_ids), device=dev),
                    DecodeWeights.of(model) if fused else None)
    return batch, feed(model, batch, tails)


def feed(model, batch, chunks):
    """Run one chunk of new tokens per row, left-padded to a common width -> (n, V) logits
    after each row's last token. Pads are masked out, so their id (0) does not matter."""
    width, dev = max(map(len, chunks)), batch.attn.device
    host = torch.zeros(2, len(chunks), width, dtype=torch.long)   # ids, chunk mask: built on
    for k, c in enumerate(chunks):                                 # the host, then one copy
        if c:
            host[0, k, width - len(c):] = torch.tensor(c)
            host[1, k, width - len(c):] = 1
    ids, cmask = host.to(dev)
    pos = (batch.n_real[:, None] + cmask.cumsum(1) - 1).clamp(min=0)  # (n, width); pads: masked
    batch.attn = torch.cat([batch.attn, cmask], 1)
    # logits only at the last position. An index tensor, not logits_to_keep=1: the int's
    # slice leaves a strided (n, 1, H) view when width > 1, and the vocabulary projection
    # of a strided 3-D input copies the weight once per row (300 ms a step here)
    if batch.weights is not None:
        logits = decode_forward(batch.weights, ids, pos, batch)
    else:
        last = torch.full((1,), width - 1, device=dev)
        with shared_prefix_attention_on(model):
            logits = model(input_ids=ids, attention_mask=batch.attn, position_ids=pos,
                           cache=batch.cache, use_cache=True, logits_to_keep=last,
                           shared_kv=batch.shared_kv).logits[:, -1]
    batch.n_real = batch.n_real + cmask.sum(1)
    return logits


class DecodeWeights:
    """A Llama or Qwen2 model's weights as decode_forward reads them: q, k and v stacked
    into one matrix and gate and up into another, so a layer is 4 matmuls instead of 7.
    Built per generate() call (a copy of the decoder's matmul weights, packed on a CPU:
    0.1-0.17 s for 135M in bf16, 0.3 s in fp32)."""

    ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")

    @classmethod
    def of(cls, model):
        """The model's DecodeWeights, or None where decode_forward does not reproduce its
        forward (another architecture, a sliding window, a wrapper): the model's own runs."""
        cfg = getattr(model, "config", None)
        if type(model).__name__ not in cls.ARCHITECTURES or cfg.hidden_act != "silu" \
                or getattr(cfg, "use_sliding_window", False) \
                or getattr(cfg, "pretraining_tp", 1) != 1:
            return None
        return cls(model)

    def __init__(self, model):
        dec, cfg = model.get_decoder(), model.config
        self.layers = []
        for layer in dec.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight,
                                Linear.stacked(a.q_proj, a.k_proj, a.v_proj),
                                Linear(a.o_proj.weight, a.o_proj.bias),
                                layer.post_attention_layernorm.weight,
                                Linear.stacked(m.gate_proj, m.up_proj),
                                Linear(m.down_proj.weight, m.down_proj.bias)))
        self.embed, self.norm = dec.embed_tokens.weight, dec.norm.weight
        self.head = Linear(model.get_output_embeddings().weight)
        self.rotary = dec.rotary_emb
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps, self.intermediate = cfg.rms_norm_eps, cfg.intermediate_size


class Linear:
    """x @ weight.T + bias as decode_forward calls it. On a CPU (fp32, or bf16 where native)
    the weight is also packed once (per generate() call) into oneDNN's blocked layout, where
    F.linear passes it row-major on every call: in bf16 a tool-prompt decode step of 32 rows
    took 76 ms against 87, of one row 42 against 52 (medians of 4 interleaved runs, AVX-512
    Xeon); in fp32 a 32-row rollout ran 20-30% faster, also with the instruction set capped to
    AVX2 (AVX-512 EPYC, 2026-12-06). Elsewhere F.linear. tests/test_rollout.py compares them."""

    PACK_ROWS = 32          # the row count oneDNN blocks the packed weight for (any count works)

    def __init__(self, weight, bias=None):
        self.weight, self.bias, self.packed = weight, bias, None
        if weight.device.type == "cpu" and torch.backends.mkldnn.is_available() \
                and (weight.dtype == torch.float32 or weight.dtype == torch.bfloat16
                     and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, self.PACK_ROWS)

    @classmethod
    def stacked(cls, *linears):
        """nn.Linear-s with one input as one Linear, their outputs stacked."""
        bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
        return cls(torch.cat([lin.weight for lin in linears]), bias)

    def __call__(self, x):
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _rms_norm(x, weight, eps):
    """Llama's RMSNorm: normalised in fp32, cast back, then scaled."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(weight.dtype) * weight


def _rotate_half(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)


def decode_forward(wt, ids, pos, batch):
    """The model's forward over (n, w) new tokens by hand (Llama / Qwen2 layers), writing
    their keys and values into batch.cache -> (n, V) logits at the last position.

    Same arithmetic as transformers' modules (tests/test_rollout.py compares the logits), in
    ~20 operators a layer: each of transformers' module calls, dtype casts and mask
    builds costs a CPU a few microseconds, and a decode step is ~30 layers of them.
    """
    n, w = ids.shape
    h, kvh, d = wt.heads, wt.kv_heads, wt.head_dim
    x = F.embedding(ids, wt.embed)                                  # (n, w, H)
    cos, sin = (c[:, None] for c in wt.rotary(x, pos))              # (n, 1, w, d)
    bias = own_bias(batch.attn, w, x.dtype)                         # (n, 1, w, L)
    for i, (ln1, qkv_proj, o_proj, ln2, gate_up_proj, down_proj) in enumerate(wt.layers):
        qkv = qkv_proj(_rms_norm(x, ln1, wt.eps))
        qkv = qkv.view(n, w, h + 2 * kvh, d).transpose(1, 2)         # (n, heads, w, d)
        qk = qkv[:, :h + kvh]
        qk = qk * cos + _rotate_half(qk) * sin                      # rotary, q and k at once
        key, value = batch.cache.update(qk[:, h:], qkv[:, h + kvh:], i)   # (n, kvh, L, d)
        o = attend(qk[:, :h], key, value, batch.shared_kv[i], bias, d ** -0.5)
        x = x + o_proj(o.reshape(n, w, h * d))
        gu = gate_up_proj(_rms_norm(x, ln2, wt.eps))
        x = x + down_proj(F.silu(gu[..., :wt.intermediate]) * gu[..., wt.intermediate:])
    return wt.head(_rms_norm(x[:, -1], wt.norm, wt.eps))


def prefill_groups(model, prompts, group_size):
    """The start of a rollout: the prompts' shared prefix once, each prompt's tail once, then
    its cache and next-token logits repeated for the group's rows -> (batch, logits)."""
    P = shared_prefix_length(prompts, [len(p) for p in prompts])
    batch, logits = prefill(model, prompts[0][:P], [p[P:] for p in prompts])
    batch.repeat(group_size)
    return batch, logits.repeat_interleave(group_size, 0)


@torch.inference_mode()
def generate(model, prompts, group_size, advance, temperature=1.0, progress=None):
    """Sample len(prompts) * group_size rows (problem-major: row b * group_size + g).

    advance(row, token, logp) -> the tokens to feed row `row` next (the sampled token
    itself, plus any tool response), or None when the row is done; logp is the token's
    log-prob under the distribution it was drawn from (softmax(logits / temperature)). The rows
    of a group share their first logits (one prefill per question). progress: a tqdm bar
    advanced as each row finishes.
    """
    batch, logits = prefill_groups(model, prompts, group_size)
    active = list(range(len(prompts) * group_size))   # cache row k -> row active[k]
    pending = [[] for _ in active]                    # tokens a row still has to feed
    while True:
        # 1. every row that has fed all its tokens samples one
        ready = [k for k, i in enumerate(active) if not pending[i]]
        keep = [k for k, i in enumerate(active) if pending[i]]
        sampled = [x.tolist() for x in _sample(logits[ready], temperature)] if ready else ([], [])
        for k, t, lp in zip(ready, *sampled):
            tokens = advance(active[k], t, lp)
            if tokens is not None:
                pending[active[k]] = tokens
                keep.append(k)
            elif progress is not None:                # a tqdm bar: one more row finished
                progress.update()
        # 2. finished rows leave the batch and the cache
        keep.sort()
        if len(keep) < len(active):
            if not keep:
                return
            batch.keep(torch.tensor(keep, device=model.device, dtype=torch.long))
            active = [active[k] for k in keep]
        # 3. feed the pending tokens. A tool response goes in over several steps,
        # FEED_TOKENS_PER_STEP tokens per step across the batch (at least one per
        # row), so the other rows are not padded to its length in one big step.
        width = max(1, FEED_TOKENS_PER_STEP // len(active))
        chunks = [pending[i][:width] for i in active]
        for i in active:
            pending[i] = pending[i][width:]
        logits = feed(model, batch, chunks)


# ----------------------------------------------------------------------------
# Log-probs of finished sequences, for the losses

# Devices whose loss pass reads the shared prefix's keys once for all rows (attend). On a GPU,
# attend's plain matmuls would keep (rows, heads, T, P + T) scores per layer for backward;
# SDPA over [prefix ; row] keeps none.
SPLIT_ATTENTION_ON = ("cpu",)


class SharedPrefix:
    """A prefix shared by every row of a batch (the system prompt), run once.

    Micro-batches read its keys and values (run()); gradients they send into
    them accumulate on detached leaves, and backward() pushes the sum through
    the prefix in one pass. The result is
    the exact gradient of a forward over the full sequences, with the prefix
    computed once per batch instead of once per row.
    """

    def __init__(self, model, ids, detach=True):
        with checkpointing_off(model):                        # its cache is written: no re-run
            out = model.get_decoder()(input_ids=ids[None], use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        self.roots = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        self.roots.append(out.last_hidden_state[:, -1:])     # (1, 1, H): predicts the next token
        # detach=False: gradients flow straight through (no backward() needed, no saving)
        self.leaves = [r.detach().requires_grad_(r.requires_grad) for r in self.roots] if detach \
            else self.roots
        self.length = len(ids)

    def run(self, model, ids, attention_mask):
        """(N, T) right-padded ids after the prefix -> the decoder's (N, T, H) last hidden
        states. Where the prefix's keys are read once for all rows (SPLIT_ATTENTION_ON: attend,
        with SplitFlashAttention's gradient), else through SDPA over [prefix ; row] with the
        prefix's KV repeated to N rows without a copy (PrefixKV). Also SDPA under gradient
        checkpointing: its re-run in backward is outside shared_prefix_attention_on."""
        N, T = ids.shape
        decoder = model.get_decoder()
        kv = list(zip(self.leaves[:-1:2], self.leaves[1:-1:2]))  # (1, kv_heads, P, head_dim) each
        if ids.device.type in SPLIT_ATTENTION_ON and not model.is_activation_checkpointing:
            pos = self.length + torch.arange(T, device=ids.device).expand(N, T)
            with shared_prefix_attention_on(model):
                return decoder(input_ids=ids, attention_mask=attention_mask, position_ids=pos,
                               use_cache=False, shared_kv=[(k[0], v[0]) for k, v in kv]
                               ).last_hidden_state
        full_mask = torch.cat([attention_mask.new_ones(N, self.length), attention_mask], 1)
        cache = Cache(layers=[PrefixKV(k.expand(N, -1, -1, -1), v.expand(N, -1, -1, -1))
                              for k, v in kv])
        return decoder(input_ids=ids, attention_mask=full_mask, cache=cache,
                       use_cache=False).last_hidden_state       # PrefixKV: read, never written

    def last_hidden(self, n):
        return self.leaves[-1].expand(n, 1, -1)

    def backward(self):
        grads = [(r, leaf.grad) for r, leaf in zip(self.roots, self.leaves)
                 if leaf is not r and leaf.grad is not None]
        if grads:
            torch.autograd.backward([r for r, _ in grads], [g for _, g in grads])


class PrefixKV(DynamicLayer):
    """One layer's shared-prefix KV as a micro-batch reads it: update() returns [prefix ; new]
    and stores nothing, so a layer run again in backward (--grad-checkpointing) reads the same."""

    def __init__(self, keys, values):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def set_grad_checkpointing(model, on=True):
    """Keep each decoder layer's input only, and run the layer again in backward (--grad-
    checkpointing): activations ~1/10 the size for ~1/3 more compute. transformers drops the
    cache of a checkpointed layer, since a re-run would write it twice; the micro-batches'
    PrefixKV is read-only, so their layers keep it, and the SharedPrefix runs unchecked."""
    if on:
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
    for layer in model.get_decoder().layers:
        layer._can_checkpoint_with_cache = on


@contextmanager
def checkpointing_off(model):
    """No gradient checkpointing inside the block (the decoder's and its layers' flags)."""
    modules = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    for m in modules:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in modules:
            m.gradient_checkpointing = True


def logprobs_from_logits(logits, targets, temperature=1.0):
    """(M, V) logits, (M,) tokens -> (M,) log softmax(logits / temperature)[token], in fp32:
    the distribution the rollout sampled from (TRL and verl divide by T before every log-prob
    of the loss). temperature 1 leaves the logits as they are."""
    logits = logits.float()
    return -F.cross_entropy(logits if temperature == 1 else logits / temperature, targets,
                            reduction="none")


def _logprobs_of(head, h, targets, temperature=1.0):
    """(M, H) hidden states, (M,) next tokens -> (M,) log p(token) at `temperature`, in fp32."""
    return logprobs_from_logits(head(h), targets, temperature)


def token_logprobs(head, h, targets, chunk=LOGITS_CHUNK, temperature=1.0):
    """_logprobs_of over `chunk` positions at a time, so the (M, V) logits never exist at once
    (what fused linear-cross-entropy kernels do). With gradients each chunk's logits are
    recomputed in backward instead of kept (torch.utils.checkpoint): the peak is one chunk's,
    forward or backward. M <= chunk is the plain computation."""
    if len(h) <= chunk:
        return _logprobs_of(head, h, targets, temperature)
    parts = []
    for i in range(0, len(h), chunk):
        args = (head, h[i:i + chunk], targets[i:i + chunk], temperature)
        parts.append(checkpoint(_logprobs_of, *args, use_reentrant=False)
                     if torch.is_grad_enabled() else _logprobs_of(*args))
    return torch.cat(parts)


def reference_logprobs(model, ids, attention_mask, temperature=1.0):
    """The plain computation the fast path below must equal: one forward over whole rows,
    (N, T) ids right-padded -> (N, T) log p(ids[:, t] | ids[:, :t]) at `temperature`, 0 at t = 0
    and on padding."""
    logits = model(input_ids=ids, attention_mask=attention_mask).logits.float()   # (N, T, V)
    lp = torch.log_softmax(logits[:, :-1] / temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]
    return F.pad(lp, (1, 0)) * attention_mask


def sequence_logprobs(model, prefix, ids, attention_mask, needed=None, temperature=1.0):
    """Log-probability of tokens of `ids`, each row preceded by a shared prefix, under
    softmax(logits / temperature).

    Args:
        prefix: a SharedPrefix (run once per batch) or (P,) token ids (run here); may be empty.
        ids: (N, T) right-padded tokens after the prefix.
        attention_mask: (N, T) 1 on real tokens, 0 on right padding.
        needed: (N, T) positions whose log-prob is wanted (default: every real token).
    Returns:
        (N, T) float32: logp[n, t] = log p(ids[n, t] | prefix, ids[n, :t]) where needed, else 0.
    With a (detached) SharedPrefix, call prefix.backward() after the last
    micro-batch's backward. The vocabulary projection runs only on the needed
    positions, LOGITS_CHUNK at a time (the logits are the largest tensor by far).
    """
    N, T = ids.shape
    needed = (attention_mask if needed is None else needed).bool().clone()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if not isinstance(prefix, SharedPrefix) and len(prefix):
        prefix = SharedPrefix(model, prefix, detach=False)
    if isinstance(prefix, SharedPrefix):
        h = prefix.run(model, ids, attention_mask)
        first = prefix.last_hidden(N)                                    # predicts ids[:, 0]
    else:
        h = decoder(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        first = torch.zeros_like(h[:, :1])
        needed[:, 0] = False                          # the first token has no context
    h = torch.cat([first, h[:, :-1]], 1)              # (N, T, H): h[:, t] predicts ids[:, t]
    lp = token_logprobs(head, h[needed], ids[needed], temperature=temperature)    # (M,) needed
    return torch.zeros(N, T, device=ids.device).index_put((needed,), lp)


def pack(seqs, P, pad_id, device):
    """[(prompt_ids, ids, mask, *columns)] -> tokens (N, T), attention (N, T), loss mask (N, T),
    then each further per-token column of ids (the sampler's log-probs) as (N, T).

    The first P prompt tokens, shared by every row (the system prompt), are
    left out (they run once, as a SharedPrefix); the rest of each prompt gets
    loss mask 0 (and 0 in every column).
    """
    rows = [(p[P:] + ids, [[0] * (len(p) - P) + list(c) for c in cols]) for p, ids, *cols in seqs]
    T = max(len(r) for r, _ in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros(len(rows), T, dtype=torch.long)
    columns = torch.zeros(len(seqs[0]) - 2, len(rows), T)           # the loss mask first
    for i, (r, cols) in enumerate(rows):
        tokens[i, :len(r)], attn[i, :len(r)] = torch.tensor(r), 1
        for c, values in enumerate(cols):
            columns[c, i, :len(values)] = torch.tensor(values, dtype=torch.float)
    return tokens.to(device), attn.to(device), *columns.to(device).unbind(0)


def shared_prefix_ids(seqs, device):
    """(P,) the prompt tokens every sequence [(prompt_ids, ids, ...)] starts with."""
    P = shared_prefix_length([p for p, *_ in seqs], [len(p) + len(i) for p, i, *_ in seqs])
    return torch.tensor(seqs[0][0][:P], dtype=torch.long, device=device)


def micro_batches(lengths, size, max_tokens=0):
    """Row indices in micro-batches of at most `size` rows and, if max_tokens, at most
    max_tokens padded tokens (rows x the longest row's length): memory is bounded by
    tokens, not rows. Rows of similar length go together (less padding); a row longer
    than max_tokens is a micro-batch of its own."""
    out = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):   # ascending: row i is the
        fits = out and len(out[-1]) < size and \
            (not max_tokens or (len(out[-1]) + 1) * lengths[i] <= max_tokens)   # longest so far
        if fits:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@dataclass
class MicroBatch:
    rows: list              # indices of its sequences in the batch
    tokens: torch.Tensor    # (n, T) the tokens after the shared prefix, right-padded
    attn: torch.Tensor      # (n, T) 1 on real tokens
    mask: torch.Tensor      # (n, T) loss mask: 1 on tokens the model generated
    sampler_logp: torch.Tensor = None   # (n, T) their log-probs when sampled (rollouts only)


@dataclass
class Batch:
    prefix_ids: torch.Tensor   # (P,) the tokens every sequence starts with (the system prompt)
    micro: list                # [MicroBatch], rows of similar length together
    n_tokens: float            # loss-mask tokens in all micro-batches


def make_batch(seqs, micro_batch, pad_id, device, max_tokens=0):
    """[(prompt_ids, ids, mask[, sampler_logp])] -> Batch, packed once for every pass over it;
    micro-batches of at most micro_batch rows and max_tokens padded tokens (0: no bound)."""
    prefix_ids = shared_prefix_ids(seqs, device)
    P = len(prefix_ids)
    lengths = [len(p) - P + len(ids) for p, ids, *_ in seqs]
    micro = [MicroBatch(idx, *pack([seqs[i] for i in idx], P, pad_id, device))
             for idx in micro_batches(lengths, micro_batch, max_tokens)]
    return Batch(prefix_ids, micro, sum(mb.mask.sum().item() for mb in micro))


def pad_micro_batches(batch, n):
    """Append empty micro-batches (one row, loss mask 0: nothing of it enters a loss) until
    the batch has n: under --fsdp each forward and backward is a collective, so every rank
    must run as many passes (distributed.even_passes)."""
    first = batch.micro[0]
    while len(batch.micro) < n:
        batch.micro.append(MicroBatch(first.rows[:1], first.tokens[:1], first.attn[:1],
                                      torch.zeros_like(first.mask[:1]),
                                      None if first.sampler_logp is None else first.sampler_logp[:1]))
    return batch


@torch.no_grad()
def logprobs(model, batch, dtype, temperature=1.0):
    """[(n, T) log p(token) at `temperature`] per micro-batch, on the loss-mask positions (0
    elsewhere)."""
    with autocast(model, dtype):
        prefix = SharedPrefix(model, batch.prefix_ids)
        return [sequence_logprobs(model, prefix, mb.tokens, mb.attn, mb.mask, temperature)
                for mb in batch.micro]


def backward(model, batch, loss_fn, dtype, temperature=1.0):
    """Accumulate the gradient of the batch's loss into model's .grad.

    loss_fn(k, micro_batch, logp) -> (micro-batch k's part of the batch's loss, {name: its part
    of each metric}), logp at `temperature`; the parts must add up to the batch's loss (each
    micro-batch normalised by the whole batch's counts: train.aggregate). Returns {name: the
    sum of the parts}.
    """
    with autocast(model, dtype):
        prefix = SharedPrefix(model, batch.prefix_ids)          # the system prompt, once per pass
    stats = {}
    for k, mb in enumerate(batch.micro):
        with autocast(model, dtype):
            logp = sequence_logprobs(model, prefix, mb.tokens, mb.attn, mb.mask, temperature)
        loss, m = loss_fn(k, mb, logp)
        loss.backward()
        for name, v in m.items():
            stats[name] = stats.get(name, 0.0) + v
    prefix.backward()
    return stats
