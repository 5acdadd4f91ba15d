"""Benchmark: our GRPO step and rollout against TRL's GRPOTrainer, on the same work.

    make bench          # = bench.py --prompt short --reps 2 (CPU, embedded student, ~12 min)
    .venv-bench/bin/python bench.py --prompt tools --warmup 0 --reps 1 --only ours,trl
    .venv-bench/bin/python bench.py --student Qwen2.5-0.5B --device cuda

Same model, questions x group size, prompt (our system prompt with the 12 tool
schemas + a math question; --prompt short drops the tools) and completion
length, one tool-call turn, KL on (coefficient 0.001), one PPO epoch, the same
micro-batch, the same precision (--precision, default auto: bf16 matmuls on a
bf16 GPU or an AVX-512 CPU, fp32 weights on the CPU; ours samples from a bf16
copy, TRL's bf16=True runs generation and training under autocast).
Measured, each in its own subprocess so peak memory is its own:

  ours    train.grpo_step: rollout + reward + loss + optimizer step
  trl     GRPOTrainer optimizer step (no vLLM, gradient checkpointing off as
          in ours; TRL 1.x turns it on by default, which only slows it)
  decode  rollout tokens/s: ours vs plain HF generate (same weights), against the memory-bandwidth
          bound (bytes of weights read per decode step / measured bandwidth) and a
          roofline that also counts ~2 flops per parameter per row (measured matmul);
          the same rows' decode steps alone (no prefill, no row stopping early); and ours
          with one row, where the bandwidth bound is the binding one

Times are per step after --warmup untimed steps; median and spread over --reps.
TRL is installed only here (requirements-bench.txt, .venv-bench).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from model import PRECISIONS

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_memory_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def problems_and_suite(args):
    from tasks import load_suite
    suite = load_suite("math")
    if args.prompt == "short":
        suite.schemas = []
    return suite.split("train")[:args.questions], suite


def worker_ours(args):
    import copy
    from model import load_model
    from train import Config, grpo_step
    torch.manual_seed(0)
    tok, model = load_model(args.student, device=args.device)
    problems, suite = problems_and_suite(args)
    cfg = Config(batch_size=args.questions, group_size=args.group_size, max_turns=1,
                 max_sample_batches=1,                           # plain GRPO, as TRL
                 max_new_tokens=args.completion, max_total_tokens=args.completion,
                 micro_batch=args.micro_batch, kl_coef=0.001, lr=1e-5, precision=args.precision)
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    times, rollout = [], []
    for _ in range(args.warmup + args.reps):
        t0 = time.perf_counter()
        m = grpo_step(model, ref, opt, tok, suite, problems, cfg)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        rollout.append(m["rollout_time"])
    return {"step_s": times[args.warmup:], "rollout_s": rollout[args.warmup:],
            "peak_gb": peak_memory_gb(model.device)}


def worker_trl(args):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from model import compute_dtype, load_model
    from reward import reward
    from rollout import prompt_messages
    from tools import tool_names_in
    from tasks import answers_match, extract_boxed
    tok, model = load_model(args.student, device=args.device)
    problems, suite = problems_and_suite(args)
    data = Dataset.from_list([{"prompt": prompt_messages(p["question"], suite.schemas),
                               "gold": p["answer"], "teacher_tools": p["teacher_tools"]}
                              for p in problems])

    def mentor_reward(completions, gold, teacher_tools, **_):  # the same reward, single turn
        out = []
        for c, g, t in zip(completions, gold, teacher_tools):
            text = c[0]["content"] if isinstance(c, list) else c
            answer = extract_boxed(text)
            out.append(reward("mentor", truncated=False, answer=answer,
                              correct=answers_match(answer, g), called=tool_names_in(text),
                              valid_tools=suite.tools.keys(), teacher_tools=t)[0])
        return out

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    n = args.questions * args.group_size
    cfg = GRPOConfig(
        output_dir=os.path.join(HERE, "runs", "bench-trl"), report_to=[], save_strategy="no",
        max_steps=args.warmup + args.reps, logging_steps=1, learning_rate=1e-5, beta=0.001,
        num_generations=args.group_size, max_completion_length=args.completion,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=n // args.micro_batch,
        gradient_checkpointing=False,   # bf16: autocast (fp32 weights on CPU), as in ours
        bf16=compute_dtype(model.device, args.precision) == torch.bfloat16,
        use_cpu=model.device.type == "cpu", temperature=1.0, num_iterations=1, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[mentor_reward], args=cfg, train_dataset=data,
                          processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return {"step_s": times[args.warmup:], "peak_gb": peak_memory_gb(model.device)}


def _best_time(fn, device, reps=5):
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth_gbs(device, n_bytes=1 << 30):
    """Measured copy bandwidth: read + write of a 1 GiB buffer, best of 5."""
    x = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    return 2 * n_bytes / _best_time(lambda: y.copy_(x), device) / 1e9


def matmul_gflops(device, dtype, n=2048):
    """Measured dense matmul throughput: the compute roof."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _best_time(lambda: a @ b, device) / 1e9


def worker_decode(args):
    from model import compute_dtype, load_model, rollout_weights
    from engine import _sample, feed, prefill_groups
    from rollout import encode_prompt, generate_rollouts
    torch.manual_seed(0)
    tok, model = load_model(args.student, device=args.device)
    model = rollout_weights(model, compute_dtype(model.device, args.precision))  # as grpo_step
    problems, suite = problems_and_suite(args)
    rows = [p for p in problems for _ in range(args.group_size)]
    out = {"rows": len(rows)}
    ours = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        rs = generate_rollouts(model, tok, problems, suite.tools, suite.schemas,
                               group_size=args.group_size, max_turns=1,
                               max_new_tokens=args.completion, max_total_tokens=args.completion)
        ours.append(sum(r.n_generated for r in rs) / (time.perf_counter() - t0))
    out["ours_tok_s"] = ours

    def decode_steps(questions, group, temperature):
        """tok/s of args.completion decode steps (engine.feed, the rollout's own forward) after
        the prompts' prefill, which is not timed; every row decodes every step."""
        prompts = [encode_prompt(tok, p["question"], suite.schemas) for p in questions]
        tok_s = []
        with torch.inference_mode():
            for _ in range(args.reps):
                batch, logits = prefill_groups(model, prompts, group)
                t0 = time.perf_counter()
                for _ in range(args.completion):
                    ids, _ = _sample(logits, temperature)
                    logits = feed(model, batch, [[t] for t in ids.tolist()])
                tok_s.append(len(logits) * args.completion / (time.perf_counter() - t0))
        return tok_s
    # The rollout's rows without its prefill and without rows that stop early (the compute-
    # bound step the roofline describes), and one row alone, greedy, where a step is bound by
    # reading the weights rather than by compute.
    out["ours_steps_tok_s"] = decode_steps(problems, args.group_size, 1.0)
    out["ours_1row_tok_s"] = decode_steps(problems[:1], 1, 0)
    prompts = [tok.decode(encode_prompt(tok, p["question"], suite.schemas)) for p in rows]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    hf = []
    with torch.inference_mode():
        for _ in range(args.reps):
            t0 = time.perf_counter()
            gen = model.generate(**enc, max_new_tokens=args.completion, do_sample=True,
                                 temperature=1.0, top_k=0, pad_token_id=tok.pad_token_id)
            new = gen[:, enc.input_ids.shape[1]:]
            n_tok = int((new != tok.pad_token_id).sum())
            hf.append(n_tok / (time.perf_counter() - t0))
    out["hf_generate_tok_s"] = hf
    # One decode step for all rows reads every weight once (bandwidth bound) and does
    # ~2 * params flops per row (compute bound; attention over the cache not counted).
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = memory_bandwidth_gbs(model.device)
    flops = matmul_gflops(model.device, model.dtype)
    step_bw = weight_bytes / (bw * 1e9)
    step_flops = 2 * params * len(rows) / (flops * 1e9)
    out.update(dtype=str(model.dtype).replace("torch.", ""), weight_gb=weight_bytes / 1e9,
               bandwidth_gbs=bw, matmul_gflops=flops, bound_tok_s=len(rows) / step_bw,
               roofline_tok_s=len(rows) / max(step_bw, step_flops))
    return out


def run_worker(name, argv):
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--worker", name] + argv
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if p.returncode != 0:
        sys.exit(f"bench worker {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def med(xs):
    return statistics.median(xs), (min(xs), max(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--student", default="SmolLM2-135M", help="model short name, HF id or folder")
    ap.add_argument("--device", default=None, help="cpu | cuda (None: cuda where there is one)")
    ap.add_argument("--questions", type=int, default=8, help="questions a GRPO step")
    ap.add_argument("--group-size", type=int, default=4, help="rollouts per question")
    ap.add_argument("--completion", type=int, default=64, help="generated tokens a rollout")
    ap.add_argument("--micro-batch", type=int, default=8, help="rows per forward/backward")
    ap.add_argument("--prompt", choices=["tools", "short"], default="tools",
                    help="tools: the 12-tool system prompt; short: no tools listed")
    ap.add_argument("--reps", type=int, default=3, help="timed steps (and decode runs)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed GRPO steps first")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="matmul dtype for ours and TRL alike (model.compute_dtype)")
    ap.add_argument("--only", default="ours,trl,decode",
                    help="what to time, comma-separated: ours, trl, decode")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="results/bench.json", help="results JSON")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps({"ours": worker_ours, "trl": worker_trl,
                          "decode": worker_decode}[args.worker](args)))
        return
    argv = sys.argv[1:]
    res = {"command": " ".join(["bench.py"] + argv),
           "config": {k: v for k, v in vars(args).items() if k != "worker"},
           "machine": f"{os.cpu_count()} CPU cores ({torch.backends.cpu.get_cpu_capability()})" + (
               f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
           "torch_threads": torch.get_num_threads()}
    for name in args.only.split(","):
        res[name] = run_worker(name, argv)
        print(name, json.dumps(res[name]), flush=True)
    lines = ["| what | median | min - max | peak memory (GB) |", "|---|---|---|---|"]
    for name in ("ours", "trl"):
        if name in res:
            m, (lo, hi) = med(res[name]["step_s"])
            lines.append(f"| {name} GRPO step (s) | {m:.1f} | {lo:.1f} - {hi:.1f} | "
                         f"{res[name]['peak_gb']:.2f} |")
            if "rollout_s" in res[name]:
                m, (lo, hi) = med(res[name]["rollout_s"])
                lines.append(f"| ... of which rollout (s) | {m:.1f} | {lo:.1f} - {hi:.1f} | |")
    if "decode" in res:
        d = res["decode"]
        for key, label in (("ours_tok_s", "ours rollout"), ("hf_generate_tok_s", "HF generate")):
            m, (lo, hi) = med(d[key])
            lines.append(f"| {label} (tok/s incl. prefill, {d['rows']} rows) | {m:.1f} | {lo:.1f} - {hi:.1f} | |")
        lines.append(f"| bandwidth bound (tok/s: {d['weight_gb']:.2f} GB {d['dtype']} weights at "
                     f"{d['bandwidth_gbs']:.1f} GB/s) | {d['bound_tok_s']:.0f} | | |")
        lines.append(f"| roofline (tok/s: also ~2 flops/param/row at {d['dtype']} "
                     f"{d['matmul_gflops']:.0f} GFLOP/s) | {d['roofline_tok_s']:.0f} | | |")
        steps = med(d["ours_steps_tok_s"])
        lines.append(f"| ours decode steps, {d['rows']} rows (tok/s, no prefill) | {steps[0]:.1f} | "
                     f"{steps[1][0]:.1f} - {steps[1][1]:.1f} | |")
        m, (lo, hi) = med(d["ours_1row_tok_s"])
        lines.append(f"| ours decode, 1 row (tok/s, no prefill) | {m:.1f} | {lo:.1f} - {hi:.1f} | |")
        lines.append(f"| bandwidth bound, 1 row (tok/s) | {d['bound_tok_s'] / d['rows']:.0f} | | |")
        res["decode_fraction_of_bound"] = med(d["ours_tok_s"])[0] / d["bound_tok_s"]
        res["decode_fraction_of_roofline"] = med(d["ours_tok_s"])[0] / d["roofline_tok_s"]
        res["decode_1row_fraction_of_bound"] = m / (d["bound_tok_s"] / d["rows"])
        res["decode_steps_fraction_of_roofline"] = steps[0] / d["roofline_tok_s"]
    print("\n".join(lines))
    if "decode" in res:
        print(f"ours decode / bandwidth bound = {res['decode_fraction_of_bound']:.3f}; "
              f"/ roofline = {res['decode_fraction_of_roofline']:.3f} (decode steps alone: "
              f"{res['decode_steps_fraction_of_roofline']:.3f}); "
              f"1 row / its bandwidth bound = {res['decode_1row_fraction_of_bound']:.3f}")
    if "ours" in res and "trl" in res:
        res["ratio_ours_over_trl"] = med(res["ours"]["step_s"])[0] / med(res["trl"]["step_s"])[0]
        print(f"step time ours / TRL = {res['ratio_ours_over_trl']:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    res["table"] = "\n".join(lines)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
