"""The parts of an export that need TensorFlow: `serving_fn` and `as_text`.

Imported only when one of them is asked for, so the plain-copy path starts
without TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError

logger = logging.getLogger(__name__)


def load_serving_fn(spec: str) -> Callable[[Any], Any]:
    """Imports `package.module:function`, `package.module.function` or `/path/file.py:function`.

    Raises:
        InvalidInputError: if the module or the function cannot be found.
    """
    if ':' in spec:
        module_ref, _, attr = spec.rpartition(':')
    else:
        module_ref, _, attr = spec.rpartition('.')
    try:
        if module_ref.endswith('.py'):
            if not os.path.isfile(module_ref):
                raise InvalidInputError(f'serving_fn module file {module_ref!r} does not exist')
            name = f'_final_exporter_serving_fn_{abs(hash(os.path.abspath(module_ref)))}'
            module_spec = importlib.util.spec_from_file_location(name, module_ref)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_ref)
    except ImportError as e:
        raise InvalidInputError(
            f'serving_fn {spec!r}: cannot import {module_ref!r} ({e})'
        ) from None
    fn = module
    for part in attr.split('.'):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise InvalidInputError(f'serving_fn {spec!r}: {module_ref!r} has no function {attr!r}')
    return fn


def reexport(src_dir: str, dest_dir: str, serving_fn: str) -> None:
    """Loads the SavedModel in `src_dir`, attaches the signatures `serving_fn` returns, saves.

    `serving_fn(loaded)` gets the object `tf.saved_model.load` returns and must
    return what `tf.saved_model.save(signatures=...)` accepts: a `tf.function`
    with an input signature, a concrete function, or a dict of them by
    signature name.
    """
    import tensorflow as tf

    fn = load_serving_fn(serving_fn)
    logger.info('Re-exporting %s with signatures from %s.', src_dir, serving_fn)
    loaded = tf.saved_model.load(src_dir)
    signatures = fn(loaded)
    if not signatures:
        raise InvalidInputError(
            f'serving_fn {serving_fn!r} returned {signatures!r}; expected a dict of signature '
            'name -> tf.function (or a concrete function)'
        )
    tf.saved_model.save(loaded, dest_dir, signatures=signatures)


def write_pbtxt(pb_path: str, pbtxt_path: str) -> None:
    """Writes the text form of the `SavedModel` proto in `pb_path` to `pbtxt_path`."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, 'rb') as f:
        saved_model.ParseFromString(f.read())
    with open(pbtxt_path, 'x', encoding='utf-8') as f:
        f.write(text_format.MessageToString(saved_model))


def convert_in_place_to_pbtxt(export_dir: str) -> None:
    pb = os.path.join(export_dir, keys.SAVED_MODEL_PB)
    write_pbtxt(pb, os.path.join(export_dir, keys.SAVED_MODEL_PBTXT))
    os.remove(pb)


def check_loads(export_dir: str) -> tuple[str, ...]:
    """Loads the export as a model server would, from its folder alone; returns its signatures."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(export_dir)
    except Exception as e:  # TensorFlow raises many types; all mean "does not load".
        raise InvalidInputError(f'the export in {export_dir!r} does not load: {e}') from e
    return tuple(sorted(loaded.signatures.keys()))
