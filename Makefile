# polyclap — the two commands: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat pyproject.toml constraints.txt infra/install/setup.sh infra/install/install_wordnet.py | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export NLTK_DATA := $(CURDIR)/$(VENV)/nltk_data
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The test suite also needs the [llm] extra (a real llama.cpp server for the LLM caption tests;
# the demo's in-process SmolLM2 backend needs only the base install)
# and chromium (the report's render test): infra/install/setup_test_extras.sh. The demo does not.
TEST_STAMP := $(VENV)/.installed-test-$(DEPS_HASH)
DEMO_OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt infra/install/setup.sh infra/install/install_wordnet.py
	@rm -f $(VENV)/.installed-*
	VENV=$(VENV) bash infra/install/setup.sh
	@touch $@

$(TEST_STAMP): $(STAMP) infra/install/setup_test_extras.sh
	VENV=$(VENV) bash infra/install/setup_test_extras.sh
	@touch $@

demo: $(STAMP)
	$(PY) pipelines/demo.py --config configs/demo.yaml --out $(DEMO_OUT)

# The suite starts with the lint (ruff check + format check): a red lint is a red CI.
test: $(TEST_STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The [bench] extra: lhotse (the peer arm of bench/build_shards.py) and py-spy.
BENCH_STAMP := $(VENV)/.installed-bench-$(DEPS_HASH)
$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[bench]"
	@touch $@

bench: $(BENCH_STAMP)
	bash bench/run_all.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
