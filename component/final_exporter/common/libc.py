"""The few libc calls Python's `os` lacks (renameat2, syncfs, sync_file_range), via ctypes."""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        # The symbols this process already has, libc among them: no `ldconfig` run,
        # which `find_library` spawns, costing milliseconds at every start of the CLI.
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        # It imports subprocess and tempfile: not at every start.
        from ctypes.util import find_library

        name = find_library('c')
        return ctypes.CDLL(name, use_errno=True) if name else None


def function(name: str, argtypes: list[Any]) -> Any | None:
    """The libc function `name` returning int, or None where libc or the function is missing."""
    fn = getattr(_libc(), name, None)
    if fn is not None:
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return fn


def raise_errno(path: str) -> None:
    """Raises the OSError for the errno the last failed call left."""
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), path)
