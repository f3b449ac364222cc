# One way to set up and test: `make test` builds .venv from scratch when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command: unpinned, pip pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: test demo venv bench clean

$(BIN)/automerge: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $(BIN)/automerge

venv: $(BIN)/automerge

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/automerge search

bench: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python bench/merge_bench.py

clean:
	rm -rf $(VENV)
