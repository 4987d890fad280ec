# One command to set up and serve an example, one to set up and run every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip says nothing but errors
PIP := $(BIN)/python -m pip -qq --disable-pip-version-check
EXAMPLE ?= examples/greeter
PORT ?= 8888
# Every plugin distribution of this repository, installed editable next to the core for the tests.
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# The predictor types the example uses besides python; each comes from plugins/<type>_predictor.
EXAMPLE_TYPES := $(filter-out python,$(shell sed -n 's/^ *type: *\([a-z_]*\).*/\1/p' $(EXAMPLE)/cortex.yaml 2>/dev/null))

.PHONY: setup serve lint test clean

# The core and the python predictor type: all that serving most examples needs.
$(VENV)/.core: pyproject.toml plugins/python_predictor/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e . -e plugins/python_predictor
	touch $@

$(VENV)/.type-%: $(VENV)/.core plugins/%_predictor/pyproject.toml
	$(PIP) install -e plugins/$*_predictor
	touch $@

# Everything: every plugin and the test tools (TensorFlow included, for its plugin's suite).
$(VENV)/.test: $(VENV)/.core pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PIP) install -e '.[test]' $(foreach p,$(PLUGINS),-e $(p))
	touch $@

setup: $(VENV)/.test  ## create .venv with engine, its plugins and the test tools

serve: $(VENV)/.core $(foreach t,$(EXAMPLE_TYPES),$(VENV)/.type-$(t))  ## make serve [EXAMPLE=...] [PORT=8888]
	$(BIN)/engine serve $(EXAMPLE) --port $(PORT)

# Every plugin package of this repository (not their tests), type-checked in mypy's normal mode; engine/ is strict.
PLUGIN_PACKAGES := $(patsubst %/__init__.py,%,$(wildcard plugins/*/engine_*/__init__.py))

# The suites the uvicorn pass repeats: all but engine-ray's, whose requests go through Ray's own HTTP proxy (named
# as paths: pytest's --ignore does not apply to the testpaths it starts from)
UVICORN_SUITES := tests $(filter-out plugins/ray/tests,$(wildcard plugins/*/tests))

lint: $(VENV)/.test  ## ruff and mypy (strict on engine/, normal on the plugins)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict engine
	$(BIN)/mypy $(PLUGIN_PACKAGES)

test: lint  ## lint, run the whole test suite, then its end-to-end part again on uvicorn (--server uvicorn)
	$(BIN)/python -m pytest
	ENGINE_SERVER=uvicorn $(BIN)/python -m pytest -q -m "e2e and not packaging and not no_http_server" $(UVICORN_SUITES)

clean:
	rm -rf $(VENV) build dist *.egg-info plugins/*/*.egg-info
