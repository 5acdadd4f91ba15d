"""experiments/time_to_accuracy.py: the minute an evaluation printed and the RL phase's CI,
on a hand-made evals.json."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))

import time_to_accuracy  # noqa: E402


def fake_run(tmp_path, name, end_correct):
    run = tmp_path / name
    run.mkdir()
    evals = {"start": {"accuracy": 0.0, "correct": [0, 0], "train_minutes": 0.0,
                       "eval_minutes": 1.0},
             "rl_start": {"accuracy": 0.25, "correct": [1, 0, 0, 0], "train_minutes": 5.0,
                          "eval_minutes": 2.0},
             "end": {"accuracy": sum(end_correct) / 4, "correct": end_correct,
                     "train_minutes": 10.0, "eval_minutes": 2.5}}
    (run / "evals.json").write_text(json.dumps(evals))
    return str(run)


def test_minutes_add_every_evaluation_so_far_and_the_gain_is_paired(tmp_path):
    rows = time_to_accuracy.timeline(fake_run(tmp_path, "gain", [1, 1, 1, 1]))
    # minute printed = training minutes + evaluations up to and including this one
    assert [(r[0], r[1]) for r in rows] == [("start", 1.0), ("rl_start", 8.0), ("end", 15.5)]
    assert rows[0][4] is None and rows[1][4] is None          # no RL phase before RL starts
    name, minute, acc, n, gain, lo, hi = rows[2]
    assert (acc, n) == (1.0, 4) and abs(gain - 0.75) < 1e-12
    assert 0 < lo <= gain <= hi == 1.0      # every paired difference is 0 or +1, 3 of 4 are +1


def test_first_minute_ci_above_zero_or_never(tmp_path, capsys):
    gain, flat = fake_run(tmp_path, "gain", [1, 1, 1, 1]), fake_run(tmp_path, "flat", [0, 1, 0, 0])
    time_to_accuracy.main(str(tmp_path / "t.png"), [("cpu", [gain, flat])])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| cpu | gain |") and lines[2].endswith("| 15.5 |")
    assert lines[3].startswith("| cpu | flat | +0.000 [") and lines[3].endswith("| never |")
    assert (tmp_path / "t.png").exists()
