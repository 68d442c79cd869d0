# The single entry point. `make demo` and `make test` create .venv/ first if it
# is missing or out of date (scripts/bootstrap.sh).
VENV := .venv/bin
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test lint format constraints

venv:
	bash scripts/bootstrap.sh

demo: venv
	$(VENV)/python -m pipelines.local_runner

test: venv
	$(VENV)/ruff check component pipelines tests
	$(VENV)/ruff format --check component pipelines tests
	$(VENV)/python -m pytest

lint: venv
	$(VENV)/ruff check component pipelines tests

format: venv
	$(VENV)/ruff format component pipelines tests
	$(VENV)/ruff check --fix component pipelines tests

constraints: venv
	$(VENV)/python -m pip freeze --exclude tfx-final-exporter > constraints.txt.new
	@echo "review constraints.txt.new (keep the header) and move it over constraints.txt"
