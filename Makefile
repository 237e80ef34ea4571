# trm set-up. Two commands on a fresh machine:
#   make quickstart   install trm and train + evaluate the quickstart model on the CPU
#   make test         install the test needs and run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
XLA_VENV ?= .venv-xla
PIP := $(VENV)/bin/python -m pip
XPIP := $(XLA_VENV)/bin/python -m pip
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# Test processes (pytest-xdist; 0 = one process). Each uses one torch thread; the suite's long
# tests mostly wait on subprocesses, so two workers suit a 2-core machine.
TEST_WORKERS ?= 2

.PHONY: install install-dev install-xla quickstart lint test test-fast cpu-study cpu-study-round2 \
	clean-venv

$(VENV)/.trm-installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch (a local wheel on this machine); the range in pyproject.toml admits it.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

$(VENV)/.trm-dev: $(VENV)/.trm-installed
	$(PIP) install -q -e ".[dev]"
	touch $@

# PyTorch/XLA on the CPU for the XLA tests: its own venv, since torch_xla 2.9 needs torch 2.9.
$(XLA_VENV)/.trm-xla: setup.py pyproject.toml
	$(PYTHON) -m venv $(XLA_VENV)
	$(XPIP) install -q --upgrade pip
	$(XPIP) install -q -e ".[xla-cpu]" pytest pytest-timeout
	touch $@

install: $(VENV)/.trm-installed
install-dev: $(VENV)/.trm-dev
install-xla: $(XLA_VENV)/.trm-xla

quickstart: install
	$(VENV)/bin/python -m trm.train --gin_file=quickstart.gin --workdir=$(WORKDIR)

lint: install-dev
	$(VENV)/bin/ruff check .

test: install-dev install-xla lint
	TRM_XLA_PYTHON=$(abspath $(XLA_VENV))/bin/python OMP_NUM_THREADS=1 \
		$(VENV)/bin/python -m pytest tests -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: install-dev
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest tests -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The CPU study (docs/results/cpu_study/): 54 runs (18 arms x 3 seeds), two at a time, about
# 4 hours on 2 cores. Resumable: run it again after an interruption and it continues. Then the
# report (results.json, RESULTS.md, plots) and the notebook with its outputs.
STUDY_ROOT ?= runs
STUDY_PARALLEL ?= 2
cpu-study: install-dev
	$(VENV)/bin/python -m launchers.local --sweep=cpu_study --root=$(STUDY_ROOT) \
		--parallel=$(STUDY_PARALLEL)
	$(VENV)/bin/python -m studies.cpu_study.analysis --runs=$(STUDY_ROOT) --out=docs/results/cpu_study \
		--notebook=studies/cpu_study/notebook.ipynb

# Round two (pre-registered in docs/results/cpu_study/README.md): T/n with 10 seeds, then its report
# and its notebook with outputs.
cpu-study-round2: install-dev
	$(VENV)/bin/python -m launchers.local --sweep=cpu_tn_round2 --root=$(STUDY_ROOT) \
		--parallel=$(STUDY_PARALLEL)
	$(VENV)/bin/python -m launchers.local --sweep=cpu_tn_round2_long --root=$(STUDY_ROOT) \
		--parallel=$(STUDY_PARALLEL)
	$(VENV)/bin/python -m studies.cpu_study.round2 --runs=$(STUDY_ROOT) \
		--out=docs/results/cpu_study --notebook=studies/cpu_study/notebook_round2.ipynb

clean-venv:
	rm -rf $(VENV) $(XLA_VENV)
