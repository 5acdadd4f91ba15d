"""experiments/replicate.py: resuming, which runs it trains, its tables and CIs (fakes for
training and evaluation: no model runs here)."""
import pytest


def test_replicate_evaluation_resumes_suite_by_suite(tmp_path, monkeypatch):
    """replicate.run_eval writes eval_NAME.json after each suite; run again after a crash it
    evaluates only the suites missing from that file."""
    import json
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    calls = []
    run = {"accuracy": 0.5, "killed_at": "shop"}

    def fake_evaluate_model(model, suites, on_suite, **kw):
        """evaluate_model's contract: on_suite(results so far) after each suite."""
        calls.append(suites)
        results = {}
        for s in suites:
            if s == run["killed_at"]:
                raise KeyboardInterrupt                 # killed in the middle of the run
            results[s] = {"accuracy": run["accuracy"]}
            on_suite(results)
        return results
    monkeypatch.setattr(replicate, "evaluate_model", fake_evaluate_model)
    with pytest.raises(KeyboardInterrupt):
        replicate.run_eval("sft-s0", "run", str(tmp_path), None, {})
    done = json.loads((tmp_path / "eval_sft-s0.json").read_text())
    assert list(done) == replicate.SUITES[:replicate.SUITES.index("shop")]
    calls.clear()
    run.update(accuracy=0.25, killed_at=None)
    res = replicate.run_eval("sft-s0", "run", str(tmp_path), None, {})
    assert calls == [[s for s in replicate.SUITES if s not in done]]   # one load, the rest
    assert list(res) == replicate.SUITES and res["math"]["accuracy"] == 0.5
    assert res["shop"]["accuracy"] == 0.25
    assert json.loads((tmp_path / "eval_sft-s0.json").read_text()) == res


def fake_replicate(monkeypatch, replicate, preset, runs, report, train, evaluate, plots=False):
    """replicate.py with training and evaluation replaced, writing under runs/ and report/
    (plots=True keeps the accuracy plots; the training curves are skipped either way)."""
    monkeypatch.setattr(replicate, "run_train", train)
    monkeypatch.setattr(replicate, "run_eval", evaluate)
    monkeypatch.setattr(replicate, "curves", lambda *a: None)
    if not plots:
        monkeypatch.setattr(replicate, "plot", lambda *a: None)
    monkeypatch.setitem(replicate.PRESETS, preset, dict(replicate.PRESETS[preset], out=str(runs),
                                                        report=str(report)))


def test_replicate_evaluates_each_run_before_training_the_next(tmp_path, monkeypatch):
    """A seed's runs are each evaluated, and table.md rewritten, right after training, so an
    invocation cut off mid-seed leaves its finished comparisons behind; the warm start (every
    RL run's init) is trained and evaluated first. Run again from a clone that has only the
    report folder, it trains only what has no complete evaluation (and the warm start they need)."""
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report, events, precisions = tmp_path / "results", [], set()

    def fake_train(kwargs):
        events.append(("train", os.path.basename(kwargs["out"]), (report / "table.md").exists()))
        precisions.add(replicate.Config(**kwargs).precision)
        os.makedirs(kwargs["out"], exist_ok=True)
        (tmp_path / "runs" / os.path.basename(kwargs["out"]) / "metrics.jsonl").write_text("{}\n")
        (tmp_path / "runs" / os.path.basename(kwargs["out"]) / "result.json").write_text("{}")

    def fake_eval(name, out, root, limit, gen, suites):
        events.append(("eval", name))
        precisions.add(gen["precision"])
        res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [True, False]}
               for s in replicate.SUITES}
        if name not in ("grpo-mentor-s0", "warm-s0"):        # these two "cut off"
            replicate.write_json(os.path.join(root, f"eval_{name}.json"), res)
        return res
    fake_replicate(monkeypatch, replicate, "cpu", tmp_path / "runs", report, fake_train, fake_eval,
                   plots=True)
    replicate.main(["--preset", "cpu", "--seeds", "0"])
    assert events == [("eval", "base"), ("train", "warm-s0", False), ("eval", "warm-s0"),
                      ("train", "sft-s0", True), ("eval", "sft-s0"),
                      ("train", "grpo-mentor-s0", True), ("eval", "grpo-mentor-s0"),  # MENTOR
                      ("train", "grpo-sparse-s0", True), ("eval", "grpo-sparse-s0")]  # first
    assert "| warm | 1 |" in (report / "table.md").read_text()
    assert (report / "metrics_grpo-sparse-s0.jsonl").exists()
    assert precisions == {"fp32"}           # evaluated in the precision train.py's preset trains in
    events.clear()
    replicate.main(["--preset", "cpu", "--seeds", "0"])
    assert [e[:2] for e in events if e[0] == "train"] == [("train", "warm-s0"),
                                                          ("train", "grpo-mentor-s0")]


def test_replicate_runs_trains_only_the_named_methods(tmp_path, monkeypatch):
    """--runs grpo-mentor grpo-sparse (a session too short for a whole seed) trains the warm
    start they need and those two, evaluates neither the warm start nor SFT; a later
    `--runs warm sft` in a fresh clone retrains the warm start, evaluates it, and does SFT."""
    import os
    import shutil
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report, events = tmp_path / "results", []

    def fake_train(kwargs):
        events.append(("train", os.path.basename(kwargs["out"])))
        os.makedirs(kwargs["out"], exist_ok=True)
        for f in ("metrics.jsonl", "result.json"):
            (tmp_path / "runs" / os.path.basename(kwargs["out"]) / f).write_text("{}\n")

    def fake_eval(name, out, root, limit, gen, suites):
        events.append(("eval", name))
        res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0]} for s in suites}
        replicate.write_json(os.path.join(root, f"eval_{name}.json"), res)
        return res
    fake_replicate(monkeypatch, replicate, "cpu", tmp_path / "runs", report, fake_train, fake_eval)
    replicate.main(["--preset", "cpu", "--seeds", "0", "--runs", "grpo-mentor", "grpo-sparse"])
    assert events == [("eval", "base"), ("train", "warm-s0"),
                      ("train", "grpo-mentor-s0"), ("eval", "grpo-mentor-s0"),
                      ("train", "grpo-sparse-s0"), ("eval", "grpo-sparse-s0")]
    events.clear()
    shutil.rmtree(tmp_path / "runs")                         # the next session: a fresh clone
    replicate.main(["--preset", "cpu", "--seeds", "0", "--runs", "warm", "sft"])
    assert events == [("eval", "base"), ("train", "warm-s0"), ("train", "warm-s0"),  # checked,
                      ("eval", "warm-s0"), ("train", "sft-s0"), ("eval", "sft-s0")]  # then on
    events.clear()
    replicate.main(["--preset", "cpu", "--seeds", "1", "--runs", "warm"])     # a new seed
    assert events == [("eval", "base"), ("train", "warm-s1"), ("eval", "warm-s1")]
    with pytest.raises(SystemExit):
        replicate.main(["--preset", "cpu", "--runs", "grpo-typo"])


def recording_train(trained):
    """A fake run_train: records each run's settings in trained[run] and leaves what a finished
    run leaves (metrics.jsonl, result.json, run.json)."""
    import os

    def fake_train(kwargs):
        trained[os.path.basename(kwargs["out"])] = kwargs
        os.makedirs(kwargs["out"], exist_ok=True)
        for f, text in (("metrics.jsonl", "{}\n"), ("result.json", "{}"), ("run.json", "{}")):
            with open(os.path.join(kwargs["out"], f), "w") as fh:
                fh.write(text)
    return fake_train


def test_replicate_cpu_aliases_trains_every_method_from_the_aliased_warm_start(tmp_path,
                                                                              monkeypatch):
    """cpu-aliases: the warm start trains on the aliased math suite, then SFT, like both RL
    runs, takes rl_steps steps from it; table.md gets an sft - warm row and the units suite."""
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report, trained = tmp_path / "results", {}

    def fake_eval(name, out, root, limit, gen, suites):
        res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0]} for s in suites}
        replicate.write_json(os.path.join(root, f"eval_{name}.json"), res)
        return res
    fake_replicate(monkeypatch, replicate, "cpu-aliases", tmp_path / "runs", report,
                   recording_train(trained), fake_eval)
    replicate.main(["--preset", "cpu-aliases", "--seeds", "0"])
    warm, rl = trained["warm-s0"], replicate.PRESETS["cpu-aliases"]["rl_steps"]
    assert list(trained) == ["warm-s0", "sft-s0", "grpo-mentor-s0", "grpo-sparse-s0"]
    assert warm["suite"].endswith("suite_math_aliases.py") and warm["method"] == "sft"
    for name in ("sft-s0", "grpo-mentor-s0", "grpo-sparse-s0"):
        assert trained[name]["init"] == warm["out"] and trained[name]["steps"] == rl
        assert trained[name].get("suite", "math") == "math"          # math itself from there
    table = (report / "table.md").read_text()
    assert "| sft - warm | 1 |" in table and "sft warm start + 10 SFT steps" in table
    assert "units acc (n=2)" in table                   # the suite a tool-list reader can reach
    assert "sft-s0: machine not recorded (from warm-s0 as in metrics_warm-s0.jsonl)" in table


def test_replicate_sft_slow_is_sft_at_the_rl_learning_rate(tmp_path, monkeypatch):
    """--sft-slow adds sft-slow: the sft run (same warm start, same steps) at RL's lr instead of
    sft_lr; table.md gets its row and the MENTOR - sft-slow and sft-slow - warm CIs, and keeps
    them without the flag; a run without the flag trains no sft-slow."""
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report, trained = tmp_path / "results", {}

    def fake_eval(name, out, root, limit, gen, suites):
        res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0,
                   "correct": [0, 0] if name.startswith("sft-slow") else [1, 1]} for s in suites}
        replicate.write_json(os.path.join(root, f"eval_{name}.json"), res)
        return res
    fake_replicate(monkeypatch, replicate, "cpu-aliases", tmp_path / "runs", report,
                   recording_train(trained), fake_eval)
    replicate.main(["--preset", "cpu-aliases", "--seeds", "0", "--sft-slow"])
    assert list(trained) == ["warm-s0", "sft-s0", "grpo-mentor-s0", "grpo-sparse-s0",
                             "sft-slow-s0"]
    sft, slow = trained["sft-s0"], trained["sft-slow-s0"]
    cfg = replicate.Config(**sft)
    assert slow["sft_lr"] == cfg.lr == 1e-5 and cfg.sft_lr == 1e-4
    assert {k: v for k, v in slow.items() if k not in ("sft_lr", "out")} == \
        {k: v for k, v in sft.items() if k not in ("sft_lr", "out")}
    for _ in range(2):                                   # then --report, without the flag
        table = (report / "table.md").read_text()
        assert "| sft-slow | 1 |" in table and "sft-slow as sft at lr 1e-05 (sft: 0.0001)" in table
        assert "| grpo-mentor - sft-slow | 1 | +1.000 [+1.000, +1.000] |" in table
        assert "| sft-slow - warm | 1 | -1.000 [-1.000, -1.000] |" in table
        replicate.main(["--preset", "cpu-aliases", "--report"])
    trained.clear()
    replicate.main(["--preset", "cpu-aliases", "--seeds", "1"])
    assert "sft-slow-s1" not in trained and "grpo-mentor-s1" in trained


def test_replicate_tables_every_finished_evaluation(tmp_path, monkeypatch):
    """Seeds 0 and 1 were evaluated in earlier sessions: `--report` tables them without
    training, and an invocation that trains only seed 2 tables them from its first report on
    (table.md is never rewritten with fewer seeds than the folder holds)."""
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report = tmp_path / "results"
    report.mkdir()
    res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0]}
           for s in replicate.SUITES}
    for name in ["base"] + [f"{m}-s{s}" for s in (0, 1)
                            for m in ("warm", "sft", "grpo-sparse", "grpo-mentor")]:
        replicate.write_json(str(report / f"eval_{name}.json"), res)
    # warm-s1's evaluation stopped before lookup: no row of its own, but the RL - warm rows use
    # its suites (lookup from seed 0 alone)
    replicate.write_json(str(report / "eval_warm-s1.json"),
                         {s: v for s, v in res.items() if s != "lookup"})
    tables_seen = []

    def fake_train(kwargs):
        tables_seen.append((os.path.basename(kwargs["out"]), (report / "table.md").read_text()
                            if (report / "table.md").exists() else ""))

    def fake_eval(name, out, root, limit, gen, suites):
        replicate.write_json(os.path.join(root, f"eval_{name}.json"), res)
        return res
    fake_replicate(monkeypatch, replicate, "cpu", tmp_path / "runs", report, fake_train, fake_eval)
    replicate.main(["--preset", "cpu", "--report"])
    assert tables_seen == []
    table = (report / "table.md").read_text()
    assert "| grpo-mentor | 2 |" in table and "| grpo-mentor - sft | 2 |" in table
    assert "| warm | 1 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| grpo-mentor - warm | 2 |"))
    assert row.rstrip(" |").endswith("+0.000 [+0.000, +0.000] (1 seeds)")       # lookup
    replicate.main(["--preset", "cpu", "--seeds", "2"])     # seeds 0 and 1 from the folder
    assert [name for name, _ in tables_seen] == ["warm-s2", "sft-s2", "grpo-mentor-s2",
                                                 "grpo-sparse-s2"]
    assert "| sft | 3 |" in dict(tables_seen)["grpo-mentor-s2"]       # seeds 0 and 1 included
    assert "| grpo-mentor - grpo-sparse | 3 |" in (report / "table.md").read_text()
    # warm-s2 was lost before its evaluation (fake_train leaves no checkpoint) and its RL runs
    # are evaluated: not retrained (a retrained one is another model, not where they began)
    assert not (report / "eval_warm-s2.json").exists()
    tables_seen.clear()
    replicate.main(["--preset", "cpu", "--seeds", "2"])
    assert tables_seen == [] and not (report / "eval_warm-s2.json").exists()
    assert "| grpo-mentor - grpo-sparse | 3 |" in (report / "table.md").read_text()
    assert "seeds [0, 1, 2]" in (report / "table.md").read_text()


def test_replicate_sets_aside_a_partial_evaluation_of_a_lost_checkpoint(tmp_path, monkeypatch):
    """A fresh clone has eval_grpo-sparse-s1.json with 4 of 6 suites but no runs/: the run is
    trained anew, so its old suites (another model) are kept aside, not mixed with the new
    ones; the RL runs record the warm start they started from, and table.md says where each
    run was trained."""
    import json
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report, runs = tmp_path / "results", tmp_path / "runs"
    report.mkdir()
    old = {s: {"n": 2, "accuracy": 1.0, "tool_jsd": 0.0, "correct": [1, 1]}
           for s in replicate.SUITES[:4]}
    replicate.write_json(str(report / "eval_grpo-sparse-s0.json"), old)
    evaluated_suites = {}

    def fake_train(cfg):                          # a finished run: metrics, settings, result
        os.makedirs(cfg.out, exist_ok=True)
        for f, text in (("metrics.jsonl", f'{{"sft_loss": {len(cfg.out)}}}\n'),
                        ("run.json", json.dumps({"machine": "test CPU"})), ("result.json", "{}")):
            with open(os.path.join(cfg.out, f), "w") as fh:
                fh.write(text)

    def fake_evaluate_model(model, suites, on_suite, **kw):
        evaluated_suites[os.path.basename(model)] = suites
        res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0]} for s in suites}
        on_suite(res)
        return res
    monkeypatch.setattr(replicate, "train", fake_train)
    monkeypatch.setattr(replicate, "evaluate_model", fake_evaluate_model)
    monkeypatch.setattr(replicate, "curves", lambda *a: None)
    monkeypatch.setattr(replicate, "plot", lambda *a: None)
    monkeypatch.setitem(replicate.PRESETS, "cpu", dict(replicate.PRESETS["cpu"],
                        out=str(runs), report=str(report)))
    replicate.main(["--preset", "cpu", "--seeds", "0"])
    assert evaluated_suites["grpo-sparse-s0"] == replicate.SUITES       # all of it, anew
    assert json.loads((report / "eval_grpo-sparse-s0.stale.json").read_text()) == old
    new = json.loads((report / "eval_grpo-sparse-s0.json").read_text())
    assert all(new[s]["accuracy"] == 0.5 for s in replicate.SUITES)
    warm_sha = replicate.losses_sha(str(report / "metrics_warm-s0.jsonl"))
    for name in ("grpo-sparse-s0", "grpo-mentor-s0"):
        assert json.loads((report / f"run_{name}.json").read_text())["init_sha"] == warm_sha
    table = (report / "table.md").read_text()
    assert "- seed 0: grpo-mentor-s0: test CPU (from warm-s0 as in metrics_warm-s0.jsonl)" in table
    # another warm start (retrained elsewhere) is named as such
    (report / "metrics_warm-s0.jsonl").write_text('{"sft_loss": 1.5}\n')
    assert "(from another warm start, " in "\n".join(replicate.provenance(str(report), [0]))


def test_a_retrained_warm_start_keeps_its_evaluation_only_with_the_same_losses(tmp_path,
                                                                                monkeypatch):
    """A later session retrains a lost warm start, its first CHECK_STEPS steps first. With the
    recorded SFT losses (timings aside) it is the same model and its evaluation stands; with
    other losses and no run trained from the old one, the old evaluation, metrics and settings
    are kept aside (an earlier .stale file is not overwritten) and the new one takes over."""
    import json
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    root, out = tmp_path / "results", tmp_path / "runs" / "warm-s0"
    root.mkdir()
    losses, steps_trained = [1.0850736574295463, 0.5721851634543117, 0.31], []

    def fake_train(cfg_kwargs):                    # writes the first `steps` losses, done
        steps_trained.append(cfg_kwargs["steps"])
        os.makedirs(cfg_kwargs["out"], exist_ok=True)
        with open(os.path.join(cfg_kwargs["out"], "metrics.jsonl"), "w") as f:
            for i, loss in enumerate(losses[:cfg_kwargs["steps"]]):   # other step times
                f.write(json.dumps({"phase": "sft", "step": i + 1, "sft_loss": loss,
                                    "step_time": 20.0 + len(os.listdir(root))}) + "\n")
        (out / "run.json").write_text(json.dumps({"machine": f"CPU {losses[1]}"}))
        (out / "result.json").write_text("{}")
    monkeypatch.setattr(replicate, "run_train", fake_train)
    cfg = {"out": str(out), "steps": 3}
    assert replicate.retrain_warm(str(root), "warm-s0", cfg, {})           # nothing recorded
    assert steps_trained == [3]
    first = (root / "metrics_warm-s0.jsonl").read_text()
    replicate.write_json(str(root / "eval_warm-s0.json"), {"math": {"accuracy": 0.4}})
    (root / "eval_warm-s0.stale.json").write_text('{"an": "older one"}')
    results = {"warm-s0": {"math": {"accuracy": 0.4}}}
    steps_trained.clear()
    import shutil
    shutil.rmtree(out)                                                     # a new session
    assert replicate.retrain_warm(str(root), "warm-s0", cfg, results)      # the same
    assert steps_trained == [2, 3]                            # checked after 2, then the rest
    # the record stands byte for byte (its step times too): runs may carry the file's hash
    assert (root / "metrics_warm-s0.jsonl").read_text() == first
    assert (root / "eval_warm-s0.json").exists() and "warm-s0" in results
    shutil.rmtree(out)
    losses[1] += 1e-12                                                     # another model
    assert replicate.retrain_warm(str(root), "warm-s0", cfg, results)
    assert not (root / "eval_warm-s0.json").exists() and "warm-s0" not in results
    assert (root / "eval_warm-s0.stale.json").read_text() == '{"an": "older one"}'
    assert json.loads((root / "eval_warm-s0.stale-2.json").read_text())["math"]["accuracy"] == 0.4
    assert replicate.sft_losses(str(root / "metrics_warm-s0.stale.jsonl"))[1]["sft_loss"] == \
        0.5721851634543117
    assert replicate.sft_losses(str(root / "metrics_warm-s0.jsonl"))[1]["sft_loss"] == losses[1]
    assert (root / "run_warm-s0.stale.json").exists()


def test_a_warm_start_this_machine_cannot_reproduce_leaves_its_seed_alone(tmp_path,
                                                                          monkeypatch):
    """Runs of seed 0 started from a recorded warm start that this machine trains otherwise:
    after CHECK_STEPS steps the retraining stops, nothing in results/ changes, and the seed's
    other runs are not trained (they would pair with runs from another warm start); seed 1,
    with nothing recorded, is trained. A divergence after the check stops it too."""
    import json
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    report, runs = tmp_path / "results", tmp_path / "runs"
    report.mkdir()
    recorded = [{"phase": "sft", "step": i + 1, "sft_loss": x, "step_time": 3.0}
                for i, x in enumerate([1.05, 0.62, 0.41])]
    (report / "metrics_warm-s0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recorded))
    (report / "run_warm-s0.json").write_text('{"machine": "2 CPU cores (AVX512), bf16"}')
    sha = replicate.losses_sha(str(report / "metrics_warm-s0.jsonl"))
    res = {s: {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0]}
           for s in replicate.PRESETS["cpu-aliases"]["suites"]}
    for name in ("warm-s0", "sft-s0", "grpo-mentor-s0"):
        replicate.write_json(str(report / f"eval_{name}.json"), res)
    for name in ("sft-s0", "grpo-mentor-s0"):
        (report / f"run_{name}.json").write_text(json.dumps({"init_sha": sha}))
    before = {f: (report / f).read_text() for f in os.listdir(report)}
    mine, trained = [1.05, 0.595, 0.41], []

    def fake_train(kwargs):
        trained.append((os.path.basename(kwargs["out"]), kwargs["steps"]))
        os.makedirs(kwargs["out"], exist_ok=True)
        with open(os.path.join(kwargs["out"], "metrics.jsonl"), "w") as f:
            for i, x in enumerate(mine[:kwargs["steps"]]):
                f.write(json.dumps({"phase": "sft", "step": i + 1, "sft_loss": x}) + "\n")
        for f in ("result.json", "run.json"):
            with open(os.path.join(kwargs["out"], f), "w") as fh:
                fh.write("{}")

    def fake_eval(name, out, root, limit, gen, suites):
        replicate.write_json(os.path.join(root, f"eval_{name}.json"), res)
        return res
    fake_replicate(monkeypatch, replicate, "cpu-aliases", runs, report, fake_train, fake_eval)
    replicate.main(["--preset", "cpu-aliases", "--seeds", "0", "1"])
    assert trained[0] == ("warm-s0", 2) and not (runs / "warm-s0").exists()
    assert [t for t, _ in trained[1:]] == ["warm-s1", "sft-s1", "grpo-mentor-s1",
                                           "grpo-sparse-s1"]                    # seed 1 whole
    assert all((report / f).read_text() == text for f, text in before.items()
               if f != "table.md")                                  # seed 0 untouched
    assert not (report / "eval_grpo-sparse-s0.json").exists()
    # the same after the check: a later step parts (step 3), the seed is left alone too
    mine[1:], trained[:] = [0.62, 0.40], []
    replicate.main(["--preset", "cpu-aliases", "--seeds", "0"])
    assert trained == [("warm-s0", 2), ("warm-s0", 30)] and not (runs / "warm-s0").exists()
    assert (report / "metrics_warm-s0.jsonl").read_text() == before["metrics_warm-s0.jsonl"]


def test_runs_from_different_warm_starts_are_not_paired(tmp_path):
    """Seed 1's sparse run started from another warm start than its MENTOR run: the MENTOR -
    sparse CI uses seed 0 alone; runs that do not say where they started still pair."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate
    ok = {"math": {"n": 2, "accuracy": 1.0, "tool_jsd": 0.0, "correct": [1, 1]}}
    bad = {"math": {"n": 2, "accuracy": 0.0, "tool_jsd": 0.0, "correct": [0, 0]}}
    results = {"base": bad, "grpo-mentor-s0": ok, "grpo-sparse-s0": bad,
               "grpo-mentor-s1": ok, "grpo-sparse-s1": ok}
    starts = {"grpo-mentor-s0": None, "grpo-sparse-s0": {"a"},
              "grpo-mentor-s1": {"a"}, "grpo-sparse-s1": {"b"}}
    table, _ = replicate.tables(results, ["base", "grpo-sparse", "grpo-mentor"], [0, 1],
                                ["math"], starts=starts)
    row = next(line for line in table.splitlines() if line.startswith("| grpo-mentor - grpo-sparse"))
    assert row == "| grpo-mentor - grpo-sparse | 1 | +1.000 [+1.000, +1.000] |"
    table, _ = replicate.tables(results, ["base", "grpo-sparse", "grpo-mentor"], [0, 1], ["math"])
    assert "| grpo-mentor - grpo-sparse | 2 | +0.500" in table      # nothing recorded: paired


def test_tool_use_tables_mean_and_std_over_seeds():
    """table.md's tool-use tables: per method, the mean ± std over seeds of each evaluation's
    tool-set match and hallucinated-tool rate; left out when an evaluation lacks the metric."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate

    def ev(match, hall):
        return {"math": {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0],
                         "tool_set_match": match, "hallucinated_tool_rate": hall}}
    results = {"base": ev(0.0, 0.0), "grpo-mentor-s0": ev(1.0, 0.0),
               "grpo-mentor-s1": ev(0.5, 0.5)}
    table, _ = replicate.tables(results, ["base", "grpo-mentor"], [0, 1], ["math"])
    match, hall = table.split("Tool-set match")[1], table.split("Hallucinated-tool rate")[1]
    assert "| grpo-mentor | 0.750 ± 0.250 |" in match.split("\n\n")[1]
    assert "| grpo-mentor | 0.250 ± 0.250 |" in hall.split("\n\n")[1]
    assert "| base | 0.000 |" in match.split("\n\n")[1]
    del results["grpo-mentor-s1"]["math"]["tool_set_match"]
    table, _ = replicate.tables(results, ["base", "grpo-mentor"], [0, 1], ["math"])
    assert "Tool-set match" not in table and "Hallucinated-tool rate" in table


def test_tool_use_ci_from_evaluations_kept_per_problem():
    """An evaluation that keeps tool use per problem (evaluate.py's per_problem) gives the two
    claims a paired CI of it. By hand: MENTOR matches the teacher's tools on both problems, SFT
    on one, so the differences are (0, 1): resampled means 0, 1/2, 1 with probability 1/4,
    1/2, 1/4, the 95% interval [0, 1]. Without per-problem values there is no CI table."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import replicate

    def ev(match, keep=True):
        r = {"n": 2, "accuracy": 0.5, "tool_jsd": 0.0, "correct": [1, 0],
             "tool_set_match": sum(match) / 2, "hallucinated_tool_rate": 0.0}
        if keep:
            r["per_problem"] = {"tool_set_match": match, "hallucinated_tool_rate": [0, 0]}
        return {"math": r}
    results = {"base": ev([0, 0]), "grpo-mentor-s0": ev([1, 1]), "sft-s0": ev([0, 1])}
    table, _ = replicate.tables(results, ["base", "sft", "grpo-mentor"], [0], ["math"])
    match = table.split("Tool-set match")[1].split("Hallucinated-tool rate")[0]
    hall = table.split("Hallucinated-tool rate")[1].split("accuracy difference")[0]
    assert "| grpo-mentor - sft | 1 | +0.500 [+0.000, +1.000] |" in match
    assert "| grpo-mentor - sft | 1 | +0.000 [+0.000, +0.000] |" in hall
    assert "grpo-mentor - grpo-sparse" not in match               # no sparse run
    results["sft-s0"] = ev([0, 1], keep=False)
    table, _ = replicate.tables(results, ["base", "sft", "grpo-mentor"], [0], ["math"])
    assert "CI of its difference" not in table and "| grpo-mentor - sft | 1 | +0.000" in table


def test_mechanism_tool_use_resumes_and_pairs_every_arm_with_mentor(tmp_path, monkeypatch):
    """mechanism.tool_use saves each suite as it is evaluated and, run again, evaluates only
    the missing ones; tool_use_report pairs MENTOR with every other arm by seed and problem."""
    import json
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import mechanism
    monkeypatch.setattr(mechanism, "ROOT", str(tmp_path))
    calls, kill = [], {"at": "bfcl"}

    def fake_evaluate_model(run, suites, on_suite, **kw):
        calls.append(suites)
        match = int(run.endswith("mentor"))            # MENTOR calls the teacher's tools
        results = {}
        for s in suites:
            if s == kill["at"]:
                raise KeyboardInterrupt
            tools = [["add"], ["add"]] if match else [[], []]
            results[s] = {"n": 2, "accuracy": 0.5, "tool_set_match": float(match),
                          "tool_jsd": 1.0 - match,
                          "per_problem": {"tool_set_match": [match] * 2, "tools": tools,
                                          "teacher_tools": [["add"], ["add"]]}}
            on_suite(results)
        return results
    monkeypatch.setattr(mechanism, "evaluate_model", fake_evaluate_model)
    for arm in mechanism.ARMS:
        run = tmp_path / mechanism.RUNS / "weak" / "s0" / arm
        run.mkdir(parents=True)
        (run / "checkpoint.pt").write_text("")
        os.makedirs(mechanism.kept("weak", 0, arm))
    with pytest.raises(KeyboardInterrupt):
        mechanism.tool_use("weak", 0, "mentor")
    assert mechanism.tool_use_report("weak") is None             # not every arm evaluated
    kill["at"], calls[:] = None, []
    for arm in mechanism.ARMS:
        mechanism.tool_use("weak", 0, arm)
    suites = list(mechanism.TOOL_SUITES)
    assert calls[0] == suites[suites.index("bfcl"):] and calls[1:] == [suites] * 3
    saved = json.loads(open(os.path.join(mechanism.kept("weak", 0, "mentor"),
                                         "tool_use.json")).read())
    assert list(saved) == suites
    table = mechanism.tool_use_report("weak")
    assert "| math (2) | 0.500 / 1.000 / 0.000 | 0.500 / 0.000 / 1.000 |" in table
    # MENTOR - each arm: tool-set match +1, tool-JSD -1 (no spread: every resample agrees)
    assert "| math | " + " | ".join(["+1.000 [+1.000, +1.000]"] * 3 +
                                    ["-1.000 [-1.000, -1.000]"] * 3) + " |" in table
