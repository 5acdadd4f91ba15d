"""A trained run leaves the repo: RUN/model is a standard folder that plain transformers loads,
with the same logits, a chat template that renders the prompt the student trained on, and the
same evaluation as the run folder itself."""
import json
import os
import subprocess
import sys

import pytest
import torch

import evaluate
import train
from model import EXPORT_DIR, export, load_model
from rollout import encode_prompt
from tasks import load_suite
from test_train_e2e import TINY

# Runs outside the repository (cwd elsewhere, no project module on the path): what a user of the
# exported folder has. Prints the logits of a fixed input and the ids of two rendered prompts.
PLAIN = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, problems = sys.argv[1], json.load(open(sys.argv[2]))
tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
ids = tok("What is 3 + 4? <tool_call>", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits[0, -1].tolist()
prompts = [tok.apply_chat_template([{"role": "user", "content": p["question"]}], tools=p["tools"],
                                   add_generation_prompt=True, tokenize=False) for p in problems]
print(json.dumps({"ids": ids[0].tolist(), "logits": logits, "dtype": str(model.dtype),
                  "prompts": [tok(p, add_special_tokens=False).input_ids for p in prompts]}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1 + 1-step run sampling in bf16 (its master weights fp32), evaluated on 20 problems."""
    out = str(tmp_path_factory.mktemp("export") / "run")
    train.train(train.Config(**dict(TINY, eval_n=20), warmup_sft_steps=1, steps=1,
                             precision="bf16", out=out))
    return out


def test_a_finished_run_writes_a_standard_model_folder(run):
    folder = os.path.join(run, EXPORT_DIR)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "run.json"} <= set(os.listdir(folder))
    assert "chat_template" in open(os.path.join(folder, "tokenizer_config.json")).read() or \
        os.path.exists(os.path.join(folder, "chat_template.jinja"))
    umask = os.umask(0)
    os.umask(umask)                  # readable by whoever serves it, as any file written here
    assert all(os.stat(os.path.join(folder, f)).st_mode & 0o777 == 0o666 & ~umask
               for f in os.listdir(folder))


def test_plain_transformers_loads_it_with_the_same_logits_and_prompts(run, tmp_path):
    """No project import: the exported weights give load_model(run)'s logits (fp32, atol 1e-5)
    and apply_chat_template(messages, tools=...) gives rollout.encode_prompt's token ids, for a
    math problem (the suite's tools) and a BFCL one (its own functions)."""
    math, bfcl = load_suite("math"), load_suite("bfcl")
    problems = [dict(question=math.split("test")[0]["question"], tools=math.schemas),
                dict(question=bfcl.problems[3]["question"], tools=bfcl.problems[3]["schemas"])]
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "plain.py").write_text(PLAIN)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "plain.py", os.path.join(run, EXPORT_DIR),
                        "problems.json"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    tok, model = load_model(run, device="cpu")
    with torch.no_grad():
        mine = model(torch.tensor([got["ids"]])).logits[0, -1]
    assert got["dtype"] == "torch.float32"
    assert torch.allclose(torch.tensor(got["logits"]), mine, atol=1e-5)
    assert got["prompts"] == [encode_prompt(tok, p["question"], p["tools"]) for p in problems]


def test_the_exported_folder_and_the_run_evaluate_as_the_run_did(run, tmp_path):
    """evaluate.py --model RUN/model and --model RUN on the same 20 problems: the same
    per-problem results and rates (the folder carries run.json: limits and precision), and
    those of the run's own last evaluation (one precision per run: bf16 here, the weights
    sampled from as train.py samples)."""
    scores = {"train": json.load(open(os.path.join(run, "evals.json")))["end"]}
    for name in ("run", "exported"):
        out = tmp_path / f"{name}.json"
        model = run if name == "run" else os.path.join(run, EXPORT_DIR)
        evaluate.main(["--model", model, "--suite", "math", "--limit", "20", "--out", str(out)])
        scores[name] = json.loads(out.read_text())["results"][model]["math"]
    a, b, c = scores["run"], scores["exported"], scores["train"]
    assert len(a["correct"]) == 20 and a["split"] == b["split"] == "test"
    for key in ("correct", "tool_call_rate", "boxed_rate", "truncated_rate", "response_tokens",
                "mean_turns"):
        assert a[key] == b[key] == c[key], key
    assert a["per_problem"] == b["per_problem"] and "bfloat16" in a["machine"]


def test_export_command_writes_a_folder_anywhere(run, tmp_path):
    out = str(tmp_path / "elsewhere")
    p = subprocess.run([sys.executable, "model.py", "export", run, out],
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert os.path.exists(os.path.join(out, "model.safetensors")) and out in p.stdout
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".export-")]   # no temp left
    with pytest.raises(Exception):
        export(str(tmp_path / "no-run"), str(tmp_path / "x"))
