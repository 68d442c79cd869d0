"""Loading an export as TensorFlow Serving does, and calling its signatures.

What the smoke test, parity and warmup requests share. TensorFlow is imported
inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from final_exporter.checks.tf_import import import_tensorflow
from final_exporter.common.errors import InvalidInputError

# The tag set TensorFlow Serving loads (its `--saved_model_tags` default).
SERVE_TAGS = ('serve',)
DEFAULT_SIGNATURE = 'serving_default'


def load_export(export_dir: str) -> Any:
    """Loads a SavedModel from its folder alone, with the tag set TensorFlow Serving loads.

    Works for `saved_model.pb` and `saved_model.pbtxt` exports.

    Raises:
        InvalidInputError: naming the folder and why it does not load.
    """
    tf = import_tensorflow()
    try:
        return tf.saved_model.load(export_dir, tags=list(SERVE_TAGS))
    except Exception as e:  # TensorFlow raises many types; all mean "does not load".
        raise InvalidInputError(
            f'the export in {export_dir!r} does not load as a SavedModel with tags '
            f'{list(SERVE_TAGS)}: {first_line(e)}'
        ) from None


def get_signature(loaded: Any, signature_name: str, export_dir: str) -> Any:
    """The named signature of a loaded SavedModel.

    Raises:
        InvalidInputError: naming the signatures the model has.
    """
    signatures = loaded.signatures
    if signature_name not in signatures:
        raise InvalidInputError(
            f'the export in {export_dir!r} has no signature {signature_name!r}; '
            f'it has {sorted(signatures.keys())}'
        )
    return signatures[signature_name]


def example_input_name(signature: Any) -> str:
    """The name of the signature's one input that takes a batch of serialized examples.

    Raises:
        InvalidInputError: unless the signature has exactly one input and it is a
            string tensor of shape [None].
    """
    import tensorflow as tf

    specs = input_specs(signature)
    if len(specs) == 1:
        ((name, spec),) = specs.items()
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return name
    described = {n: f'{s.dtype.name}{s.shape}' for n, s in specs.items()}
    raise InvalidInputError(
        f'signature takes inputs {described}; serialized examples can only be fed to a '
        'signature with exactly one input, a string tensor of shape [None]'
    )


def input_specs(signature: Any) -> dict[str, Any]:
    """{input name: tf.TensorSpec} of a signature (a concrete function).

    Raises:
        InvalidInputError: if it takes positional inputs.
    """
    args, kwargs = signature.structured_input_signature
    if args:
        raise InvalidInputError(
            'signature takes positional inputs; a serving signature takes named inputs only'
        )
    return dict(kwargs)


def call_signature(
    signature: Any, inputs: Mapping[str, Any], where: str, what: str
) -> dict[str, Any]:
    """Calls a signature; returns {output name: tensor}.

    Raises:
        InvalidInputError: `"<where> failed on <what>: <first telling line>"`.
    """
    try:
        outputs = signature(**inputs)
    except Exception as e:  # Any failure of the model call refuses the export.
        raise InvalidInputError(f'{where} failed on {what}: {first_line(e)}') from None
    if not isinstance(outputs, Mapping):
        outputs = {'output_0': outputs}
    return dict(outputs)


# Lines of TensorFlow's error messages that say nothing about the cause.
_TF_NOISE = (
    'Graph execution error',
    'Detected at node',
    '<stack traces unavailable>',
    '[[',
    'File ',
)


def first_line(error: BaseException) -> str:
    """The first telling line of an error (TensorFlow's messages run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(_TF_NOISE)]
    chosen = (telling or lines or [''])[0]
    return f'{type(error).__name__}: {chosen}' if chosen else type(error).__name__
