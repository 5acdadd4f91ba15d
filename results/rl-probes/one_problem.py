import copy, os, random, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # repo root
import numpy as np, torch
from train import Config, grpo_step
from model import load_model
from tasks import load_suite
tok, model = load_model('runs/x-warm10', device='cpu'); s = load_suite('math')
random.seed(1); probs = random.sample(s.split('train'), 8); p = probs[int(sys.argv[1])]
print(p['question'], p['answer'], p['teacher_tools'])
cfg = Config(batch_size=1, group_size=8, lr=float(sys.argv[2]))
ref = copy.deepcopy(model).requires_grad_(False).eval()
opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
torch.manual_seed(0)
for step in range(int(sys.argv[3])):
    m = grpo_step(model, ref, opt, tok, s, [p], cfg)
    print(step, {k: round(m[k], 3) for k in ('reward_mean', 'accuracy', 'kl', 'trained_rows', 'response_tokens')}, flush=True)
