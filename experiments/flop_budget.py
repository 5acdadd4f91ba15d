"""How many matmul FLOPs a finished `make train` run did, and how long they take at this CPU's
measured fp32 matmul rate: a floor on its wall time for the same work in fp32, whatever the code.

    python experiments/flop_budget.py results/make-train-fast/fp32-seed0

One SFT step and one GRPO update are counted by torch's FlopCounterMode (matmuls only: the
fused attention kernel is not counted, so the floor is low) on the teacher's trajectories, with
the run's batch sizes; they stand in for the run's batches, whose rows were of similar length
(the update's rows: rollouts of the SFT'd student). Generation is counted by hand: a token fed
through the decoder costs 2 FLOPs per decoder weight, and a sampled one also the vocabulary
projection (the shared system prompt, once per generate call, is left out). The run's log
gives the counts: steps, batches drawn, tokens generated per rollout, evaluation sizes;
tool-response tokens per generated token are the teacher's ratio. Time = FLOPs /
bench.matmul_gflops (a 2048^3 fp32 matmul, the best case).
"""
import copy
import json
import os
import random
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import matmul_gflops                                   # noqa: E402
from engine import shared_prefix_length                           # noqa: E402
from model import load_model                                      # noqa: E402
from tasks import load_suite                                      # noqa: E402
from teacher import trajectories                                  # noqa: E402
from train import Config, policy_update, sft_step                 # noqa: E402


def counted(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def main(run_dir):
    cfg = Config(**{k: v for k, v in json.load(open(f"{run_dir}/run.json")).items()
                    if k in Config.__dataclass_fields__})
    log = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    evals = json.load(open(f"{run_dir}/evals.json"))
    sft, grpo = [m for m in log if m["phase"] == "sft"], [m for m in log if m["phase"] == "grpo"]
    random.seed(0)
    torch.manual_seed(0)
    tok, model = load_model(cfg.student)
    suite = load_suite(cfg.suite)
    trajs = trajectories(cfg.teacher, suite, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    f_sft = counted(lambda: sft_step(model, opt, tok, random.sample(trajs, cfg.sft_batch_size),
                                     cfg))
    rows = cfg.batch_size * cfg.group_size
    seqs = [(p, i, m, [0.0] * len(i)) for p, i, m in random.sample(trajs, rows)]
    ref = copy.deepcopy(model).requires_grad_(False)        # the KL reference: same shapes
    f_update = counted(lambda: policy_update(model, ref, opt, tok.pad_token_id, seqs,
                                             torch.ones(rows), cfg))

    head = model.get_output_embeddings().weight.numel()
    decoder = sum(p.numel() for p in model.get_decoder().parameters()) \
        - model.get_decoder().get_input_embeddings().weight.numel()
    tool_per_gen = sum(len(i) - sum(m) for _, i, m in trajs) / sum(sum(m) for _, _, m in trajs)
    shared = shared_prefix_length([p for p, _, _ in trajs], [len(p) + 1 for p, _, _ in trajs])
    question = sum(len(p) - shared for p, _, _ in trajs) / len(trajs)

    def generation(questions, group, gen_tokens):   # each question's prompt tail runs once,
        fed = questions * (question + group * gen_tokens * (1 + tool_per_gen))   # its rows
        return 2 * decoder * fed + 2 * head * questions * group * gen_tokens   # sample gen_tokens

    batches = sum(m["sample_batches"] for m in grpo)
    f_rollouts = sum(generation(m["sample_batches"] * cfg.batch_size, cfg.group_size,
                                m["response_tokens"]) for m in grpo)
    f_evals = sum(generation(len(e["correct"]), 1, e["response_tokens"])    # greedy, 1 a problem
                  for e in evals.values())
    gflops = matmul_gflops(model.device, torch.float32)
    parts = [("SFT", len(sft) * f_sft, sum(m["step_time"] for m in sft) / 60),
             ("GRPO updates", len(grpo) * f_update,
              sum(m["step_time"] - m["rollout_time"] for m in grpo) / 60),
             (f"GRPO rollouts ({batches} batches)", f_rollouts,
              sum(m["rollout_time"] for m in grpo) / 60),
             (f"evaluations ({', '.join(str(len(e['correct'])) for e in evals.values())})",
              f_evals, None)]
    print(f"{run_dir}: fp32 matmul {gflops:.0f} GFLOP/s here; one SFT step {f_sft / 1e12:.2f} "
          f"TFLOP, one update of {rows} rows {f_update / 1e12:.2f}; tool tokens per sampled "
          f"token {tool_per_gen:.2f}; prompt {shared} shared + {question:.0f} tokens\n")
    print("| part | matmul TFLOP | minutes at the matmul rate | minutes in the run |")
    print("|---|---|---|---|")
    for name, f, took in parts + [("total", sum(f for _, f, _ in parts), None)]:
        print(f"| {name} | {f / 1e12:.0f} | {f / gflops / 1e9 / 60:.1f} | "
              f"{'' if took is None else f'{took:.1f}'} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/make-train-fast/fp32-seed0")
