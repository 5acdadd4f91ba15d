"""The GRPO objective, pinned by hand computations on tiny tensors and a tiny random model."""
import math
import warnings

import pytest
import torch

from engine import SharedPrefix, pack, sequence_logprobs, shared_prefix_ids
from engine import logprobs_from_logits
from train import aggregate, group_advantages, grpo_loss, kl_k3, tis_weights


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.16, 0.16, 0.16, 0.16]])
    adv = group_advantages(r, eps=0.0 + 1e-6)
    # group 0: mean 0.5, population std 0.5 -> +-1
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert torch.equal(adv[1], torch.zeros(4))            # all equal: exactly 0
    assert torch.equal(group_advantages(torch.tensor([[0.7]])), torch.zeros(1, 1))  # group of one
    with warnings.catch_warnings():                  # no group kept: no advantages, no warning
        warnings.simplefilter("error")
        assert group_advantages(torch.zeros(0, 4)).shape == (0, 4)
    # groups of 8 equal rewards: float32's mean of them is off by ~1e-8, which (r - mean) / eps
    # would blow up to advantages of 0.01-0.06; they must stay exactly 0
    for v in (0.1, 0.16, 0.7, 0.86):
        assert torch.equal(group_advantages(torch.full((1, 8), v)), torch.zeros(1, 8)), v
    # Dr. GRPO: r - mean, no division; MENTOR's 0.06 tool credit stays 0.06 apart, not +-1
    dr = group_advantages(torch.tensor([[0.16, 0.1, 0.1, 0.16], [0.2, 0.2, 0.2, 0.2]]), "dr_grpo")
    assert torch.allclose(dr[0], torch.tensor([0.03, -0.03, -0.03, 0.03]), atol=1e-6)
    assert torch.equal(dr[1], torch.zeros(4))


def test_kl_k3_is_zero_iff_equal_and_matches_formula():
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    assert torch.equal(kl_k3(lp, lp), torch.zeros(1, 2))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    d = math.log(0.25) - math.log(0.5)
    assert kl_k3(lp, ref)[0, 0].item() == pytest.approx(math.exp(d) - d - 1)


def test_clipped_loss_by_hand():
    # two rollouts, two tokens each; second rollout's last token is masked (padding)
    old = torch.zeros(2, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.9)], [math.log(0.5), 0.0]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    per_token, m = grpo_loss(logp, old, None, adv, clip_eps=0.2, kl_coef=0.0)
    # row 0: ratio 1.5 -> min(1.5, 1.2) * 1 = 1.2 ; ratio 0.9 -> min(0.9, 0.9) = 0.9
    # row 1: ratio 0.5, A = -2 -> min(-1.0, 0.8 * -2 = -1.6) = -1.6
    expected = -(1.2 + 0.9 - 1.6) / 3
    assert aggregate(per_token, mask).item() == pytest.approx(expected, rel=1e-6)
    assert aggregate(m["clip_frac"], mask).item() == pytest.approx(2 / 3)   # 1.5 and 0.5 clip


def test_kl_term_adds_to_loss():
    logp = torch.zeros(1, 2)
    ref = torch.log(torch.tensor([[0.5, 1.0]]))
    mask = torch.ones(1, 2)
    per_token, m = grpo_loss(logp, logp, ref, torch.zeros(1), kl_coef=0.1)
    d = math.log(0.5)
    kl = aggregate(m["kl"], mask).item()
    assert kl == pytest.approx((math.exp(d) - d - 1) / 2)
    assert aggregate(per_token, mask).item() == pytest.approx(0.1 * kl)


# Two rollouts of 3 and 1 generated tokens (the second padded): per-token values x, by hand
X = torch.tensor([[1.0, 2.0, 6.0], [4.0, 100.0, 100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_aggregation_modes_by_hand():
    """token_mean (1 + 2 + 6 + 4) / 4 = 3.25; seq_mean_token_mean (3 + 4) / 2 = 3.5;
    seq_mean_token_sum_norm (9 + 4) / (2 rows x horizon 4) = 1.625; padding never counts."""
    assert aggregate(X, MASK, "token_mean").item() == 3.25
    assert aggregate(X, MASK, "seq_mean_token_mean").item() == 3.5
    assert aggregate(X, MASK, "seq_mean_token_sum_norm", horizon=4).item() == 1.625
    assert aggregate(X, torch.zeros_like(MASK)).item() == 0.0


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregation_parts_add_up_over_micro_batches_and_ranks(mode):
    """Four rows split as two ranks of two micro-batches of one row each: each part normalised
    by the whole batch's counts (n_tokens, n_seqs: what all_sum gives), the parts sum to the
    whole batch's value, also for a micro-batch that is empty (mask 0, under --fsdp)."""
    x = torch.cat([X, X.flip(1)])                                        # (4, 3)
    mask = torch.cat([MASK, torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])])
    whole = aggregate(x, mask, mode, horizon=4)
    counts = dict(n_tokens=mask.sum(), n_seqs=4, horizon=4)
    ranks = [[0, 1], [2, 3]]
    parts = [aggregate(x[[i]], mask[[i]], mode, **counts) for rank in ranks for i in rank]
    parts.append(aggregate(x[[0]], torch.zeros(1, 3), mode, **counts))  # an empty pass
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)


def test_sampled_tokens_carry_their_log_prob_at_the_sampling_temperature():
    """_sample's recorded log-prob is log softmax(z / T) of the token it drew, at T = 0.6, for
    each token of a 3-token vocabulary (not log softmax(z), the temperature-1 bug)."""
    from engine import _sample
    torch.manual_seed(0)
    z = torch.tensor([[2.0, 1.0, -1.0]]).expand(300, -1)
    ids, lp = _sample(z, 0.6)
    expected = torch.log_softmax(z[0] / 0.6, -1)
    assert set(ids.tolist()) == {0, 1, 2}
    assert torch.allclose(lp, expected[ids], atol=1e-6)
    assert not torch.allclose(lp, torch.log_softmax(z[0], -1)[ids], atol=1e-2)
    ids, lp = _sample(z, 1.0)
    assert torch.allclose(lp, torch.log_softmax(z[0], -1)[ids], atol=1e-6)


def test_one_token_gradient_is_the_policy_gradient_at_the_sampling_temperature():
    """d loss / d logits for one token with advantage A at T = 0.6, ratio 1 (one epoch), no KL:
    -(A / T) * (onehot - softmax(z / T)), the gradient of the policy that sampled."""
    z = torch.tensor([[2.0, 1.0, -1.0]], requires_grad=True)
    A, T, token = 1.5, 0.6, torch.tensor([1])
    logp = logprobs_from_logits(z, token, T)[None]                       # (1, 1)
    per_token, _ = grpo_loss(logp, logp.detach(), None, torch.tensor([A]), kl_coef=0.0)
    aggregate(per_token, torch.ones(1, 1)).backward()
    onehot = torch.tensor([[0.0, 1.0, 0.0]])
    expected = -(A / T) * (onehot - torch.softmax(z.detach() / T, -1))
    assert torch.allclose(z.grad, expected, atol=1e-6)


def _batch(tiny_model):
    torch.manual_seed(1)
    prompt = [5, 6, 7, 8]
    seqs = [(prompt + [9], [10, 11, 12, 13], [1, 1, 0, 1]),
            (prompt + [14, 15], [16, 17, 18], [1, 0, 1])]
    prefix = shared_prefix_ids(seqs, "cpu")
    return (prefix, *pack(seqs, len(prefix), 0, "cpu"))


def test_equal_rewards_give_zero_policy_gradient(tiny_model):
    prefix, tokens, attn, mask = _batch(tiny_model)
    logp = sequence_logprobs(tiny_model, prefix, tokens, attn)
    adv = group_advantages(torch.tensor([[0.3, 0.3]])).flatten()
    per_token, _ = grpo_loss(logp, logp.detach(), None, adv, kl_coef=0.0)
    aggregate(per_token, mask).backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in tiny_model.parameters())


def test_masked_tokens_get_no_gradient(tiny_model):
    """Changing a masked token's log-prob target changes nothing in the gradient."""
    prefix, tokens, attn, mask = _batch(tiny_model)
    assert mask[0].tolist() == [0, 1, 1, 0, 1]  # the prompt tail [9] is masked too
    logp = sequence_logprobs(tiny_model, prefix, tokens, attn)
    weights = torch.randn_like(logp)
    grads = []
    for scale_masked in (1.0, 1000.0):
        w = torch.where(mask.bool(), weights, weights * scale_masked)
        tiny_model.zero_grad()
        aggregate(logp * w, mask).backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters()]))
    assert torch.allclose(grads[0], grads[1])
    # and the loss itself ignores them: per-token gradient is zero where mask == 0
    lp = logp.detach().requires_grad_(True)
    per_token, _ = grpo_loss(lp, lp.detach(), lp.detach() - 0.1, torch.tensor([1.0, -1.0]))
    aggregate(per_token, mask).backward()
    assert torch.equal(lp.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.all(lp.grad[mask == 1] != 0)


@pytest.fixture(params=["read once", "sdpa"])
def prefix_attention(request, monkeypatch):
    """Both ways a micro-batch reads the shared prefix (SharedPrefix.run): its keys once for
    all rows (attend, the CPU's) and SDPA over [prefix ; row] (a GPU's), both run here."""
    import engine
    monkeypatch.setattr(engine, "SPLIT_ATTENTION_ON", ("cpu",) if request.param == "read once" else ())
    return request.param


def test_shared_prefix_logprobs_equal_a_plain_forward(tiny_model, prefix_attention):
    prefix, tokens, attn, _ = _batch(tiny_model)
    lp = sequence_logprobs(tiny_model, prefix, tokens, attn)
    full = torch.cat([prefix.expand(2, -1), tokens], 1)
    fattn = torch.cat([torch.ones(2, len(prefix), dtype=torch.long), attn], 1)
    logits = tiny_model(input_ids=full, attention_mask=fattn).logits
    ref = torch.log_softmax(logits[:, len(prefix) - 1:-1], -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(lp[attn.bool()], ref[attn.bool()], atol=1e-5)


def test_prefix_run_once_gives_the_exact_gradient_over_micro_batches(tiny_model, prefix_attention):
    """SharedPrefix once + two micro-batches + prefix.backward() == one plain forward/backward."""
    prefix_ids, tokens, attn, mask = _batch(tiny_model)
    full = torch.cat([prefix_ids.expand(2, -1), tokens], 1)
    fattn = torch.cat([torch.ones(2, len(prefix_ids), dtype=torch.long), attn], 1)
    fmask = torch.cat([torch.zeros(2, len(prefix_ids)), mask], 1)
    tiny_model.zero_grad()
    lp = sequence_logprobs(tiny_model, prefix_ids[:0], full, fattn, fmask)
    (lp * fmask).sum().backward()
    expected = [p.grad.clone() for p in tiny_model.parameters()]

    tiny_model.zero_grad()
    prefix = SharedPrefix(tiny_model, prefix_ids)
    for rows in ([0], [1]):
        lp = sequence_logprobs(tiny_model, prefix, tokens[rows], attn[rows], mask[rows])
        (lp * mask[rows]).sum().backward()
    prefix.backward()
    for g, p in zip(expected, tiny_model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_backward_seam_gives_the_token_mean_gradient_of_a_plain_forward(tiny_model,
                                                                        prefix_attention):
    """engine.backward over micro-batches of 1 == d/dθ of the token-mean NLL of one plain
    forward over the full sequences; its returned loss is that token mean."""
    from engine import backward, make_batch
    prompt = [5, 6, 7, 8]
    seqs = [(prompt + [9], [10, 11, 12, 13], [1, 1, 0, 1]),
            (prompt + [14, 15], [16, 17, 18], [1, 0, 1])]
    full = [p + i for p, i, _ in seqs]
    T = max(map(len, full))
    ids = torch.tensor([f + [0] * (T - len(f)) for f in full])
    attn = torch.tensor([[1] * len(f) + [0] * (T - len(f)) for f in full])
    mask = torch.tensor([[0.] * len(p) + m + [0.] * (T - len(p) - len(m)) for p, _, m in seqs])
    tiny_model.zero_grad()
    lp = sequence_logprobs(tiny_model, ids[0, :0], ids, attn, mask)
    plain = -(lp * mask).sum() / mask.sum()
    plain.backward()
    expected = [p.grad.clone() for p in tiny_model.parameters()]

    tiny_model.zero_grad()
    batch = make_batch(seqs, 1, 0, "cpu")
    assert len(batch.micro) == 2 and batch.n_tokens == 5 and len(batch.prefix_ids) == 4

    def loss_fn(k, mb, logp):
        loss = aggregate(-logp, mb.mask, "token_mean", batch.n_tokens)
        return loss, {"loss": loss.item()}
    m = backward(tiny_model, batch, loss_fn, torch.float32)
    assert m["loss"] == pytest.approx(plain.item(), abs=1e-6)
    for g, p in zip(expected, tiny_model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_truncated_importance_weights_by_hand():
    """pi_old / pi_sampler = 0.5 / 0.25 = 2 (truncated to the cap 1.5) and 0.2 / 0.4 = 0.5;
    with ratio 1 and advantage 1 the loss is -(1.5 + 0.5) / 2 and each token's gradient
    -w / 2; without weights, -1 and -1/2."""
    old = torch.tensor([[0.5, 0.2]]).log()
    sampler = torch.tensor([[0.25, 0.4]]).log()
    w = tis_weights(old, sampler, cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5]]))
    for weights, loss_value, grad in ((w, -1.0, [-0.75, -0.25]), (None, -1.0, [-0.5, -0.5])):
        logp = old.clone().requires_grad_(True)
        per_token, _ = grpo_loss(logp, old, None, torch.ones(1), kl_coef=0.0, is_weights=weights)
        loss = aggregate(per_token, torch.ones(1, 2))
        loss.backward()
        assert abs(loss.item() - loss_value) < 1e-6
        assert torch.allclose(logp.grad, torch.tensor([grad]))
    # the sampler-trainer mismatch train.py logs: k3 of KL(sampler || pi_old), 0 when equal
    assert kl_k3(sampler, sampler).abs().max() == 0
    # and r - 1 - log r with r = pi_old / pi_sampler: 1 - log 2 and log 2 - 1/2
    assert torch.allclose(kl_k3(sampler, old), torch.tensor([[1 - math.log(2), math.log(2) - 0.5]]))
