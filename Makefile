# The two commands the README leads with:
#   make serve   install (first time) and run the service on embedded defaults
#   make test    install what the tests need (Python packages, MariaDB, Chromium) and run them
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin

.PHONY: serve test install install-test system-deps lint bench clean

serve: install
	$(BIN)/image-search serve

test: install-test system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	scripts/bootstrap.sh $(VENV) $(PYTHON) ""
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	scripts/bootstrap.sh $(VENV) $(PYTHON) test
	touch $@

system-deps:
	scripts/system-deps.sh

lint: install-test
	$(BIN)/ruff check image_search deployments pipelines cli tests bench deploy
	$(BIN)/ruff format --check image_search deployments pipelines cli tests bench deploy
	$(BIN)/mypy

bench: install-test
	$(BIN)/python -m bench.embedding

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
