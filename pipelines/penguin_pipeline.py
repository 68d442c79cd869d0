"""The demo pipeline: train a penguin classifier, gate it with the Evaluator, export it."""

import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

PIPELINE_DIR = os.path.dirname(os.path.abspath(__file__))
TRAINER_MODULE_FILE = os.path.join(PIPELINE_DIR, 'penguin_trainer.py')
CLASSES_FILE = os.path.join(PIPELINE_DIR, 'data', 'classes.txt')
SERVING_FN_MODULE_FILE = os.path.join(PIPELINE_DIR, 'penguin_serving.py')
LABEL_KEY = 'species'


def create_eval_config(accuracy_threshold: float) -> tfma.EvalConfig:
    """Returns an EvalConfig that blesses a model whose eval accuracy reaches the threshold.

    Args:
        accuracy_threshold: Lower bound for `sparse_categorical_accuracy` on the eval split.

    Returns:
        The TFMA EvalConfig for the Evaluator.
    """
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name='serving_default', label_key=LABEL_KEY)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name='ExampleCount'),
                    tfma.MetricConfig(
                        class_name='SparseCategoricalAccuracy',
                        threshold=tfma.MetricThreshold(
                            value_threshold=tfma.GenericValueThreshold(
                                lower_bound={'value': accuracy_threshold}
                            )
                        ),
                    ),
                ]
            )
        ],
    )


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    module_file: str,
    export_base: str,
    metadata_path: str | None,
    beam_pipeline_args: list[str] | None = None,
    accuracy_threshold: float = 0.6,
    exporter_kwargs: dict | None = None,
    *,
    with_exporter: bool = True,
    enable_cache: bool = False,
    train_steps: int = 100,
    eval_steps: int = 5,
    classes_file: str = CLASSES_FILE,
) -> tfx.dsl.Pipeline:
    """Builds the penguin pipeline.

    ImportExampleGen -> StatisticsGen -> SchemaGen -> Trainer -> Evaluator -> FinalExporter.

    Args:
        pipeline_name: Name of the pipeline.
        pipeline_root: Directory for the pipeline's artifacts.
        data_root: Directory holding `Split-train/` and `Split-eval/` with gzipped TFRecords of
            tf.Example, e.g. `tfx/components/testdata/penguin/data` of the installed tfx.
        module_file: Trainer module file, usually `TRAINER_MODULE_FILE`.
        export_base: Directory under which FinalExporter writes the model versions.
        metadata_path: SQLite file for ML Metadata; None leaves the connection to the runner.
        beam_pipeline_args: Beam options for the Beam-powered components.
        accuracy_threshold: Minimum eval accuracy for the Evaluator to bless the model.
        exporter_kwargs: FinalExporter arguments that add to or override the demo's.
        with_exporter: Whether to add FinalExporter; False builds the pipeline without it.
        enable_cache: Whether to reuse the outputs of earlier identical component runs.
        train_steps: Number of training steps.
        eval_steps: Number of validation steps during training.
        classes_file: Label names, one a line in label order, exported as an extra asset.

    Returns:
        The TFX pipeline.
    """
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root,
        input_config=tfx.proto.Input(
            splits=[
                tfx.proto.Input.Split(name='train', pattern='Split-train/*'),
                tfx.proto.Input.Split(name='eval', pattern='Split-eval/*'),
            ]
        ),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs['examples'])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs['statistics'], infer_feature_shape=True
    )
    trainer = tfx.components.Trainer(
        module_file=module_file,
        examples=example_gen.outputs['examples'],
        schema=schema_gen.outputs['schema'],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
    )
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs['examples'],
        model=trainer.outputs['model'],
        eval_config=create_eval_config(accuracy_threshold),
    )
    components = [example_gen, statistics_gen, schema_gen, trainer, evaluator]

    if with_exporter:
        from final_exporter import FinalExporter

        exporter_args = {
            'model': trainer.outputs['model'],
            'model_blessing': evaluator.outputs['blessing'],
            'model_evaluation': evaluator.outputs['evaluation'],
            'examples': example_gen.outputs['examples'],
            'name': 'penguin',
            'export_base': export_base,
            'serving_fn': f'{SERVING_FN_MODULE_FILE}:serving_fn',
            'assets_extra': {'labels/classes.txt': classes_file},
            'parity_sample_size': 50,
            'warmup_requests': 100,
            'exports_to_keep': 3,
        }
        components.append(FinalExporter(**{**exporter_args, **(exporter_kwargs or {})}))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
            if metadata_path
            else None
        ),
        beam_pipeline_args=beam_pipeline_args or [],
    )
