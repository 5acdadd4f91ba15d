"""How much of an RL run's weight change a bf16 copy of the weights shows.

    python experiments/bf16_resolution.py BEFORE_RUN AFTER_RUN

BEFORE_RUN and AFTER_RUN are train.py run folders (checkpoint.pt holds fp32 master weights),
e.g. a warm start and a GRPO run from it. Where bf16 is the compute dtype, the rollout samples
from bf16(W) and autocast multiplies by bf16(W): that is the policy the run acts and is judged
with. An AdamW step of lr 1e-5 moves a weight by at most about 1e-5, below bf16's spacing
(1.2e-4 at a weight of 0.03), so most bf16 values do not change and the few that do jump by a
whole spacing. Printed, over the weight matrices: the norm of the fp32 change W1 - W0, the norm
of what the bf16 copy adds to it (bf16(W1) - bf16(W0) - (W1 - W0): rounding), and the share
of weights whose bf16 value changed.
"""
import os
import sys

import torch


def matrices(run):
    state = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=False)
    seen, out = set(), {}
    for k, w in state["model"].items():                 # a tied head shares the embedding
        if w.dim() >= 2 and w.data_ptr() not in seen:
            seen.add(w.data_ptr())
            out[k] = w.float()
    return out


def bf16_resolution(w0, w1):
    """(fp32 change, bf16 copy's change minus it) squared norms and changed-count of one matrix."""
    change = w1 - w0
    seen = w1.bfloat16().float() - w0.bfloat16().float()
    return (change ** 2).sum().item(), ((seen - change) ** 2).sum().item(), (seen != 0).sum().item()


def main(before, after):
    a, b = matrices(before), matrices(after)
    change = rounding = moved = n = 0
    for k in a:
        c, r, m = bf16_resolution(a[k], b[k])
        change, rounding, moved, n = change + c, rounding + r, moved + m, n + a[k].numel()
    print(f"{n:,} weights in matrices: |W1 - W0| = {change ** .5:.3f}; the bf16 copy adds "
          f"{rounding ** .5:.3f} of rounding; {moved / n:.1%} of the bf16 values changed")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1].strip())
    main(*sys.argv[1:])
