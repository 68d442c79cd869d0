"""The few libc calls Python's `os` lacks (renameat2, syncfs, sync_file_range), via ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any


def function(name: str, argtypes: list[Any]) -> Any | None:
    """The libc function `name` returning int, or None where libc or the function is missing."""
    libc_name = ctypes.util.find_library('c')
    if not libc_name:
        return None
    fn = getattr(ctypes.CDLL(libc_name, use_errno=True), name, None)
    if fn is not None:
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return fn


def raise_errno(path: str) -> None:
    """Raises the OSError for the errno the last failed call left."""
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), path)
