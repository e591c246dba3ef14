# Every target creates .venv and installs the project into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

run: install
	$(BIN)/uvicorn examples.app:asgi_app --host 127.0.0.1 --port 5000 --reset-contextvars

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check flask_status tests benchmarks examples
	$(BIN)/ruff format --check flask_status tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet --site-dir build/docs

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache benchmarks/.venvs
