"""TensorFlow, imported for loading a SavedModel, without Keras.

`import tensorflow` ends by importing `keras.src.optimizers` (`tf_keras.src.optimizers`
with `TF_USE_LEGACY_KERAS`) "so that any function/method that needs to happen at load
time will trigger, eg registration of optimizers in the SavedModel registry" (its
`__init__`, TensorFlow 2.16 to 2.21), inside a `try` that passes on ImportError. That
imports all of Keras (and matplotlib): 1.7 of the 4.2 s the import takes here. Neither
Keras 3 nor tf_keras registers anything in that registry, and `tf.saved_model.load`
imports Keras' optimizers itself when a SavedModel holds one (its
`_recreate_user_object`). TensorFlow Serving loads a SavedModel with no Keras at all,
which is what the checks emulate.
"""

from __future__ import annotations

import sys
from types import ModuleType

# What TensorFlow's __init__ imports eagerly, only for the side effects above.
KERAS_EAGER_IMPORTS = ('keras.src.optimizers', 'tf_keras.src.optimizers')


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, skipping its eager import of Keras when TensorFlow is not
    imported yet; Keras imports as usual afterwards.

    A `None` in `sys.modules` makes an import of that name raise ImportError at
    once, without importing its parent packages; TensorFlow passes on it. The
    entries are removed again however the import ends.
    """
    if 'tensorflow' in sys.modules:
        import tensorflow

        return tensorflow
    blocked = [name for name in KERAS_EAGER_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # The import system's "no such module".
    try:
        import tensorflow
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return tensorflow
