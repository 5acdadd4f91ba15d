"""More than one process: train.py under torchrun, data-parallel, optionally sharded
(second reading).

    torchrun --nproc_per_node 8 train.py --preset gpu --student Qwen2.5-3B   # one node, 8 GPUs
    torchrun --nproc_per_node 8 train.py --preset gpu --student Qwen2.5-7B --fsdp
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

--fsdp (shard) splits each decoder layer's parameters, gradients and AdamW state
over the ranks with FSDP2's fully_shard; each layer's weights are gathered for
its forward and backward and its gradient is reduce-scattered (summed) after.
The embeddings, final norm and output head stay whole on every rank and are
summed like DDP's: our fast paths (engine.SharedPrefix, sequence_logprobs) call
the decoder and the head directly, so a sharded root module would never gather
them. Sampling and evaluation run on a plain copy of the policy that every rank
refreshes from the shards first (unsharded), as verl copies the trained weights
into its inference engine: each forward of a sharded layer is a collective, and
ranks sample different numbers of tokens. The frozen KL reference is such a copy
too (on the side, whole on every rank: no gradients or optimizer state, and no
collectives in its forward).
"""
import copy
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from engine import pad_micro_batches


def setup(fsdp=False):
    """Join the process group torchrun describes (WORLD_SIZE > 1); a world of one needs none,
    except under --fsdp (fully_shard needs a group, here of one process).
    Returns the device this rank should use, or None to let model.pick_device choose."""
    if dist.is_initialized() or (int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not fsdp):
        return None
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("RANK", "0"),
                 ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)               # plain `python train.py --fsdp`
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


def backend_device():
    """Where a collective's tensors must live: NCCL takes CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def all_sum(x):
    """Sum of a float over ranks (x itself in a world of one)."""
    if world() == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=backend_device())
    dist.all_reduce(t)
    return t.item()


def all_max(x):
    """Largest value of an int over ranks (x itself in a world of one)."""
    if world() == 1:
        return x
    t = torch.tensor([int(x)], dtype=torch.int64, device=backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def even_passes(batch, model):
    """An engine.Batch padded with empty micro-batches to as many as any rank has, under --fsdp
    (each sharded layer's forward and backward is a collective: a rank with fewer passes would
    leave the others waiting); unsharded, the batch as it is."""
    if is_sharded(model):
        pad_micro_batches(batch, all_max(len(batch.micro)))
    return batch


def sync_gradients(model):
    """Sum every parameter's gradient over ranks, in one flat buffer (a rank whose rows all
    had advantage 0 sends zeros). Sharded parameters (--fsdp) are summed by FSDP itself."""
    if world() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params]).to(backend_device())
    dist.all_reduce(flat)
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.numel()].view_as(p))
        i += p.numel()


def clip_grad_norm(model, max_norm):
    """torch.nn.utils.clip_grad_norm_, also over a mix of sharded and whole gradients (--fsdp):
    the squares of the shards are summed over ranks, those of whole gradients counted once."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not any(isinstance(p, DTensor) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    shard_sq = sum(p.grad.to_local().float().pow(2).sum() for p in params
                   if isinstance(p, DTensor))
    whole_sq = sum(p.grad.float().pow(2).sum() for p in params if not isinstance(p, DTensor))
    norm = (all_sum(shard_sq) + float(whole_sq)) ** 0.5
    scale = min(1.0, max_norm / (norm + 1e-6))
    for p in params:
        p.grad.mul_(scale)
    return torch.tensor(norm)


# ----------------------------------------------------------------------------
# --fsdp: decoder layers sharded with FSDP2

_plain_copies = {}     # id(sharded model) -> a plain copy of it, for sampling and evaluation


def shard(model):
    """Shard each decoder layer over the ranks (fully_shard); gradients are summed, not
    averaged, as sync_gradients does. Keeps a plain copy of the model for unsharded()."""
    _plain_copies[id(model)] = copy.deepcopy(model).requires_grad_(False).eval()
    for layer in model.get_decoder().layers:
        fully_shard(layer)
        layer.set_gradient_divide_factor(1.0)
        layer.set_force_sum_reduction_for_comms(True)     # a plain SUM (gloo has no PREMUL_SUM)
    return model


def is_sharded(model):
    return id(model) in _plain_copies


def unsharded(model):
    """The model with whole weights on this rank: under --fsdp its plain copy, refreshed from
    the shards (a collective: every rank calls it), else the model itself."""
    if not is_sharded(model):
        return model
    plain = _plain_copies[id(model)]
    with torch.no_grad():
        for p, q in zip(model.parameters(), plain.parameters()):
            q.copy_(p.full_tensor() if isinstance(p, DTensor) else p)
    return plain


def full_state(state):
    """A (nested) state dict with every sharded tensor gathered whole, on CPU (a collective
    under --fsdp, so that rank 0 can save it; a world of one: the same tensors)."""
    if isinstance(state, DTensor):
        return state.full_tensor().cpu()
    if isinstance(state, dict):
        return {k: full_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [full_state(v) for v in state]
    return state


def shard_optimizer_state(opt, state):
    """Load a whole optimizer state (a checkpoint's) into an optimizer over sharded
    parameters: each moment of a sharded parameter is cut to this rank's shard."""
    params = [p for g in opt.param_groups for p in g["params"]]

    def cut(v, p):
        if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape:
            return distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
        return v
    opt.load_state_dict({**state, "state": {i: {k: cut(v, params[int(i)]) for k, v in s.items()}
                                            for i, s in state["state"].items()}})


def mean_metrics(m):
    """Numeric step metrics averaged over ranks (each saw as many rollouts, of its own groups;
    a key a rank lacks counts 0 there). Others are rank 0's. Means average exactly so; a std
    does not (runs.step_reward_metrics pools the rewards themselves)."""
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
