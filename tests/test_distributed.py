"""train.py's data-parallel paths on CPU, DDP-style and --fsdp: 2 processes over gloo, a tiny
random Qwen2-style model."""
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Four groups of two rollouts: rank 0 takes groups 0 and 2, rank 1 groups 1 and 3. Group 2 is
# flat (advantage 0: its rows add their KL term and their tokens, on every path alike). Rank 0's
# rows are longer: under MICRO_TOKENS it makes 4 micro-batches, rank 1 only 2, so --fsdp must
# pad rank 1 with empty passes (each sharded forward is a collective) or the update hangs.
# (prompt, ids, mask, the sampler's log-probs)
PROMPT = [5, 6, 7, 8]
GROUPS = [[(PROMPT + [9], [10, 11, 12, 13, 14, 15], [1, 1, 0, 1, 1, 1], [-3.0] * 6),
           (PROMPT + [9], [16, 17, 18, 19], [1, 1, 1, 1], [-3.5] * 4)],
          [(PROMPT + [20, 21], [22, 23], [1, 1], [-2.5] * 2),
           (PROMPT + [20, 21], [24], [1], [-3.0])],
          [(PROMPT + [25], [26, 27, 28, 29, 30, 31, 1, 2], [1] * 8, [-3.0] * 8),
           (PROMPT + [25], [3, 4, 26, 27, 28, 29, 30], [1] * 7, [-3.2] * 7)],
          [(PROMPT + [30], [2, 3], [1, 1], [-2.0] * 2),
           (PROMPT + [30], [4], [1], [-2.2])]]
ADV = [[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]
MICRO_TOKENS = 10          # padded tokens a micro-batch: rank 0 lengths 5 7 8 9, rank 1 2 3 3 4
# A step's sampled rewards (B=1, G=2) and (reward, parts) per rank; a part only rank 1 met.
REWARDS = [[[1.0, 0.0]], [[0.25, 0.25]]]
SCORES = [[(1.0, {"answer": 1.0}), (0.0, {"answer": 0.0})],
          [(0.25, {"answer": 0.0, "tool": 0.25}), (0.25, {"answer": 0.0, "tool": 0.25})]]


def tiny_qwen():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).float()


def one_step(groups, adv, fsdp=False):
    """One GRPO update (policy_update) on the given groups -> (metrics, model, optimizer)."""
    import distributed
    import train
    model = tiny_qwen()
    if fsdp:
        distributed.shard(model)
    ref = tiny_qwen().requires_grad_(False)
    with torch.no_grad():                          # a reference that differs: KL is not 0
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    # SGD: the update is the gradient itself. (Adam would blow the ~1e-10 rounding noise of
    # gradients that are 0 in exact arithmetic, such as k_proj's bias, up to lr-sized steps.)
    # Momentum gives the optimizer a state to checkpoint (after one step it is the gradient).
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    cfg = train.Config(micro_batch=4, micro_batch_tokens=MICRO_TOKENS, precision="fp32",
                       kl_coef=0.1, ppo_epochs=2)
    seqs = [s for g in groups for s in g]
    m = train.policy_update(model, ref, opt, 0, seqs, torch.tensor([a for g in adv for a in g]),
                            cfg)
    return m, model, opt


def weights(model):
    import distributed
    return {k: v.detach().clone() for k, v in distributed.full_state(model.state_dict()).items()}


def _rank_main(rank, world, port, out, fsdp):
    sys.path.insert(0, ROOT)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import distributed
    import engine
    import runs
    import train
    distributed.setup()
    mine = distributed.my_share(list(range(len(GROUPS))))        # whole groups per rank
    m, model, opt = one_step([GROUPS[i] for i in mine], [ADV[i] for i in mine], fsdp)
    seqs = [s for i in mine for s in GROUPS[i]]
    m["micro_batches"] = len(engine.micro_batches([len(p) - 4 + len(i) for p, i, *_ in seqs],
                                                  4, MICRO_TOKENS))
    m["rewards"] = runs.step_reward_metrics([torch.tensor(REWARDS[rank])], SCORES[rank])
    w = weights(model)                                           # a collective under --fsdp
    runs.save_checkpoint(out + ".ckpt", model, opt, 1, train.Config(), "grpo")
    if fsdp:   # resuming on 2 ranks: each cuts its shard of the whole optimizer state back out
        state = torch.load(out + ".ckpt", weights_only=False)
        model2 = tiny_qwen()
        model2.load_state_dict(state["model"])
        distributed.shard(model2)
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
        distributed.shard_optimizer_state(opt2, state["optimizer"])
        reloaded = distributed.full_state(opt2.state_dict())["state"]
        m["reloaded_matches"] = all(
            torch.equal(reloaded[i]["momentum_buffer"], s["momentum_buffer"])
            for i, s in state["optimizer"]["state"].items())
    if rank == 0:
        torch.save({"metrics": m, "weights": w}, out)
    dist.barrier()
    distributed.teardown()
    sys.stdout.flush()
    # Skip interpreter shutdown: gloo's threads can meet a C++ terminate there (seen about
    # once in four runs as SIGABRT after a clean teardown); the work is done and saved.
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_ranks_update_equals_one_process_on_the_same_groups(tmp_path, fsdp):
    """(a) world size 2, two groups each (one of them flat), gives the weights of world size 1
    on all four, whole (DDP-style) or with the decoder layers sharded (--fsdp): one rule for
    which rows enter the loss, whatever the sharding; under --fsdp the ranks' unequal numbers
    of micro-batches (4 and 2) are padded, not a hang; (b) with different token counts per
    rank the logged loss, KL and rows are the global token means and counts, as in one
    process; (c) the checkpoint the 2 ranks write loads into one process and holds the
    one-process weights and optimizer state (and, under --fsdp, shards back out); (d) the
    logged reward statistics pool every rank's rollouts."""
    torch.set_num_threads(1)
    m1, model1, opt1 = one_step(GROUPS, ADV)
    w1 = weights(model1)
    out = str(tmp_path / "rank0.pt")
    ctx = mp.spawn(_rank_main, args=(2, free_port(), out, fsdp), nprocs=2, join=False)
    deadline = time.time() + 300
    while not ctx.join(timeout=5):
        if time.time() > deadline:                     # ranks waiting on each other: a hang
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two ranks did not finish in 300 s (a collective left waiting)")
    got = torch.load(out)
    for k, v in w1.items():
        assert torch.allclose(v, got["weights"][k], atol=1e-6), k
    assert got["metrics"]["trained_rows"] == m1["trained_rows"] == 8       # the flat rows too
    assert got["metrics"]["micro_batches"] == 4              # rank 0's; rank 1 makes 2 of its own
    for k in ("loss", "kl", "clip_frac", "sampler_kl"):
        assert got["metrics"][k] == pytest.approx(m1[k], abs=1e-6), k
    assert m1["kl"] > 0 and m1["sampler_kl"] > 0
    # (d) the step's reward statistics are those of all ranks' rollouts together: std 0.375
    # (the mean of the two ranks' stds, 0.5 and 0, would say 0.25)
    import runs
    pooled = runs.reward_metrics(torch.tensor(REWARDS[0] + REWARDS[1]), SCORES[0] + SCORES[1])
    assert got["metrics"]["rewards"] == pytest.approx(pooled)
    assert pooled["reward_std"] == pytest.approx(0.375) and pooled["reward/tool"] == 0.125
    assert pooled["groups_with_signal"] == 0.5

    state = torch.load(out + ".ckpt", weights_only=False)
    model, opt = tiny_qwen(), None
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    opt.load_state_dict(state["optimizer"])
    for k, v in w1.items():
        assert torch.allclose(v, model.state_dict()[k], atol=1e-6), k
    mine, theirs = opt1.state_dict()["state"], opt.state_dict()["state"]
    assert mine.keys() == theirs.keys() and len(mine) > 0
    for i in mine:
        assert torch.allclose(mine[i]["momentum_buffer"], theirs[i]["momentum_buffer"],
                              atol=1e-6), i
    if fsdp:
        assert got["metrics"]["reloaded_matches"]
