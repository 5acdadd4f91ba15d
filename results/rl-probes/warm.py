"""SFT warm start with greedy evals at chosen steps; saves a run folder per eval point."""
import sys, json, random, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # repo root
import numpy as np, torch
from train import Config, sft_step, accuracy, teacher_trajectories, save_checkpoint
from model import load_model
from tasks import load_suite
points = [int(x) for x in sys.argv[1].split(',')]; root = sys.argv[2]
cfg = Config(method='sft', eval_n=100, seed=int(sys.argv[3]) if len(sys.argv) > 3 else 0)
random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed)
tok, model = load_model(None, device='cpu'); suite = load_suite('math')
test = suite.split('test')[:100]; trajs = teacher_trajectories(cfg, suite, tok)
opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
for step in range(1, max(points) + 1):
    m = sft_step(model, opt, tok, random.sample(trajs, cfg.sft_batch_size), cfg)
    print(step, round(m['sft_loss'], 3), flush=True)
    if step in points:
        e = accuracy(model, tok, suite, test, cfg)
        print('eval', step, {k: v for k, v in e.items() if k != 'correct'}, flush=True)
        out = f'{root}-{step}'; os.makedirs(out, exist_ok=True)
        json.dump({'student': 'SmolLM2-135M', **cfg.__dict__, 'suite': 'math'}, open(f'{out}/run.json', 'w'))
        save_checkpoint(f'{out}/checkpoint.pt', model, opt, step, cfg, 'sft')
