# The single entry point. `make demo` and `make test` create .venv/ first if it
# is missing or out of date (scripts/bootstrap.sh).
VENV := .venv/bin
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test soak benchmark lint format constraints

venv:
	bash scripts/bootstrap.sh

demo: venv
	$(VENV)/python -m pipelines.local_runner

test: venv
	$(VENV)/ruff check component pipelines tests
	$(VENV)/ruff format --check component pipelines tests
	$(VENV)/python -m pytest

# The fault suite, five times longer, with its tally (README "What the exporter guarantees").
soak: venv
	FINAL_EXPORTER_SOAK=5 FINAL_EXPORTER_TALLY=benchmarks/out/fault_tally.json \
		$(VENV)/python -m pytest -q tests/test_faults.py tests/test_config.py tests/test_cli.py
	cat benchmarks/out/fault_tally.json

benchmark: venv
	$(VENV)/python benchmarks/export_benchmark.py --sizes all --repeats 5

lint: venv
	$(VENV)/ruff check component pipelines tests

format: venv
	$(VENV)/ruff format component pipelines tests
	$(VENV)/ruff check --fix component pipelines tests

constraints: venv
	$(VENV)/python -m pip freeze --exclude tfx-final-exporter > constraints.txt.new
	@echo "review constraints.txt.new (keep the header) and move it over constraints.txt"
