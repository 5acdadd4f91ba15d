"""Why does a checkpoint fail? Greedy rollouts on the math test split, each wrong one sorted
into a kind.  python results/rl-probes/failures.py RUN_FOLDER [N]"""
import collections, json, os, re, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from model import load_model, rollout_weights, compute_dtype
from rollout import generate_rollouts
from tasks import load_suite, answers_match
from train import Config

run, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
cfg = Config(); tok, model = load_model(run, device='cpu'); model.eval()
suite = load_suite('math'); test = suite.split('test')[:n]
policy = rollout_weights(model, compute_dtype(model.device, 'auto'))
rs = []
for i in range(0, len(test), 25):
    rs += generate_rollouts(policy, tok, test[i:i + 25], suite.tools, suite.schemas, max_turns=5,
                            max_new_tokens=cfg.max_new_tokens, max_total_tokens=cfg.max_total_tokens,
                            temperature=0)
kinds = collections.Counter(); by_calls = collections.defaultdict(lambda: [0, 0]); examples = {}
for r in rs:
    p = r.problem; k = len(p['solution']); by_calls[k][0] += r.correct; by_calls[k][1] += 1
    if r.correct:
        kinds['right'] += 1; continue
    results = [x for resp in r.responses for x in resp]
    last = results[-1] if results else None
    used = [c for c in r.tool_calls if c]
    if r.truncated: kind = 'truncated'
    elif r.answer is None: kind = 'no box'
    elif not used: kind = 'no tool call'
    elif set(used) != set(p['teacher_tools']): kind = 'other tools than teacher'
    elif len(used) < len(p['solution']): kind = 'teacher tools, too few calls'
    elif any(answers_match(re.sub(r'[^0-9.\-]', '', str(x)) or 'x', p['answer']) for x in results):
        kind = 'right value computed, wrong one boxed'
    else: kind = 'teacher tools, wrong arguments'
    kinds[kind] += 1; examples.setdefault(kind, []).append(r.text[-600:])
print(json.dumps({'run': run, 'n': len(rs), 'kinds': kinds,
                  'by_calls_needed': {k: f'{a}/{b}' for k, (a, b) in sorted(by_calls.items())}}, indent=1))
for kind, ex in examples.items():
    print('=====', kind); print(ex[0]); print('-----'); print(ex[min(1, len(ex) - 1)])
