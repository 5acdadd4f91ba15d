"""Multi-turn tool-calling rollouts and the loss mask: the paper's turn loop.

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

One row's loop is `advance(row, token, env)`: append the sampled token with
loss-mask bit 1; at the end of a turn run its tool calls (tools.py) and append
the responses with mask 0, tokenised on their own: the conversation is never
re-tokenised. Mask 1 covers exactly the tokens the model sampled (its closing
<|im_end|> included); the prompt, the template tokens we insert and the tool
responses are 0, so the loss never trains on what the environment wrote.

`generate_rollouts` runs that step for a batch of B questions x G samples;
how the batch is scheduled and cached is engine.generate (second reading).

Run `python rollout.py` for a demo on the embedded student.
"""
import argparse
import json
import time
from dataclasses import dataclass, field

import torch

from engine import generate
from model import compute_dtype, load_model, pick_device, stop_token_ids
from reward import compute_reward
from tasks import extract_boxed, load_suite
from tools import execute_tool_call, tool_call_bodies, tool_names_in

SYSTEM_PROMPT = """You are a helpful assistant that solves problems step by step with tools.

You may call these tools:
<tools>
{tools}
</tools>

Think inside <think>...</think>. To call a tool, write
<tool_call>{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}</tool_call>
and wait: the result comes back inside <tool_response>...</tool_response>.
When you know the answer, write it as \\boxed{{answer}}."""


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
# Rollouts

@dataclass
class Rollout:
    problem: dict
    prompt_ids: list                 # chat-template prompt tokens
    ids: list = field(default_factory=list)    # everything after the prompt
    mask: list = field(default_factory=list)   # 1 where the model generated ids[i]
    sampler_logp: list = field(default_factory=list)  # its log-prob when sampled (0 where mask 0)
    turns: list = field(default_factory=list)  # text the model generated, per turn
    responses: list = field(default_factory=list)  # tool responses after each turn
    tool_calls: list = field(default_factory=list)  # every tool name it tried (None: unparsable)
    text: str = ""                   # the whole completion, tool responses included
    answer: str = None               # last \boxed{} in the generated text
    truncated: bool = False          # cut off by max_new_tokens / max_total_tokens
    n_generated: int = 0
    turn_ids: list = field(default_factory=list, repr=False)  # the current turn's tokens

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


def encode_prompt(tok, question, schemas):
    text = tok.apply_chat_template(prompt_messages(question, schemas),
                                   add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


@dataclass
class Env:
    """What a row's step needs besides the row: the tokenizer, the tools and the limits."""
    tok: object
    tools: dict
    stops: set                 # token ids that end a turn (<|im_end|>, EOS)
    im_end: int
    max_turns: int = 5
    max_new_tokens: int = 128  # per assistant turn
    max_total_tokens: int = 384  # generated tokens per rollout, all turns


def advance(r, token, env, logp=0.0):
    """Append one sampled token (log-prob logp under the sampling weights) to rollout r
    -> the tokens to feed next, or None: r is done."""
    r.ids.append(token)
    r.mask.append(1)                                  # the model sampled it: trained on
    r.sampler_logp.append(logp)
    r.n_generated += 1
    r.turn_ids.append(token)
    hit_eos = token in env.stops
    hit_call = "</tool_call>" in env.tok.decode(r.turn_ids[-8:])
    out_of_tokens = (len(r.turn_ids) >= env.max_new_tokens
                     or r.n_generated >= env.max_total_tokens)
    if not (hit_eos or hit_call or out_of_tokens):
        return [token]                                # the turn goes on
    r.turns.append(env.tok.decode(r.turn_ids, skip_special_tokens=True))
    r.turn_ids = []
    if not (hit_eos or hit_call):
        r.truncated = True                            # cut off mid-turn: done
        return None
    calls = tool_call_bodies(r.turns[-1])
    if not calls or len(r.turns) >= env.max_turns:
        return None                                   # a final answer (or out of turns): done
    responses = [execute_tool_call(body, env.tools)[1] for body in calls]
    r.responses.append(responses)
    inserted = ([] if hit_eos else [env.im_end]) + between_turns_ids(env.tok, responses)
    r.ids += inserted
    r.mask += [0] * len(inserted)                     # the environment wrote it: masked out
    r.sampler_logp += [0.0] * len(inserted)
    return [token] + inserted


def generate_rollouts(model, tok, problems, tools, schemas, group_size=1, max_turns=5,
                      max_new_tokens=128, max_total_tokens=384, temperature=1.0, progress=None):
    """Sample group_size multi-turn rollouts for each problem -> list of B*G Rollouts.

    Rows are ordered problem-major: rollouts[b * group_size + g].
    """
    if "<|im_start|>" not in tok.get_vocab():
        raise ValueError("rollout.py speaks ChatML (<|im_start|>): SmolLM2, Qwen2.5 and Qwen3 "
                         "students work; this tokenizer has no <|im_start|> token")
    env = Env(tok, tools, set(stop_token_ids(tok, model)), tok.convert_tokens_to_ids("<|im_end|>"),
              max_turns, max_new_tokens, max_total_tokens)
    # a problem may bring its own tools to show (BFCL entries do)
    prompts = [encode_prompt(tok, p["question"], p.get("schemas", schemas)) for p in problems]
    rows = [Rollout(p, prompts[b]) for b, p in enumerate(problems) for _ in range(group_size)]
    generate(model, prompts, group_size, lambda i, t, lp: advance(rows[i], t, env, lp),
             temperature, progress)
    for r in rows:
        r.text = tok.decode(r.ids, skip_special_tokens=False)
        generated = "".join(r.turns)
        r.answer = extract_boxed(generated)
        r.tool_calls = tool_names_in(generated)  # executed or not (e.g. in the last turn)
    return rows


def main():
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
              f"| teacher_tools {r.problem['teacher_tools']}\n{r.text}")
        print(f"--- tool calls {r.tool_calls} | answer {r.answer!r} | truncated {r.truncated} "
              f"| mentor reward {total:.3f} {parts}")
    n_tok = sum(r.n_generated for r in rollouts)
    print(f"\n{len(rollouts)} rollouts, {n_tok} generated tokens in {dt:.1f} s "
          f"({n_tok / dt:.1f} tok/s)")


if __name__ == "__main__":
    main()
