# The FinalExporter component image. One image serves every step of a TFX pipeline run by
# KubeflowV2DagRunner (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor:
# ExampleGen, Trainer, Evaluator, ... and FinalExporter) and the kfp-native components
# (final_exporter.adapters.kfp), on Kubeflow Pipelines 2.x and Vertex AI Pipelines.
#
#   docker build -t "$SKAFFOLD_DEFAULT_REPO/tfx-final-exporter:$IMAGE_TAG" .   (or: skaffold build -f build.yaml)
#
# Two routes, chosen by the base (docs/kubeflow-vertex.md):
#   - default: python:3.11-slim (Debian 13) with the tested set, constraints/tfx-1.21-py3.11.txt:
#     the environment `make test` tests, which builds this file (scripts/image.sh) and runs
#     all three entry points in the image (tests/test_image.py).
#   - a TFX image as the base, for pipelines whose image must be it:
#       docker build --build-arg BASE_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0 .
#       TFX_VERSION=1.16.0 skaffold build -f build.yaml -p tfx-image
#     the package is installed pinned to the versions the TFX image has (its pip freeze).
# Either build ends with a real export and verify inside the image (scripts/image_install.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# As the TFX CLI's generated Dockerfile: the build context (see .dockerignore) in /pipeline.
WORKDIR /pipeline
# Build time only, unset by default: a CA bundle for pip where TLS goes through an
# intercepting proxy (scripts/image.sh passes the host's; not kept in the image).
ARG PIP_CERT

# The dependencies, from what alone decides them: a change to component/ or pipelines/
# reuses this layer (about 3 GB: TensorFlow, TFX, Beam, kfp).
COPY pyproject.toml ./
COPY constraints/ constraints/
COPY scripts/image_install.sh scripts/
RUN bash scripts/image_install.sh dependencies

# The package and the demo pipeline's files; pip check; the demo data at
# /pipeline/data/penguin (pipelines/kubeflow_v2_runner.py); a real export, verified.
COPY ./ ./
RUN bash scripts/image_install.sh package
