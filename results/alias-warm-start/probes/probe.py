"""probe: python probe.py MODEL SUITE LIMIT [SHOW]"""
import sys, collections, time
sys.path.insert(0, "/work/main")
from evaluate import evaluate_suite
from model import load_model, compute_dtype, pick_device
model_path, suite, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
show = int(sys.argv[4]) if len(sys.argv) > 4 else 3
dev = pick_device(None)
tok, model = load_model(model_path, device=dev, dtype=compute_dtype(dev, "auto"))
t0 = time.time()
out, rs = evaluate_suite(model, tok, suite, limit=limit, batch_size=25, max_new_tokens=64,
                         max_total_tokens=192, progress=False)
print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items() if k != "correct"}, f"{time.time()-t0:.0f}s")
by = collections.defaultdict(list)
for r, c in zip(rs, out["correct"]):
    by[tuple(r.problem["teacher_tools"])].append(c)
for k, v in sorted(by.items()):
    print(k, sum(v), "/", len(v))
shown = 0
for r, c in zip(rs, out["correct"]):
    if not c and shown < show:
        shown += 1
        print("=" * 80); print("Q:", r.problem["question"], "| A:", r.problem["answer"])
        print("".join(r.turns)[:900])
