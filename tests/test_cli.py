"""The command line as a user meets it: defaults from one source, --help, --config, one-line
errors with exit status 2, a missing model found missing in seconds, no network in CI."""
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, fields

import pytest
import torch

import runs
import train
from train import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_is_what_a_plain_run_takes_on_a_cpu(monkeypatch):
    """python train.py on a CPU runs Config() (the cpu preset is the defaults); --preset gpu
    changes GPU_PRESET's fields alone; the flags given win over either."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.parse_args([]) == Config(preset="cpu")
    assert (Config.steps, Config.max_sample_batches, Config.eval_n, Config.precision) == \
        (15, 4, 200, "fp32")                                     # make train's settings
    gpu = train.parse_args(["--preset", "gpu", "--steps", "7"])
    assert asdict(gpu) == {**asdict(Config()), **train.GPU_PRESET, "steps": 7, "preset": "gpu"}
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "tpu"])


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda"])
def test_the_warm_start_follows_the_student_not_the_device(monkeypatch, cuda):
    """On a CUDA machine (the gpu preset) as on a CPU, the 135M student, which calls no tool,
    gets its SFT warm start and a Qwen student starts RL directly; a given value wins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    plain = train.parse_args([])
    assert plain.preset == ("gpu" if cuda else "cpu") and plain.warmup_sft_steps == 18
    assert train.parse_args(["--student", "Qwen2.5-0.5B"]).warmup_sft_steps == 0
    assert train.parse_args(["--student", "Qwen/Qwen3-4B"]).warmup_sft_steps == 0
    assert train.parse_args(["--student", "Qwen2.5-0.5B", "--warmup-sft-steps", "3"]
                            ).warmup_sft_steps == 3


def test_every_flag_explains_itself_with_the_default_a_run_takes(monkeypatch, capsys):
    """Each Config field has a comment (its --help), and --help shows it with the value a plain
    run uses here and the gpu preset's where it differs."""
    helps = runs.field_help(Config)
    assert [f.name for f in fields(Config) if not helps.get(f.name)] == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--group-size GROUP_SIZE G rollouts per question [TRL: num_generations] " \
           "(default: 4; --preset gpu: 8)" in text
    assert "(default: 15; --preset gpu: 200)" in text and "[TRL: beta] (default: 0.001)" in text
    for f in fields(Config):
        assert "--" + f.name.replace("_", "-") in text, f.name


@pytest.mark.parametrize("script", ["evaluate.py", "teacher.py", "bench.py"])
def test_the_other_scripts_flags_have_help_and_defaults(script):
    p = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    options = [line.split()[0] for line in p.stdout.splitlines()
               if line.startswith("  --") and not line.startswith("  --help")]
    blocks = p.stdout.split("\n  --")[1:]
    assert options and len(blocks) == len(options)
    for block in blocks:                           # a line of help, with its default
        words = " ".join(block.split()[1:])
        assert len(words) > 10 and "default" in words, block


def test_config_file_replays_a_run(tmp_path):
    """--config RUN.json (the run.json a run wrote) gives that run's Config; flags still win."""
    cfg = Config(steps=3, group_size=6, lr=3e-5, reward="sparse", preset="cpu", seed=4)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"student": cfg.student, **asdict(cfg), "world_size": 1,
                                "machine": "2 CPU cores"}))
    assert train.parse_args(["--config", str(path)]) == cfg
    assert train.parse_args(["--config", str(path), "--seed", "5"]) == Config(**{**asdict(cfg),
                                                                                  "seed": 5})


BAD_SUITE = "def add(a: int, b: int) -> int:\n    return a +\n"
BAD_TRAJ = '{"question": "q", "solved": false}\n{"question": \n{"question": "r", "solved": false}\n'


@pytest.mark.parametrize("argv, said", [
    (["--group-size", "0"], "--group-size 0: GRPO's advantage compares"),
    (["--group-size", "1"], "--group-size 1: GRPO's advantage compares"),
    (["--lr", "-1"], "--lr -1.0: must be > 0"),
    (["--steps", "-3"], "--steps -3: at least 0"),
    (["--temperature", "0"], "--temperature 0.0: must be > 0"),
    (["--batch-size", "x"], "--batch-size: invalid int value: 'x'"),
    (["--suite", "{tmp}/bad_suite.py"], "bad_suite.py, line 2: invalid syntax"),
    (["--teacher", "{tmp}/bad.jsonl"], "bad.jsonl, line 2: not a trajectory record"),
    (["--teacher", "{tmp}/none.jsonl"], "no trajectory file"),
])
def test_bad_arguments_and_files_are_one_line_with_exit_status_2(tmp_path, capsys, argv, said):
    (tmp_path / "bad_suite.py").write_text(BAD_SUITE)
    (tmp_path / "bad.jsonl").write_text(BAD_TRAJ)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and said in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_command_itself_says_one_line(tmp_path):
    """The same, end to end: train.py exits 2 with one line and no traceback."""
    (tmp_path / "bad_suite.py").write_text(BAD_SUITE)
    p = subprocess.run([sys.executable, "train.py", "--suite", str(tmp_path / "bad_suite.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "line 2" in p.stderr and "Traceback" not in p.stderr


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]             # nothing listens there once it is closed


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_missing_hub_model_fails_in_seconds_with_the_command_that_gets_it(tmp_path, hub):
    """HF_HUB_OFFLINE=1, or a hub that cannot be reached (its endpoint a closed loopback port:
    huggingface_hub alone retries for ~50 s): one line naming `hf download` and the offline
    switch, in under 10 s, and no --out folder left behind."""
    env = dict(os.environ, HF_HUB_OFFLINE="1") if hub == "offline" else \
        dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    out = tmp_path / "run"
    t0 = time.time()
    p = subprocess.run([sys.executable, "train.py", "--student", "SomeOrg/missing", "--out",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert time.time() - t0 < 10 and p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "`hf download SomeOrg/missing`" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert not out.exists()


def test_a_missing_local_folder_is_not_sent_to_the_hub(tmp_path):
    p = subprocess.run([sys.executable, "evaluate.py", "--model", str(tmp_path / "nope"),
                        "--suite", "math", "--limit", "1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "no such folder" in p.stderr and "download" not in p.stderr
    assert "Traceback" not in p.stderr


def test_a_cached_hub_model_loads_without_asking_the_hub(tmp_path):
    """A hub id already in the HF cache loads at once with the hub unreachable and
    HF_HUB_OFFLINE unset (from_pretrained alone would retry the hub for ~50 s per file)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from model import load_model
    tok, _ = load_model("SmolLM2-135M", device="cpu")
    snapshot = tmp_path / "hub" / "models--SomeOrg--cached" / "snapshots" / ("0" * 40)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--SomeOrg--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--SomeOrg--cached" / "refs" / "main").write_text("0" * 40)
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="0",
               HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", "from model import load_model; "
                        "print(load_model('SomeOrg/cached')[1].config.hidden_size)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and p.stdout.split()[-1] == "16", p.stderr
    assert time.time() - t0 < 15
