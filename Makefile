# Two entry points, each installing what it needs into .venv first:
#   make serve   - serve GPT-2 over HTTP on 127.0.0.1:8000 (random weights if the hub is unreachable)
#   make test    - run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: serve test setup setup-dev browser lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# torch is installed on its own, pinned, first: installing it before transformers keeps pip
# from resolving another build. On our machines torch==2.13.0 is a local CPU wheel; elsewhere
# pass TORCH_INDEX=https://download.pytorch.org/whl/cpu, or pip takes the large CUDA build.
TORCH_INDEX ?=
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev,plot]'
	touch $(VENV)/.runtime-installed $@

setup: $(VENV)/.runtime-installed
setup-dev: $(VENV)/.dev-installed browser

# The browser tests (tests/ui) drive Debian's chromium through playwright; `playwright install`
# would download a browser of its own, which fails offline. Installed with apt-get when missing
# and apt-get exists (CI runs as root); without it those tests skip and say why.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing chromium for the browser tests (apt-get)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null; } || echo "Could not install chromium: the browser tests will skip."; \
	  else echo "No chromium: the browser tests will skip (as root: apt-get install chromium)."; fi; \
	fi

serve: setup
	$(BIN)/nanovllm serve gpt2 --allow-dummy-fallback $(ARGS)

test: setup-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
