# One way to set up and test: `make test` builds .venv from scratch when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command: unpinned, pip pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: test demo venv bench gpu-wheels clean sandbox-deps

$(BIN)/automerge: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $(BIN)/automerge

venv: $(BIN)/automerge

# HumanEval's generated programs run in bubblewrap namespaces (automerge/eval/_sandbox.py). Installed
# here when missing and we are root; otherwise say what to do (the tests fail under CI without it).
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (sandbox for generated programs)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null \
	      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }; \
	  else \
	    echo "sandbox-deps: bubblewrap (bwrap) is missing and this is not root with apt-get: install the" \
	         "'bubblewrap' package yourself; until then generated programs run with weaker walls"; \
	  fi; }

test: venv sandbox-deps
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/automerge search

bench: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python bench/merge_bench.py

# Wheels an offline GPU machine's image lacks (it has torch, transformers, safetensors, typer, rich,
# pyyaml, pytest): bench/gpu_check.sh --wheels .gpu-wheels installs from them. Python 3.12, x86_64.
gpu-wheels: venv
	$(BIN)/python -m pip download --quiet --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .gpu-wheels \
		"optuna>=4.0" "pydantic>=2.5" "sqlalchemy>=2.0" "cmaes>=0.10"

clean:
	rm -rf $(VENV)
