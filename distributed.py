"""More than one process: train.py under torchrun, data-parallel (second reading).

    torchrun --nproc_per_node 8 train.py --preset gpu --student Qwen2.5-3B   # one node, 8 GPUs
    python train.py ...                                                       # a world of one

Each rank takes whole groups of the step's questions (the group is the unit of the
advantage): all ranks draw the same questions from the same Python RNG and rank r
keeps questions r, r + W, r + 2W, ... It samples, scores and computes advantages
for them alone. The loss is the token mean over every rank's generated tokens:
each rank divides its token sum by the *global* token count (all_sum), and the
gradients are summed across ranks (sync_gradients), so the update equals the
single-process update on the union of the groups. Every rank holds the full
model and optimizer state and applies the same update: that is DDP's algorithm,
written out because engine.backward runs several backward passes per step (the
shared prefix last), which DDP's bucketed hooks do not expect.

Rank 0 alone logs, evaluates and writes checkpoints; a checkpoint holds full
(unsharded) weights, so a run resumes on any number of processes.
"""
import os

import torch
import torch.distributed as dist


def setup():
    """Join the process group torchrun describes (WORLD_SIZE > 1); a world of one needs none.
    Returns the device this rank should use, or None to let model.pick_device choose."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    return "cpu"


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def my_share(items):
    """This rank's items: whole groups, every world()-th from rank()."""
    return items[rank()::world()]


def all_sum(x):
    """Sum of a float over ranks (x itself in a world of one)."""
    if world() == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def sync_gradients(model):
    """Sum every parameter's gradient over ranks, in one flat buffer (a rank whose rows all
    had advantage 0 sends zeros)."""
    if world() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    device = "cuda" if flat.is_cuda else "cpu"
    flat = flat.to(device)
    dist.all_reduce(flat)
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.numel()].view_as(p))
        i += p.numel()


def mean_metrics(m):
    """Numeric step metrics averaged over ranks (each saw as many rollouts, of its own groups;
    a reward part a rank never met counts 0 there). Others are rank 0's."""
    ms = gather(m)
    if len(ms) == 1:
        return m
    out = dict(ms[0])
    for k in set().union(*ms):
        vals = [x.get(k, 0.0) for x in ms]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = sum(vals) / len(vals)
    return out


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if world() > 1:
        dist.barrier()


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()
