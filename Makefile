# One command to set up and serve an example, one to set up and run every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXAMPLE ?= examples/greeter
PORT ?= 8888
# Every plugin distribution of this repository, installed editable next to the core.
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))

.PHONY: setup serve test clean

$(BIN)/engine: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' $(foreach p,$(PLUGINS),-e $(p))
	touch $@

setup: $(BIN)/engine  ## create .venv with engine, its plugins and the test tools

serve: setup  ## serve an example: make serve [EXAMPLE=examples/payloads] [PORT=8888]
	$(BIN)/engine serve $(EXAMPLE) --port $(PORT)

test: setup  ## run the whole test suite
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info plugins/*/*.egg-info
