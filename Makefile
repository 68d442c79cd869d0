# The single entry point. `make demo` and `make test` create what they need first if it
# is missing or out of date: .venv/ (scripts/bootstrap.sh), and for `make test` the
# TFX 1.21 environments (scripts/userland.sh).
VENV := .venv/bin
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test soak benchmark image image-benchmark lint format docs constraints

venv:
	bash scripts/bootstrap.sh

# TFX 1.21 on the first tested Python the host has (glibc >= 2.39), else TFX 1.16 on
# Python 3.10; it says which, or which Python to install (scripts/demo.sh).
demo:
	bash scripts/demo.sh

# Every tested environment, one block of results each: the whole suite once, on the
# default image's environment, the version-dependent tests on the others (scripts/test.sh).
test:
	bash scripts/test.sh

# The fault suite, five times longer, with its tally (README "What the exporter guarantees").
soak: venv
	FINAL_EXPORTER_SOAK=5 FINAL_EXPORTER_TALLY=benchmarks/out/fault_tally.json \
		$(VENV)/python -m pytest -q tests/test_faults.py tests/test_config.py tests/test_cli.py
	cat benchmarks/out/fault_tally.json

benchmark: venv
	$(VENV)/python benchmarks/export_benchmark.py --sizes all --repeats 5
	$(VENV)/python benchmarks/large_model_benchmark.py --repeats 5 --plot docs/large_models.png
	$(VENV)/python benchmarks/signing_benchmark.py --repeats 5
	$(VENV)/python benchmarks/object_store_benchmark.py --sizes 1g --parts bucket-source --repeats 3

# The component image, built with podman from the Dockerfile (scripts/image.sh; where the
# base cannot be pulled, a local stand-in of it: docs/kubeflow-vertex.md).
image:
	bash scripts/image.sh build

# The image's rebuild after a one-line change to component/, and its size; not in
# `make benchmark` (the first run builds the image). IMAGE_BENCHMARK=--cold also times a
# build with no layer cached (about 10 min).
image-benchmark:
	bash scripts/image.sh benchmark $(IMAGE_BENCHMARK)

lint: venv
	$(VENV)/ruff check component pipelines tests scripts
	$(VENV)/lint-imports

format: venv
	$(VENV)/ruff format component pipelines tests scripts
	$(VENV)/ruff check --fix component pipelines tests scripts

# The parameter table of docs/parameters.md, from ExportConfig (tests/test_docs.py checks it).
docs: venv
	$(VENV)/python scripts/parameters_doc.py

# One constraints file per tested environment; each written as <file>.new for review.
constraints: venv
	$(VENV)/python -m pip freeze --exclude tfx-final-exporter > constraints/tfx-1.16-py3.10.txt.new
	@echo "review constraints/tfx-1.16-py3.10.txt.new (keep the header) and move it over"
	bash scripts/userland.sh constraints
