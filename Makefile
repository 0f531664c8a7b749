# The README's two commands: `make run` and `make test`. Both set up .venv when missing.
# GPU users: make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= configs/default.yaml
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Single-node Ray on loopback, no auth token, no telemetry; 1 torch thread (see docs/architecture.md).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup run test test-fast bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" wheel
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: setup
	$(VENV)/bin/cryptopredict run --config $(CONFIG)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/ingest_parallelism.py
	$(PY) benchmarks/features_bench.py
	$(PY) benchmarks/backtest_bench.py
	$(PY) benchmarks/train_bench.py
	$(PY) benchmarks/serve_load.py --seconds 120 --clients 16 --warmup 5 --json runs/bench/serve_load.json

# Regenerate the constraints file from the current venv (torch and its CUDA wheels stay free to override).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -viE '^(torch==|nvidia-|triton==|cuda-|cryptopredict)' > constraints.txt

clean:
	rm -rf $(VENV) lake .pytest_cache
