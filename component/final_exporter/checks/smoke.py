"""The smoke test: load an export as a model server does and check that a signature answers.

`smoke_test` loads the export from its folder alone (`tf.saved_model.load` with the
`serve` tag set, the one TensorFlow Serving loads) and calls one signature on real
examples or, without them, on inputs built from the signature (`synthetic.py`). A
model that does not load, has no such signature, fails, answers without the batch
dimension or answers NaN/inf is refused with an `InvalidInputError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from final_exporter.checks.signatures import (
    DEFAULT_SIGNATURE,
    call_signature,
    example_input_name,
    get_signature,
    input_specs,
    load_export,
)
from final_exporter.checks.synthetic import SYNTHETIC_BATCH_SIZE, synthetic_inputs
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError

logger = logging.getLogger(__name__)

SMOKE_TEST_LINEAGE_KEY = keys.SMOKE_TEST_LINEAGE_KEY


@dataclasses.dataclass(frozen=True)
class SmokeResult:
    """A passed smoke test.

    Attributes:
        export_dir: The folder that was loaded.
        signature_name: The signature that was called.
        inputs: `examples` (real examples were fed) or `synthetic`.
        batch_size: Rows fed.
        example_input: The input the examples were fed to (None for synthetic inputs).
        outputs: {output name: (dtype name, shape)} of the answer.
        batch_checked: Whether every output was checked for the batch dimension (False
            when an input has no unknown leading dimension, so there is no batch).
    """

    export_dir: str
    signature_name: str
    inputs: str
    batch_size: int
    example_input: str | None
    outputs: Mapping[str, tuple[str, tuple[int, ...]]]
    batch_checked: bool = True

    def to_lineage(self) -> dict[str, Any]:
        """`{'smoke_test': {...}}` for the lineage (JSON-able)."""
        return {
            SMOKE_TEST_LINEAGE_KEY: {
                'passed': True,
                'signature_name': self.signature_name,
                'inputs': self.inputs,
                'batch_size': self.batch_size,
                'batch_checked': self.batch_checked,
                'outputs': {
                    name: {'dtype': dtype, 'shape': list(shape)}
                    for name, (dtype, shape) in sorted(self.outputs.items())
                },
            }
        }


def smoke_test(
    export_dir: str,
    signature_name: str = DEFAULT_SIGNATURE,
    examples: Sequence[bytes] | None = None,
) -> SmokeResult:
    """Loads an export as a model server does and checks that its signature answers.

    Args:
        export_dir: The export (or staging) folder.
        signature_name: The signature to call.
        examples: Serialized examples, fed to the signature's one string input as one
            batch; None to use `synthetic_inputs`.

    Returns:
        The SmokeResult.

    Raises:
        InvalidInputError: naming the export and the reason if it does not load, has
            no such signature, cannot take the examples, fails, answers without the
            batch dimension or answers NaN or infinity.
    """
    return smoke_test_loaded(load_export(export_dir), export_dir, signature_name, examples)


def smoke_test_loaded(
    loaded: Any,
    export_dir: str,
    signature_name: str = DEFAULT_SIGNATURE,
    examples: Sequence[bytes] | None = None,
) -> SmokeResult:
    """`smoke_test` on a model loaded already (`signatures.load_export(export_dir)`)."""
    signature = get_signature(loaded, signature_name, export_dir)
    where = f'signature {signature_name!r} of the export in {export_dir!r}'
    if examples is not None:
        examples = list(examples)
        input_name, inputs = _example_inputs(signature, examples, where)
        batch: int | None = len(examples)
        source = 'examples'
    else:
        input_name = None
        inputs = synthetic_inputs(signature)
        batch = SYNTHETIC_BATCH_SIZE if _is_batched(signature) else None
        source = 'synthetic'
    outputs = call_signature(
        signature, inputs, where, f'{len(examples)} examples' if examples else source
    )
    shapes = {
        name: _checked_output(name, value, batch, where) for name, value in sorted(outputs.items())
    }
    logger.info('Smoke test of %s passed with %s inputs (batch %s).', where, source, batch)
    return SmokeResult(
        export_dir=export_dir,
        signature_name=signature_name,
        inputs=source,
        batch_size=batch if batch is not None else 1,
        example_input=input_name,
        outputs=shapes,
        batch_checked=batch is not None,
    )


def _example_inputs(
    signature: Any, examples: list[bytes], where: str
) -> tuple[str, dict[str, Any]]:
    """(input name, {input name: the examples as one batch}) for a signature."""
    import tensorflow as tf

    if not examples:
        raise InvalidInputError(
            f'no examples to smoke-test {where} with; pass None for synthetic inputs'
        )
    try:
        input_name = example_input_name(signature)
    except InvalidInputError as e:
        raise InvalidInputError(f'{where}: {e}') from None
    return input_name, {input_name: tf.constant(examples, dtype=tf.string)}


def _checked_output(
    name: str, value: Any, batch: int | None, where: str
) -> tuple[str, tuple[int, ...]]:
    """(dtype name, shape) of one output, once it has the batch dimension and is finite."""
    import numpy as np

    array = value.numpy()
    if batch is not None and (array.ndim == 0 or array.shape[0] != batch):
        raise InvalidInputError(
            f'{where} answered output {name!r} with shape {list(array.shape)} for a batch '
            f'of {batch}; expected the batch dimension first'
        )
    if value.dtype.is_floating or value.dtype.is_complex:
        bad = ~np.isfinite(array)
        if bad.any():
            rows = bad.reshape(len(array), -1).any(axis=1) if array.ndim else bad.reshape(1)
            raise InvalidInputError(
                f'{where} answered NaN or infinity in output {name!r} ({int(bad.sum())} '
                f'values, rows {rows.nonzero()[0][:10].tolist()}); expected finite values'
            )
    return value.dtype.name, tuple(int(d) for d in array.shape)


def _is_batched(signature: Any) -> bool:
    specs = input_specs(signature).values()
    return bool(specs) and all(
        s.shape.rank is None or (s.shape.rank >= 1 and s.shape[0] is None) for s in specs
    )
