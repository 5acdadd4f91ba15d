import sys, time
sys.path.insert(0, "/work/main")
from evaluate import evaluate_suite
from model import load_model, compute_dtype, pick_device
dev = pick_device(None)
for m in sys.argv[2:]:
    tok, model = load_model(m, device=dev, dtype=compute_dtype(dev, "auto"))
    t0 = time.time()
    out, rs = evaluate_suite(model, tok, sys.argv[1], limit=200, batch_size=25, max_new_tokens=64,
                             max_total_tokens=192, progress=False, trained_on=(sys.argv[1],))
    print(m, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items() if k != "correct"}, f"{time.time()-t0:.0f}s", flush=True)
