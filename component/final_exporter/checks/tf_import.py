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

TensorFlow 2.16's `__init__` also imports `distutils`, only to add
`distutils.sysconfig.get_python_lib()` (when that submodule happens to be loaded) to
the folders it searches for device plugins, which `site.getsitepackages()` lists
already. Where setuptools' `distutils-precedence.pth` is installed (most virtual
environments), that import is all of setuptools and `pkg_resources`, which scans
every installed distribution: 0.2-0.45 s of the import here. The checks give it the
standard library's `distutils` (Python 3.10 and 3.11 have one), removed again after.
TensorFlow 2.21 imports no `distutils`.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import sysconfig
import warnings
from collections.abc import Iterator
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
        with _stdlib_distutils():
            import tensorflow
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return tensorflow


@contextlib.contextmanager
def _stdlib_distutils() -> Iterator[None]:
    """The standard library's `distutils` as `distutils` while the block runs, when none is
    imported yet and the standard library has one; it and its submodules are then removed,
    so a later `import distutils` finds what it would have found (setuptools' shim)."""
    folder = _place_stdlib_distutils() if 'distutils' not in sys.modules else None
    try:
        yield
    finally:
        if folder is not None:
            _remove_modules_from('distutils', folder)


def _place_stdlib_distutils() -> str | None:
    """Imports the standard library's `distutils` as `distutils`, past any finder in front
    of it: its folder, or None where there is none (Python 3.12 on) or it fails to load."""
    spec = importlib.machinery.PathFinder.find_spec('distutils', [sysconfig.get_path('stdlib')])
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules['distutils'] = module
    try:
        with warnings.catch_warnings():  # Its deprecation notice is not the user's business.
            warnings.simplefilter('ignore', DeprecationWarning)
            spec.loader.exec_module(module)
    except Exception:  # TensorFlow then imports whichever distutils it finds, as usual.
        del sys.modules['distutils']
        return None
    return spec.submodule_search_locations[0]


def _remove_modules_from(package: str, folder: str) -> None:
    """Removes `package` and its submodules from `sys.modules` where loaded from `folder`."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + '.')]:
        if (getattr(sys.modules[name], '__file__', None) or '').startswith(folder):
            del sys.modules[name]
