"""Multi-turn tool-calling rollouts with a KV cache, safe tool execution and the loss mask.

The conversation (ChatML, as in the paper's reference code):

    <|im_start|>system  tools as JSON schemas, think in <think>, answer in \\boxed{}<|im_end|>
    <|im_start|>user    question<|im_end|>
    <|im_start|>assistant
    <think>...</think> <tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>
                                        <- generation stops here, we run the tool
    <|im_end|>
    <|im_start|>user
    <tool_response>{"name": "add", "result": 7}</tool_response><|im_end|>
    <|im_start|>assistant
    ... \\boxed{7}<|im_end|>           <- up to max_turns assistant turns

Every token is appended together with its loss-mask bit: 1 for tokens the
model sampled (its closing <|im_end|> included), 0 for the prompt, the
template tokens we insert and the tool responses. Tool responses are
tokenised on their own and appended; the conversation is never re-tokenised.

Generation is batched (B questions x G samples): the shared system prompt is
run once and its KV kept once (shared_prefix_attention reads it once per step
for all rows), each question's tail is run once and its cache repeated for the
G samples. Then every step feeds each row's new tokens (its sampled token, or
the next piece of a tool response) as one left-padded chunk, so the logits
needed are all at the last position. Padding holes inside the cache are
masked out and positions are explicit, so each row sees exactly its own
sequence. The cache is written in place (GrowingKV); finished rows leave it.

Run `python rollout.py` for a demo on the embedded student.
"""
import inspect
import json
import math
import signal
import threading
import time
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tasks import answers_match, extract_boxed

SYSTEM_PROMPT = """You are a helpful assistant that solves problems step by step with tools.

You may call these tools:
<tools>
{tools}
</tools>

Think inside <think>...</think>. To call a tool, write
<tool_call>{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}</tool_call>
and wait: the result comes back inside <tool_response>...</tool_response>.
When you know the answer, write it as \\boxed{{answer}}."""

# Bounds on tool calls: what the model writes can never hang or flood us.
MAX_CALL_CHARS = 10_000      # a longer <tool_call> body is refused unread
MAX_JSON_DEPTH = 20          # deeper nesting is refused before json.loads
TOOL_TIME_LIMIT_S = 1.0      # wall-clock limit of one tool call (call_with_time_limit)
MAX_RESPONSE_CHARS = 2_000   # longer tool results are cut
MAX_NAME_CHARS = 64          # of a tool name echoed in a "too long" error (12 chars per \uXXXX)

# Tokens fed per generation step across the batch when rows have a tool response to feed.
FEED_TOKENS_PER_STEP = 32



def compact_schema(schema):
    """{"type": "function", "function": {...}} -> the function's name, description and
    parameters, without the keys that carry no information here (saves ~20% tokens)."""
    f = schema.get("function", schema)
    params = {k: v for k, v in f.get("parameters", {}).items() if k != "type"}
    return {"name": f["name"], "description": f.get("description", ""), "parameters": params}


def system_prompt(schemas):
    tools = "\n".join(json.dumps(compact_schema(s)) for s in schemas)
    return SYSTEM_PROMPT.format(tools=tools)


def prompt_messages(question, schemas):
    return [{"role": "system", "content": system_prompt(schemas)},
            {"role": "user", "content": question}]


# ----------------------------------------------------------------------------
# Tool calls: parse, check, run. Every failure is a message for the model.

class ToolError(Exception):
    pass


def _json_depth(s):
    depth = best = 0
    for ch in s:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _finite_float(s):
    x = float(s)
    if not math.isfinite(x):
        raise ToolError(f"number {s} is out of range")
    return x


def _no_constant(name):
    raise ToolError(f"{name} is not a valid argument")


def parse_tool_call(body):
    """'{"name": .., "arguments": {..}}' -> (name, arguments); raises ToolError."""
    if len(body) > MAX_CALL_CHARS:
        raise ToolError(f"tool call longer than {MAX_CALL_CHARS} characters")
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise ToolError(f"tool call nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        call = json.loads(body, parse_float=_finite_float, parse_constant=_no_constant)
    except ToolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ToolError(f"tool call is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolError('tool call must be {"name": "<tool>", "arguments": {...}}')
    args = call.get("arguments", {})
    if isinstance(args, str):  # some models send arguments as a JSON string
        if _json_depth(args) > MAX_JSON_DEPTH:   # its \u005b escapes are brackets now
            raise ToolError(f"tool call nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            args = json.loads(args, parse_float=_finite_float, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ToolError('"arguments" is a string that is not valid JSON') from None
    if not isinstance(args, dict):
        raise ToolError('"arguments" must be a JSON object')
    return call["name"], args


def _check_type(value, hint, where):
    """Return value converted to `hint` (int<->float where exact) or raise ToolError."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return value
    if origin is typing.Union or isinstance(hint, types.UnionType):  # Optional[x], x | None
        for h in params:
            try:
                return _check_type(value, h, where)
            except ToolError:
                pass
        raise ToolError(f"{where} has the wrong type")
    if hint is type(None):
        if value is None:
            return None
        raise ToolError(f"{where} must be null")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is float:
        if is_number:
            return float(value)
        raise ToolError(f"{where} must be a number, got {type(value).__name__}")
    if hint is int:
        if is_number and float(value).is_integer():
            return int(value)
        raise ToolError(f"{where} must be an integer, got {value!r}"[:200])
    if hint in (str, bool):
        if type(value) is hint:
            return value
        raise ToolError(f"{where} must be a {hint.__name__}, got {type(value).__name__}")
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ToolError(f"{where} must be a list")
        return [_check_type(v, params[0], f"{where}[{i}]") if params else v
                for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ToolError(f"{where} must be an object")
        return value
    return value  # other annotations are not checked


def bind_arguments(fn, args):
    """Check args against fn's signature and type hints; return the converted kwargs."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    unknown = set(args) - set(sig.parameters)
    if unknown:
        raise ToolError(f"unexpected argument(s) {sorted(unknown)}; "
                        f"{fn.__name__} takes {list(sig.parameters)}")
    kwargs = {}
    for pname, p in sig.parameters.items():
        if pname not in args:
            if p.default is inspect.Parameter.empty:
                raise ToolError(f"missing argument '{pname}'")
            continue
        kwargs[pname] = _check_type(args[pname], hints.get(pname, p.annotation), f"'{pname}'")
    return kwargs


def call_with_time_limit(fn, kwargs, seconds):
    """fn(**kwargs), or ToolError after `seconds` of wall-clock time, from any thread.

    Main thread: SIGALRM interrupts the tool; an alarm the caller had set keeps
    its handler and fires when it was due (at once, if that passed meanwhile).
    Other threads (signals reach only the main one): the tool runs in a daemon
    worker and the caller stops waiting at the deadline. Python cannot kill a
    thread, so a runaway tool goes on in the background until it returns.
    """
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "SIGALRM"):
        box = {}

        def work():
            try:
                box["result"] = fn(**kwargs)
            except Exception as e:       # handed back to the caller below
                box["error"] = e
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            raise ToolError(f"tool call took longer than {seconds} s")
        if "error" in box:
            raise box["error"]
        if "result" not in box:
            raise ToolError("tool call ended without a result")
        return box["result"]

    def on_alarm(signum, frame):
        raise ToolError(f"tool call took longer than {seconds} s")
    t0 = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(**kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:          # the caller's alarm: re-armed for what was left of it
            left = max(old_delay - (time.monotonic() - t0), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def format_value(x):
    if isinstance(x, float) and math.isfinite(x):
        x = round(x, 4)
        return int(x) if x.is_integer() else x
    return x


def execute_tool_call(body, tools):
    """Run one <tool_call> body. Returns (tool name or None, response text); never raises."""
    name = None
    try:
        name, args = parse_tool_call(body)
        if name not in tools:
            raise ToolError(f"unknown tool '{name}'; available: {', '.join(tools)}")
        kwargs = bind_arguments(tools[name], args)
        result = call_with_time_limit(tools[name], kwargs, TOOL_TIME_LIMIT_S)
        text = json.dumps({"name": name, "result": format_value(result)}, allow_nan=False)
    except ToolError as e:
        text = json.dumps({"name": name, "error": str(e)})
    except Exception as e:  # the tool itself failed: its message is the model's feedback
        text = json.dumps({"name": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    if len(text) > MAX_RESPONSE_CHARS:   # the name cut too: it is the model's text
        text = json.dumps({"name": name[:MAX_NAME_CHARS], "error": "result too long"})
    return name, text


def tool_call_bodies(text, open_tag="<tool_call>", close_tag="</tool_call>"):
    """The text inside each <tool_call>...</tool_call> (leftmost, shortest, like a non-greedy
    regex) in linear time: a regex rescans to the end from every unclosed tag (quadratic)."""
    bodies, pos = [], 0
    while (start := text.find(open_tag, pos)) >= 0:
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            break           # no closing tag after this one, so none after any later one
        bodies.append(text[start + len(open_tag):end])
        pos = end + len(close_tag)
    return bodies


def parse_tool_calls(text):
    """Every <tool_call> in text as {"name", "arguments"}, or None where it does not parse."""
    calls = []
    for body in tool_call_bodies(text):
        try:
            name, args = parse_tool_call(body)
            calls.append({"name": name, "arguments": args})
        except ToolError:
            calls.append(None)
    return calls


def tool_names_in(text):
    """Names of the tools a text tries to call, valid or not (None for unparsable calls)."""
    return [c and c["name"] for c in parse_tool_calls(text)]


# ----------------------------------------------------------------------------
# Rollouts

@dataclass
class Rollout:
    problem: dict
    prompt_ids: list                 # chat-template prompt tokens
    ids: list = field(default_factory=list)    # everything after the prompt
    mask: list = field(default_factory=list)   # 1 where the model generated ids[i]
    turns: list = field(default_factory=list)  # text the model generated, per turn
    responses: list = field(default_factory=list)  # tool responses after each turn
    tool_calls: list = field(default_factory=list)  # every tool name it tried (None: unparsable)
    text: str = ""                   # the whole completion, tool responses included
    answer: str = None               # last \boxed{} in the generated text
    truncated: bool = False          # cut off by max_new_tokens / max_total_tokens
    n_generated: int = 0

    @property
    def correct(self):
        return answers_match(self.answer, self.problem["answer"])

    def messages(self):
        """The completion as chat messages: assistant turns and their tool responses."""
        out = []
        for i, turn in enumerate(self.turns):
            out.append({"role": "assistant", "content": turn})
            out += [{"role": "tool", "content": c} for c in
                    (self.responses[i] if i < len(self.responses) else [])]
        return out


def between_turns_ids(tok, responses):
    """Template tokens after a tool-calling turn: the tool responses as a user turn (mask 0)."""
    text = "\n<|im_start|>user\n" + "\n".join(
        f"<tool_response>\n{r}\n</tool_response>" for r in responses) + \
        "<|im_end|>\n<|im_start|>assistant\n"
    return tok(text, add_special_tokens=False).input_ids


def trajectory_ids(tok, messages):
    """(ids, mask) of a finished conversation after the prompt, masked as in a rollout.

    `messages`: assistant turns, each tool-calling one followed by its "tool"
    messages. Assistant text gets mask 1 (the final <|im_end|> too); the
    <|im_end|> closing a tool-calling turn and the tool responses get 0.
    """
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ids, mask = [], []
    i = 0
    while i < len(messages):
        turn = tok(messages[i]["content"], add_special_tokens=False).input_ids
        j = i + 1
        while j < len(messages) and messages[j]["role"] == "tool":
            j += 1
        responses = [m["content"] for m in messages[i + 1:j]]
        if responses:
            tail = [im_end] + between_turns_ids(tok, responses)
            ids += turn + tail
            mask += [1] * len(turn) + [0] * len(tail)
        else:
            ids += turn + [im_end]
            mask += [1] * (len(turn) + 1)
        i = j
    return ids, mask


def _sample(logits, temperature, top_p):
    """(N, V) logits -> (N,) token ids, by inverse-CDF sampling (one uniform number per row:
    5x cheaper than torch.multinomial, which draws V exponentials per row)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p   # keep the smallest set reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    cdf = probs.cumsum(-1)                                           # (N, V)
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]    # (N, 1) in [0, total)
    # first token whose cdf exceeds u (right=True never picks a zero-probability token)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def common_prefix(seqs):
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def encode_prompt(tok, question, schemas):
    text = tok.apply_chat_template(prompt_messages(question, schemas),
                                   add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


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


def shared_prefix_attention(module, query, key, value, attention_mask, scaling, shared_kv,
                            **_):
    """Attention over [system prompt ; the row's own tokens], the prompt's keys read once.

    Every row starts with the same system prompt (with 12 tool schemas, ~850 of
    a row's ~950 prompt tokens). Kept once instead of once per row, its keys
    and values are read once per step for all rows, in one matmul per kv head
    (with one copy per row, attention was 60% of a tool-prompt rollout).

        query: (n, h, w, d)   key, value: (n, kvh, L, d), the rows' own cache
        shared_kv[layer]: ((kvh, P, d), (kvh, P, d)), the system prompt
        attention_mask: (n, 1, w, L) bool (True: attend), or None (causal)
    Returns (n, w, h, d) and no weights, as transformers' attention functions do.
    """
    n, h, w, d = query.shape
    kvh, L = key.shape[1], key.shape[2]
    g = h // kvh                                            # query heads per kv head
    q = query.reshape(n, kvh, g * w, d)                     # head j reads kv head j // g
    pk, pv = shared_kv[module.layer_idx]
    P = pk.shape[1]
    q_all = q.transpose(0, 1).reshape(kvh, n * g * w, d)    # every row's queries, per kv head
    s_prompt = (q_all @ pk.transpose(1, 2)).view(kvh, n, g * w, P).transpose(0, 1)
    s_own = q @ key.transpose(2, 3)                         # (n, kvh, g*w, L)
    if attention_mask is None:
        attention_mask = torch.ones(w, L, dtype=torch.bool, device=q.device).tril(L - w)
    mask = attention_mask.expand(n, 1, w, L)[:, :, None].expand(n, 1, g, w, L)
    s_own = s_own.masked_fill(~mask.reshape(n, 1, g * w, L), float("-inf"))
    # one softmax over both parts (the prompt part is never empty, so no row is all -inf)
    p = torch.softmax(torch.cat([s_prompt, s_own], -1).float() * scaling, -1).to(value.dtype)
    p_prompt = p[..., :P].transpose(0, 1).reshape(kvh, n * g * w, P)
    out = (p_prompt @ pv).view(kvh, n, g * w, d).transpose(0, 1) + p[..., P:] @ value
    return out.reshape(n, h, w, d).transpose(1, 2), None


AttentionInterface.register("shared_prefix", shared_prefix_attention)
AttentionMaskInterface.register("shared_prefix", sdpa_mask)   # (n, 1, w, L) bool masks


@contextmanager
def attention(model, name):
    """Run `model` with attention implementation `name` inside the block."""
    old = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = old


@dataclass
class KVBatch:
    """The rows being generated: the shared prompt's KV once, then each row's own cache.

    cache: GrowingKV layers (n, kvh, L, d); attn: (n, L) 0 marks holes (padding);
    n_real: (n,) tokens of each row so far, the shared prompt's included (its next position).
    """
    shared_kv: list
    cache: Cache
    attn: torch.Tensor
    n_real: torch.Tensor

    def keep(self, idx):
        """Keep rows idx (a sorted (m,) tensor), in place."""
        self.cache.batch_select_indices(idx)
        self.attn, self.n_real = self.attn[idx], self.n_real[idx]

    def repeat(self, times):
        self.cache.batch_repeat_interleave(times)
        self.attn, self.n_real = (x.repeat_interleave(times, 0) for x in (self.attn, self.n_real))


def prefill(model, prompt_ids, tails):
    """Run the shared prompt once (kept apart) and then each row's own tail, batched.

    Returns (KVBatch, (n, V) logits after each tail); every tail needs at least one token.
    """
    dev = model.device
    prompt_cache = DynamicCache()
    model(input_ids=torch.tensor([prompt_ids], device=dev), cache=prompt_cache, use_cache=True,
          logits_to_keep=1)
    shared_kv = [(layer.keys[0], layer.values[0]) for layer in prompt_cache.layers]
    batch = KVBatch(shared_kv, Cache(layer_class_to_replicate=GrowingKV),
                    torch.ones(len(tails), 0, dtype=torch.long, device=dev),
                    torch.full((len(tails),), len(prompt_ids), device=dev))
    return batch, feed(model, batch, tails)


def feed(model, batch, chunks):
    """Run one chunk of new tokens per row, left-padded to a common width -> (n, V) logits
    after each row's last token. Pads are masked out, so their id (0) does not matter."""
    width, dev = max(map(len, chunks)), batch.attn.device
    ids = torch.zeros(len(chunks), width, dtype=torch.long, device=dev)
    cmask = torch.zeros(len(chunks), width, dtype=torch.long, device=dev)
    for k, c in enumerate(chunks):
        if c:
            ids[k, width - len(c):] = torch.tensor(c, device=dev)
            cmask[k, width - len(c):] = 1
    pos = (batch.n_real[:, None] + cmask.cumsum(1) - 1).clamp(min=0)  # (n, width); pads: masked
    batch.attn = torch.cat([batch.attn, cmask], 1)
    # logits only at the last position. An index tensor, not logits_to_keep=1: the int's
    # slice leaves a strided (n, 1, H) view when width > 1, and the vocabulary projection
    # of a strided 3-D input copies the weight once per row (300 ms a step here)
    last = torch.tensor([width - 1], device=dev)
    with attention(model, "shared_prefix"):
        out = model(input_ids=ids, attention_mask=batch.attn, position_ids=pos, cache=batch.cache,
                    use_cache=True, logits_to_keep=last, shared_kv=batch.shared_kv)
    batch.n_real = batch.n_real + cmask.sum(1)
    return out.logits[:, -1]


@torch.inference_mode()
def generate_rollouts(model, tok, problems, tools, schemas, group_size=1, max_turns=5,
                      max_new_tokens=128, max_total_tokens=384, temperature=1.0, top_p=1.0):
    """Sample group_size multi-turn rollouts for each problem -> list of B*G Rollouts.

    Rows are ordered problem-major: rollouts[b * group_size + g].
    """
    from model import stop_token_ids
    if "<|im_start|>" not in tok.get_vocab():
        raise ValueError("rollout.py speaks ChatML (<|im_start|>): SmolLM2, Qwen2.5 and Qwen3 "
                         "students work; this tokenizer has no <|im_start|> token")
    dev = model.device
    stops = set(stop_token_ids(tok, model))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # a problem may bring its own tools to show (BFCL entries do)
    prompts = [encode_prompt(tok, p["question"], p.get("schemas", schemas)) for p in problems]
    rows = [Rollout(p, prompts[b]) for b, p in enumerate(problems) for _ in range(group_size)]

    # Prefill: the prefix all prompts share (the system prompt) once, kept apart;
    # then each question's own tail once; only then is every question's cache row
    # repeated group_size times and the group's first tokens sampled from the same logits.
    P = common_prefix(prompts)
    if P == max(len(p) for p in prompts):  # one prompt for every row: keep one token back
        P -= 1
    batch, logits = prefill(model, prompts[0][:P], [p[P:] for p in prompts])
    batch.repeat(group_size)
    logits = logits.repeat_interleave(group_size, 0)

    active = list(range(len(rows)))        # cache row k -> rows[active[k]]
    pending = [[] for _ in rows]           # tokens a row still has to feed
    turn_ids = [[] for _ in rows]
    n_turns = [0] * len(rows)
    while True:
        # 1. every row that has fed all its tokens samples one (mask 1); end turns; run tools
        ready = [k for k, i in enumerate(active) if not pending[i]]
        keep = [k for k, i in enumerate(active) if pending[i]]
        next_ids = _sample(logits[ready], temperature, top_p).tolist() if ready else []
        for k, t in zip(ready, next_ids):
            i = active[k]
            r = rows[i]
            r.ids.append(t); r.mask.append(1); r.n_generated += 1
            turn_ids[i].append(t)
            pending[i] = [t]
            hit_eos = t in stops
            hit_call = "</tool_call>" in tok.decode(turn_ids[i][-8:])
            out_of_tokens = len(turn_ids[i]) >= max_new_tokens or r.n_generated >= max_total_tokens
            if not (hit_eos or hit_call or out_of_tokens):
                keep.append(k)
                continue
            turn_text = tok.decode(turn_ids[i], skip_special_tokens=True)  # the turn has ended
            r.turns.append(turn_text)
            if not (hit_eos or hit_call):
                r.truncated = True  # cut off mid-turn: the row is done
                continue
            turn_ids[i] = []
            n_turns[i] += 1
            calls = tool_call_bodies(turn_text)
            if not calls or n_turns[i] >= max_turns:
                continue  # final answer given (or out of turns): the row is done
            responses = [execute_tool_call(body, tools)[1] for body in calls]
            r.responses.append(responses)
            closing = [] if hit_eos else [im_end]
            template = between_turns_ids(tok, responses)
            r.ids += closing + template
            r.mask += [0] * (len(closing) + len(template))
            pending[i] = [t] + closing + template
            keep.append(k)

        # 2. drop finished rows from the batch and the cache
        keep.sort()
        if len(keep) < len(active):
            if not keep:
                break
            batch.keep(torch.tensor(keep, device=dev, dtype=torch.long))
            active = [active[k] for k in keep]

        # 3. feed the pending tokens. A tool response goes in over several steps,
        # FEED_TOKENS_PER_STEP tokens per step across the batch (at least one per
        # row), so the other rows are not padded to its length in one big step.
        width = max(1, FEED_TOKENS_PER_STEP // len(active))
        chunks = [pending[i][:width] for i in active]
        for i in active:
            pending[i] = pending[i][width:]
        logits = feed(model, batch, chunks)

    for r in rows:
        r.text = tok.decode(r.ids, skip_special_tokens=False)
        generated = "".join(r.turns)
        r.answer = extract_boxed(generated)
        r.tool_calls = tool_names_in(generated)  # executed or not (e.g. in the last turn)
    return rows


def main():
    import argparse
    from model import compute_dtype, load_model, pick_device
    from reward import compute_reward
    from tasks import load_suite
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="short name, HF id, folder or run folder")
    ap.add_argument("--suite", default="math")
    ap.add_argument("--n", type=int, default=2, help="questions")
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    device = pick_device()
    tok, model = load_model(args.model, device=device, dtype=compute_dtype(device))  # as train.py
    suite = load_suite(args.suite)
    problems = suite.split("test")[:args.n]
    t0 = time.time()
    rollouts = generate_rollouts(model, tok, problems, suite.tools, suite.schemas,
                                 group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature)
    dt = time.time() - t0
    for i, r in enumerate(rollouts):
        total, parts = compute_reward("mentor", r, suite)
        print(f"\n=== rollout {i}: {r.problem['question']}\n--- gold {r.problem['answer']} "
              f"| teacher_tools {r.problem['teacher_tools']}")
        print(r.text)
        print(f"--- tool calls {r.tool_calls} | answer {r.answer!r} | truncated {r.truncated} "
              f"| mentor reward {total:.3f} {parts}")
    n_tok = sum(r.n_generated for r in rollouts)
    print(f"\n{len(rollouts)} rollouts, {n_tok} generated tokens in {dt:.1f} s "
          f"({n_tok / dt:.1f} tok/s)")


if __name__ == "__main__":
    main()
