# The FinalExporter component image: the TFX image of a tested TFX version with this
# package installed, so the executor class path the compiled pipeline names
# (final_exporter.adapters.tfx.executor.Executor) and final_exporter.adapters.kfp import in the container.
#
#   docker build -t "$SKAFFOLD_DEFAULT_REPO/tfx-final-exporter:$IMAGE_TAG" . && docker push ...
#   or: skaffold build -f build.yaml            (TFX 1.21, the default)
#       skaffold build -f build.yaml -p tfx-1.16 (docker build --build-arg TFX_VERSION=1.16.0)
#
# TFX_VERSION is the newest tested TFX (tests/test_kubeflow_image.py checks it). The TFX
# image runs Python 3.10 for both versions; TFX 1.16 on 3.10 is tested, TFX 1.21 on 3.10
# is not (it is tested on 3.11 and 3.13), so scripts/image_install.sh stops there and
# says so, until that combination has a tested environment (docs/tested-with.md).
ARG TFX_VERSION=1.21.0
FROM gcr.io/tfx-oss-public/tfx:${TFX_VERSION}

# As the TFX CLI's generated Dockerfile: the build context (see .dockerignore) in /pipeline.
WORKDIR /pipeline
COPY ./ ./

# The tested pins for the image's TFX and Python; then a smoke check that the class
# path in the compiled spec imports.
RUN bash scripts/image_install.sh

# Demo data for pipelines/kubeflow_v2_runner.py: the penguin examples the tfx
# package ships, at the fixed path the runner compiles into the pipeline.
RUN mkdir -p /pipeline/data \
    && ln -s "$(python -c 'import os, tfx; print(os.path.join(os.path.dirname(tfx.__file__), "components", "testdata", "penguin", "data"))')" \
       /pipeline/data/penguin
