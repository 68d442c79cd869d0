# The FinalExporter component image: the TFX image of the pinned TFX version with
# this package installed, so the executor class path the compiled pipeline names
# (final_exporter.adapters.tfx.executor.Executor) and final_exporter.adapters.kfp import in the container.
#
#   docker build -t "$SKAFFOLD_DEFAULT_REPO/tfx-final-exporter:$IMAGE_TAG" . && docker push ...
#   or: skaffold build -f build.yaml
#
# The tag must stay the tfx version pinned in constraints.txt
# (tests/test_kubeflow_image.py checks it).
FROM gcr.io/tfx-oss-public/tfx:1.16.0

# As the TFX CLI's generated Dockerfile: the build context (see .dockerignore) in /pipeline.
WORKDIR /pipeline
COPY ./ ./

# The same pins as the tested environment; then a smoke check that the class
# path in the compiled spec imports.
RUN python -m pip install --no-cache-dir -c constraints.txt . \
    && python -c "import final_exporter.adapters.tfx.executor, final_exporter.adapters.kfp"

# Demo data for pipelines/kubeflow_v2_runner.py: the penguin examples the tfx
# package ships, at the fixed path the runner compiles into the pipeline.
RUN mkdir -p /pipeline/data \
    && ln -s "$(python -c 'import os, tfx; print(os.path.join(os.path.dirname(tfx.__file__), "components", "testdata", "penguin", "data"))')" \
       /pipeline/data/penguin
