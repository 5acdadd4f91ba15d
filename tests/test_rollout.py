"""Rollouts on the real embedded student."""
import torch

from model import ModelNotAvailable, load_model
from rollout import between_turns_ids, generate_rollouts

CALL = '<think>Multiply.</think><tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>'


class ForceFirstTokens(torch.nn.Module):
    """Wraps the real model; its first len(script) sampled tokens are forced to `script`.

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

    def forward(self, **kw):
        out = self.model(**kw)
        if "cache" not in kw:  # the shared-prefix prefill samples nothing
            return out
        if self.calls < len(self.script):
            out.logits[:] = -1e4
            out.logits[..., self.script[self.calls]] = 1e4
        self.calls += 1
        return out


def test_tool_call_is_executed_and_its_response_is_masked(student, math_suite):
    tok, model = student
    script = tok(CALL, add_special_tokens=False).input_ids
    problem = {"question": "What is 6 times 7?", "answer": "42", "teacher_tools": ["multiply"]}
    forced = ForceFirstTokens(model, script)
    (r,) = generate_rollouts(forced, tok, [problem], math_suite.tools, math_suite.schemas,
                             group_size=1, max_new_tokens=40, max_total_tokens=80, temperature=0)
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

    # The cached, chunked generation equals a plain forward over the final sequence:
    # every token the model chose greedily after the script is the argmax there too.
    ids = torch.tensor([r.prompt_ids + r.ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    P = len(r.prompt_ids)
    for t in range(len(script), len(r.ids)):
        if r.mask[t]:
            row = logits[P + t - 1]
            assert row[r.ids[t]] >= row.max() - 1e-3, t


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
    try:
        load_model("no-such-org/no-such-model")
    except ModelNotAvailable as e:
        msg = str(e)
        assert "\n" not in msg and "not available offline" in msg and "huggingface-cli download" in msg
    else:
        raise AssertionError("expected ModelNotAvailable")
