"""Compiles the penguin demo pipeline for Vertex AI / Kubeflow Pipelines v2, and submits it.

Usage:
    python -m pipelines.kubeflow_v2_runner --pipeline-root gs://BUCKET/root \\
        [--image IMAGE] [--export-base gs://BUCKET/serving] [--output FILE] \\
        [--vertex-model MODEL [--vertex-version-aliases ALIAS ...] ...] \\
        [--submit --project PROJECT --region REGION [--service-account SA]]

Every flag has an environment variable (shown in `--help`). The image defaults
to the one `skaffold build -f build.yaml` tags from the same environment:
`$SKAFFOLD_DEFAULT_REPO/tfx-final-exporter:$IMAGE_TAG`, or `$FINAL_EXPORTER_IMAGE`.
The `--vertex-*` options are FinalExporter's Vertex AI Model Registry parameters
(`final-exporter export --help`): with `--vertex-model` and a `gs://` export base, each
export also becomes a version of that model. Nothing is sent to Google Cloud unless
`--submit` is given (but TFX writes the Trainer's module file, packaged as a wheel, under
the pipeline root while it compiles).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from final_exporter.adapters.cli import add_parameter_options, parameter_values
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.config import REGISTRY_PREFIX, ExportConfig
from final_exporter.kfp import component_image
from pipelines import penguin_pipeline

PIPELINE_NAME = 'penguin-final-exporter'
DEFAULT_OUTPUT = 'penguin_final_exporter_pipeline.json'
DEFAULT_REGION = 'us-central1'
SCHEMA_VERSIONS = ('2.1.0', '2.0.0')
# The Dockerfile copies the build context (this repository) to /pipeline and
# links the penguin examples the tfx package ships to /pipeline/data/penguin.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_WORKDIR = '/pipeline'
IMAGE_DATA_ROOT = f'{IMAGE_WORKDIR}/data/penguin'

# Flag -> environment variable that gives its default.
ENV = {
    'image': 'FINAL_EXPORTER_IMAGE',
    'pipeline_root': 'PIPELINE_ROOT',
    'export_base': 'EXPORT_BASE',
    'data_root': 'DATA_ROOT',
    'project': 'GOOGLE_CLOUD_PROJECT',
    'region': 'GOOGLE_CLOUD_REGION',
    'service_account': 'SERVICE_ACCOUNT',
}


def default_export_base(pipeline_root: str) -> str:
    """`<pipeline_root>/serving`: the export base when none is given."""
    return pipeline_root.rstrip('/') + '/serving'


def compile_pipeline(
    *,
    output_file: str,
    image: str,
    pipeline_root: str,
    export_base: str,
    data_root: str = IMAGE_DATA_ROOT,
    enable_cache: bool = True,
    schema_version: str = SCHEMA_VERSIONS[0],
    pipeline_name: str = PIPELINE_NAME,
    registry: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compiles the demo pipeline with `KubeflowV2DagRunner` into a pipeline job JSON.

    Args:
        output_file: Where to write the pipeline JSON (Vertex AI PipelineJob template).
        image: The FinalExporter image every step runs in.
        pipeline_root: Root for the pipeline's artifacts (gs:// for Vertex AI). TFX
            writes the Trainer module wheel under it while compiling.
        export_base: Where FinalExporter publishes `<export_base>/penguin/<version>/`.
        data_root: The penguin examples as the containers see them.
        enable_cache: Let the backend reuse the outputs of identical earlier steps.
        schema_version: `2.1.0` (Kubeflow Pipelines 2.x and Vertex AI) or `2.0.0`
            (Vertex AI only).
        pipeline_name: Pipeline name (Vertex AI: lower case, digits and hyphens).
        registry: FinalExporter's `vertex_*` parameters (Vertex AI Model Registry).

    Returns:
        The compiled pipeline job as a dict (also written to `output_file`).

    Raises:
        InvalidInputError: for a registry parameter FinalExporter refuses.
    """
    if schema_version not in SCHEMA_VERSIONS:
        raise ValueError(f'schema_version must be one of {SCHEMA_VERSIONS}, got {schema_version!r}')
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    pipeline = penguin_pipeline.create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        data_root=data_root,
        module_file=penguin_pipeline.TRAINER_MODULE_FILE,
        # Set below: the demo's retention setting refuses an object store here.
        export_base=f'{IMAGE_WORKDIR}/serving',
        metadata_path=None,
        enable_cache=enable_cache,
    )
    set_exporter_for_image(pipeline, export_base, registry)
    output_dir, filename = os.path.split(os.path.abspath(output_file))
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=schema_version == '2.1.0'
        ),
        output_dir=output_dir,
        output_filename=filename,
    )
    return runner.run(pipeline)


def in_image(path: str) -> str:
    """A path in this checkout as the containers see it (the Dockerfile copies it to /pipeline)."""
    if path.startswith(REPO_ROOT + os.sep):
        return IMAGE_WORKDIR + path[len(REPO_ROOT) :]
    return path


def set_exporter_for_image(
    pipeline: Any, export_base: str, registry: Mapping[str, Any] | None = None
) -> None:
    """Points the demo's FinalExporter at `export_base` and at its files' paths in the image.

    The demo names its `serving_fn` module and `assets_extra` files by their
    paths in this checkout; in the containers they are under /pipeline. Its
    `exports_to_keep` holds on a bucket as on a local export base. `registry`
    (the `vertex_*` parameters) is set here too, where the export base is known.
    The result is validated as `ExportConfig` validates any FinalExporter's parameters.
    """
    from final_exporter.adapters.tfx.component import FinalExporter

    (exporter,) = [c for c in pipeline.components if isinstance(c, FinalExporter)]
    config = ExportConfig.from_exec_properties(exporter.exec_properties)
    serving_fn = config.serving_fn
    if serving_fn:
        module, sep, function = serving_fn.rpartition(':')
        serving_fn = f'{in_image(module)}{sep}{function}'
    changes: dict[str, Any] = {
        'export_base': export_base,
        'serving_fn': serving_fn,
        'assets_extra': {dest: in_image(src) for dest, src in config.assets_extra.items()},
        **(registry or {}),
    }
    exporter.exec_properties.update(dataclasses.replace(config, **changes).to_exec_properties())


def submit_pipeline(
    template_path: str,
    *,
    project: str,
    region: str,
    pipeline_root: str,
    service_account: str | None = None,
    enable_caching: bool | None = None,
) -> Any:
    """Submits a compiled pipeline to Vertex AI Pipelines and returns the `PipelineJob`.

    Args:
        template_path: The compiled pipeline JSON.
        project: Google Cloud project id.
        region: Vertex AI region, e.g. `us-central1`.
        pipeline_root: gs:// root for the run's artifacts.
        service_account: Service account the steps run as; the project's default when None.
        enable_caching: Override the caching compiled into the pipeline; None keeps it.
    """
    from google.cloud import aiplatform

    aiplatform.init(project=project, location=region)
    job = aiplatform.PipelineJob(
        display_name=PIPELINE_NAME,
        template_path=template_path,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        project=project,
        location=region,
    )
    job.submit(service_account=service_account)
    return job


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line; flag defaults come from `environ` (see `ENV`)."""
    parser = argparse.ArgumentParser(
        prog='python -m pipelines.kubeflow_v2_runner', description=__doc__.splitlines()[0]
    )

    def add(name: str, help_text: str, default: str | None = None) -> None:
        env = ENV[name]
        parser.add_argument(
            '--' + name.replace('_', '-'),
            default=environ.get(env) or default,
            help=f'{help_text} (env {env}; default: %(default)s)',
        )

    add(
        'image',
        'component image; without it, $SKAFFOLD_DEFAULT_REPO/tfx-final-exporter:$IMAGE_TAG',
        component_image(environ),
    )
    add('pipeline_root', 'pipeline root, gs://BUCKET/PATH for Vertex AI')
    add('export_base', 'FinalExporter export base; default <pipeline-root>/serving')
    add('data_root', 'penguin examples as the containers see them', IMAGE_DATA_ROOT)
    add('project', 'Google Cloud project (for --submit)')
    add('region', 'Vertex AI region (for --submit)', DEFAULT_REGION)
    add('service_account', 'service account the steps run as (for --submit)')
    parser.add_argument(
        '--output', default=DEFAULT_OUTPUT, help='pipeline JSON to write (default: %(default)s)'
    )
    parser.add_argument(
        '--schema-version',
        choices=SCHEMA_VERSIONS,
        default=SCHEMA_VERSIONS[0],
        help='pipeline spec schema: 2.1.0 runs on Kubeflow Pipelines 2.x and Vertex AI '
        '(default: %(default)s)',
    )
    parser.add_argument(
        '--no-cache', action='store_true', help='compile with step caching disabled'
    )
    parser.add_argument(
        '--submit', action='store_true', help='submit the compiled pipeline to Vertex AI'
    )
    add_parameter_options(
        parser.add_argument_group(
            'FinalExporter: Vertex AI Model Registry',
            'register each export (gs:// export base) as a model version',
        ),
        registry_parameters(),
    )
    return parser


def registry_parameters() -> list[Any]:
    """FinalExporter's Vertex AI Model Registry parameters, as `ExportConfig` declares them."""
    return [p for p in ExportConfig.parameters() if p.name.startswith(REGISTRY_PREFIX)]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Compiles the pipeline and, with `--submit`, runs it on Vertex AI.

    Args:
        argv: Command-line arguments without the program name; None reads `sys.argv`.
        environ: The environment for flag defaults; None reads `os.environ`.

    Returns:
        The process exit code.
    """
    env = os.environ if environ is None else environ
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if not args.image:
        parser.error(
            'no image: pass --image, or set FINAL_EXPORTER_IMAGE, or SKAFFOLD_DEFAULT_REPO and '
            'IMAGE_TAG as for `skaffold build -f build.yaml`'
        )
    if not args.pipeline_root:
        parser.error('no pipeline root: pass --pipeline-root or set PIPELINE_ROOT')
    if args.submit and not args.project:
        parser.error('--submit needs --project or GOOGLE_CLOUD_PROJECT')

    logging.set_verbosity(logging.INFO)
    export_base = args.export_base or default_export_base(args.pipeline_root)
    try:
        compile_pipeline(
            output_file=args.output,
            image=args.image,
            pipeline_root=args.pipeline_root,
            export_base=export_base,
            data_root=args.data_root,
            enable_cache=not args.no_cache,
            schema_version=args.schema_version,
            registry=parameter_values(args, registry_parameters()),
        )
    except InvalidInputError as e:
        parser.error(str(e))
    print(f'Compiled {args.output} (image {args.image}, exports to {export_base}/penguin/).')
    if args.submit:
        job = submit_pipeline(
            args.output,
            project=args.project,
            region=args.region,
            pipeline_root=args.pipeline_root,
            service_account=args.service_account,
        )
        print(f'Submitted {job.resource_name}.')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
