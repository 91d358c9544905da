# pycni: `make demo` and `make test` each set up everything they need (run as root on Debian 12).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo demo-cluster demo-flannel test lint typecheck unit bench stress fuzz lock clean

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

# Three Calico nodes on one machine (calico-node, BIRD, one etcd), pods pinging across them.
demo-cluster: setup
	@scripts/demo-cluster.sh

# Three Flannel nodes on one machine (flanneld, one etcd, kube-flannel's conflist), pods pinging across them.
demo-flannel: setup
	@scripts/demo-flannel.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	scripts/in-netns.sh $(PY) -m pytest $(PYTEST_ARGS)


# Long fuzzing campaigns (tests/reliability: FUZZ_SCALE times the inputs `make test` runs,
# 50 by default: ~1,000 inputs per plugin, 2 million atheris runs; about 40 minutes).
FUZZ_SCALE ?= 50
fuzz: setup
	PYCNI_FUZZ_SCALE=$(FUZZ_SCALE) scripts/in-netns.sh $(PY) -m pytest -s --timeout=3600 tests/reliability $(PYTEST_ARGS)

# Benchmarks against the Go reference plugins (minutes; not part of `make test`).
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

# The long randomized crash test (tests/faults/stress.py: ~25 minutes; not part of `make test`).
STRESS_ARGS ?= --iterations 1000
stress: setup
	scripts/in-netns.sh $(PY) -m tests.faults.stress $(STRESS_ARGS)

# Renew requirements.lock (the exact versions `make setup` installs) from pyproject.toml's ranges.
lock:
	@scripts/lock.sh

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
