"""TFX Trainer module file: a small Keras classifier for the Palmer penguins data.

The shipped TFX penguin examples are already scaled to [0, 1], so the model reads the raw
features directly and the pipeline needs no Transform component. The exported SavedModel has a
`serving_default` signature that takes serialized `tf.Example` strings (input `examples`) and
returns the class probabilities (output `outputs`), which both the TFX Evaluator and TensorFlow
Serving can call. The model uses Keras 3 rather than tf_keras: AutoGraph skips the `keras`
package but converts all of tf_keras on the first traced step, which costs about 10 s here.
"""

import keras
import tensorflow as tf
from absl import logging
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

FEATURE_KEYS = ['culmen_length_mm', 'culmen_depth_mm', 'flipper_length_mm', 'body_mass_g']
LABEL_KEY = 'species'
NUM_CLASSES = 3

_TRAIN_BATCH_SIZE = 20
_EVAL_BATCH_SIZE = 10
_EPOCHS = 5
_LEARNING_RATE = 1e-2
_SEED = 42
_SHUFFLE_BUFFER_SIZE = 1000

_SERVING_FEATURE_SPEC = {key: tf.io.FixedLenFeature([1], tf.float32) for key in FEATURE_KEYS}


def _input_fn(
    file_pattern: list[str],
    data_accessor: tfx.components.DataAccessor,
    schema: schema_pb2.Schema,
    batch_size: int,
    shuffle: bool,
) -> tf.data.Dataset:
    """Returns an endless dataset of (features dict, label) batches."""
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size,
            shuffle=shuffle,
            shuffle_buffer_size=_SHUFFLE_BUFFER_SIZE,
            shuffle_seed=_SEED,
            label_key=LABEL_KEY,
        ),
        schema,
    )


def _build_keras_model() -> keras.Model:
    """Returns a compiled two-layer DNN mapping the four features to class probabilities."""
    inputs = {key: keras.layers.Input(shape=(1,), name=key) for key in FEATURE_KEYS}
    x = keras.layers.concatenate([inputs[key] for key in FEATURE_KEYS])
    for _ in range(2):
        x = keras.layers.Dense(8, activation='relu')(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation='softmax', name='probabilities')(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(_LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    model.summary(print_fn=logging.info)
    return model


def _make_serving_signatures(
    model: keras.Model,
) -> dict[str, tf.types.experimental.PolymorphicFunction]:
    """Returns the `serving_default` signature that parses serialized tf.Examples."""

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name='examples')])
    def serve_tf_examples_fn(serialized_tf_examples: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(serialized_tf_examples, _SERVING_FEATURE_SPEC)
        return {'outputs': model(features)}

    return {'serving_default': serve_tf_examples_fn}


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the classifier and saves it to `fn_args.serving_model_dir`.

    Args:
        fn_args: The Trainer's arguments; uses `train_files`, `eval_files`, `data_accessor`,
            `schema_path`, `train_steps`, `eval_steps` and `serving_model_dir`.

    Raises:
        ValueError: If the Trainer was given no schema or no number of train steps.
    """
    if not fn_args.schema_path:
        raise ValueError('penguin_trainer needs a schema; wire SchemaGen into the Trainer.')
    if not fn_args.train_steps:
        raise ValueError('penguin_trainer needs train_args.num_steps > 0.')
    schema = tfx.utils.parse_pbtxt_file(fn_args.schema_path, schema_pb2.Schema())
    keras.utils.set_random_seed(_SEED)

    train_dataset = _input_fn(
        fn_args.train_files, fn_args.data_accessor, schema, _TRAIN_BATCH_SIZE, shuffle=True
    )
    eval_dataset = _input_fn(
        fn_args.eval_files, fn_args.data_accessor, schema, _EVAL_BATCH_SIZE, shuffle=False
    )

    model = _build_keras_model()
    model.fit(
        train_dataset,
        epochs=_EPOCHS,
        steps_per_epoch=max(1, fn_args.train_steps // _EPOCHS),
        validation_data=eval_dataset if fn_args.eval_steps else None,
        validation_steps=fn_args.eval_steps or None,
        verbose=2,
    )

    tf.saved_model.save(
        model, fn_args.serving_model_dir, signatures=_make_serving_signatures(model)
    )
    logging.info('Saved the penguin model to %s', fn_args.serving_model_dir)
