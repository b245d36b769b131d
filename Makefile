# One-command set-up: every target creates .venv when absent and installs the package into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision versions that install from this machine's local disk; override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev,milvus,milvus-server,engine,heif]'
	touch $(STAMP)

# everything, as CI runs it (the browser test needs Debian's chromium + chromium-driver:
# .ci/run installs them; locally that test skips with the command to install them)
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

# the inner loop: everything but the tests marked slow (end-to-end runs, servers, browsers)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/contrahash demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
