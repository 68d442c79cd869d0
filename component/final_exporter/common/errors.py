"""Errors raised by the export core.

`InvalidInputError` is the user's to fix (bad path, bad name, unblessable
input): the CLI turns it into exit code 2 and one line on stderr. Everything
else is an operational failure (exit code 1).
"""

from collections.abc import Mapping
from typing import Any


class FinalExporterError(Exception):
    """Base class of the errors this package raises on purpose."""


class InvalidInputError(FinalExporterError, ValueError):
    """The input (model, blessing, parameters) cannot be exported as given."""


class BlessingMismatchError(InvalidInputError):
    """A blessing was made for a different model than the one wired in."""


class IntegrityError(FinalExporterError):
    """Bytes on disk do not match what was read or what the manifest records."""


class BreakingChangeError(InvalidInputError):
    """The export would break the clients of the served version (its serving signatures).

    Bad input like the others (exit code 2, nothing published): the model is the
    user's to fix, or to export anyway with `allow_breaking_changes=True`.

    Attributes:
        lineage: The guard's record of the refused export (`serving_signature_diff`
            and `serving_signature_breaks`), for a caller that reports failures.
    """

    def __init__(self, message: str, lineage: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.lineage = dict(lineage or {})


class StorageIOError(FinalExporterError):
    """The storage failed to read or write a file (EIO and the like): the message names the
    file and where in it; nothing was published."""
