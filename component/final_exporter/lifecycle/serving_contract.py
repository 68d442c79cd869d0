"""The serving-signature guard: does a new export keep the contract of the served version?

Clients of TensorFlow Serving call the version it serves now: the one labelled
`stable` in the model base's `models.config` (lifecycle/model_config.py), or else
the newest version a server can load (a numeric folder holding its graph file).
Before a new export is published, its serving signatures are compared with that
version's (checks/signature_diff.py says what breaks a client). Only the served
version's graph file is read, through the model base's store; never its
variables.

Outcomes (`ContractCheck.status`):
  * `nothing_to_compare`: no version under the model base yet (a first export);
  * `unchanged` or `compatible`: the export goes ahead;
  * `breaking`: `enforce` raises `BreakingChangeError` (exit code 2, nothing
    published), naming each break; with `allow_breaking_changes` it goes ahead,
    and the breaks are recorded under `serving_signature_breaks`;
  * `not_compared`: the served version's graph file does not parse; a server
    cannot load it either, so it has no clients to break. Logged and recorded.
Every outcome is recorded under `serving_signature_diff`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from final_exporter.checks.signature_defs import ServingSignatures, read_serving_signatures
from final_exporter.checks.signature_diff import SignatureDiff, diff_signatures
from final_exporter.common import keys
from final_exporter.common.errors import BreakingChangeError, InvalidInputError
from final_exporter.lifecycle import model_config
from final_exporter.storage.base import Store
from final_exporter.storage.stores import store_for

logger = logging.getLogger(__name__)

NOTHING_TO_COMPARE = 'nothing_to_compare'
NOT_COMPARED = 'not_compared'
UNCHANGED = 'unchanged'
COMPATIBLE = 'compatible'
BREAKING = 'breaking'
# Lookups of the served version when the one found is removed before its graph is read.
_MAX_LOOKUPS = 3


@dataclasses.dataclass(frozen=True)
class ServedVersion:
    """The version clients of a model base use now.

    Attributes:
        version: Its number.
        path: Its folder (or bucket prefix).
        label: The label it was found by (`stable`); None when it is the newest version.
    """

    version: int
    path: str
    label: str | None

    def describe(self) -> str:
        """`version 1700000000 (labelled stable)` or `version 1700000000 (the newest)`."""
        how = f'labelled {self.label}' if self.label else 'the newest'
        return f'version {self.version} ({how})'


@dataclasses.dataclass(frozen=True)
class ContractCheck:
    """The new export's signatures compared with the served version's.

    Attributes:
        status: One of the module's outcomes.
        model_base: The model base compared in.
        served: The served version; None when there is none.
        graph_file: The served version's graph file that was read.
        diff: The changes; None when nothing was compared.
        reason: Why nothing was compared, for the record.
    """

    status: str
    model_base: str
    served: ServedVersion | None = None
    graph_file: str | None = None
    diff: SignatureDiff | None = None
    reason: str | None = None

    def to_lineage(self, allow_breaking_changes: bool) -> dict[str, Any]:
        """`serving_signature_diff`, and `serving_signature_breaks` when it breaks."""
        record: dict[str, Any] = {
            'status': self.status,
            'compared_with': None,
            'allow_breaking_changes': allow_breaking_changes,
        }
        if self.served is not None:
            record['compared_with'] = {
                'version': self.served.version,
                'label': self.served.label,
                'path': self.served.path,
                'graph_file': self.graph_file,
            }
        record.update(self.diff.to_lineage() if self.diff else {})
        if self.reason:
            record['reason'] = self.reason
        lineage = {keys.SIGNATURE_DIFF_LINEAGE_KEY: record}
        if self.diff and self.diff.breaking:
            lineage[keys.SIGNATURE_BREAKS_LINEAGE_KEY] = record['breaks']
        return lineage

    def error_message(self) -> str:
        """One message naming every break, and how to export anyway."""
        breaks = self.diff.breaks if self.diff else ()
        listed = '; '.join(f'({i}) {c.text()}' for i, c in enumerate(breaks, 1))
        return (
            f'the new export breaks the clients of {self.served.describe()} under '
            f'{self.model_base!r}: {len(breaks)} breaking change{"s" * (len(breaks) != 1)} to '
            f'its serving signatures: {listed}. Nothing was published. Keep the signatures '
            'compatible, or set allow_breaking_changes=True (--allow-breaking-changes) to export '
            f'anyway; the breaks are then recorded as {keys.SIGNATURE_BREAKS_LINEAGE_KEY!r}'
        )


def served_version(
    model_base: str,
    store: Store | None = None,
    *,
    model_name: str | None = None,
    label: str = model_config.DEFAULT_LABEL,
) -> ServedVersion | None:
    """The version clients of `model_base` use now; None when there is none.

    The version `label` names in `<model_base>/models.config` when it is there,
    else the newest numeric version holding `saved_model.pb` or
    `saved_model.pbtxt` (what TensorFlow Serving's default policy serves). Only
    listings and `models.config` are read.

    Args:
        model_base: `<export_base>/<name>`.
        store: The store holding `model_base`; resolved from the path when None.
        model_name: The model's name in `models.config` (see `model_config.labels`).
        label: The label clients use.

    Raises:
        InvalidInputError: if `models.config` is not a model server config.
    """
    store = store or store_for(model_base)
    labelled = model_config.labels(model_base, model_name=model_name).get(label)
    if labelled is not None:
        if _has_graph(store, model_base, labelled):
            return ServedVersion(labelled, store.join(model_base, str(labelled)), label)
        logger.warning(
            'Label %s names version %s, which holds no SavedModel under %s; comparing with the '
            'newest version instead.',
            label,
            labelled,
            model_base,
        )
    for version in reversed(store.list_versions(model_base)):
        if _has_graph(store, model_base, version):
            return ServedVersion(version, store.join(model_base, str(version)), None)
    return None


def _has_graph(store: Store, model_base: str, version: int) -> bool:
    names = store.children(store.join(model_base, str(version)))
    return keys.SAVED_MODEL_PB in names or keys.SAVED_MODEL_PBTXT in names


def compare_with_served(
    new: ServingSignatures,
    model_base: str,
    store: Store | None = None,
    *,
    model_name: str | None = None,
    label: str = model_config.DEFAULT_LABEL,
) -> ContractCheck:
    """Compares `new` with the signatures of the version `served_version` finds.

    Reads the served version's graph file only, through `store`.
    """
    store = store or store_for(model_base)
    for _ in range(_MAX_LOOKUPS):
        served = served_version(model_base, store, model_name=model_name, label=label)
        if served is None:
            return ContractCheck(
                NOTHING_TO_COMPARE, model_base, reason=f'no version under {model_base!r} yet'
            )
        try:
            old = read_serving_signatures(served.path, store)
            break
        except FileNotFoundError:  # Removed (retention, rollback) since it was listed.
            continue
        except InvalidInputError as e:
            logger.warning('Serving signatures not compared with %s: %s', served.describe(), e)
            return ContractCheck(NOT_COMPARED, model_base, served, reason=str(e))
    else:
        reason = f'the served version under {model_base!r} kept being removed while it was read'
        return ContractCheck(NOT_COMPARED, model_base, served, reason=reason)
    diff = diff_signatures(old.signatures, new.signatures)
    status = BREAKING if diff.breaking else COMPATIBLE if diff.compatible else UNCHANGED
    return ContractCheck(status, model_base, served, old.graph_file, diff)


def enforce(check: ContractCheck, *, allow_breaking_changes: bool) -> dict[str, Any]:
    """Fails a breaking export unless it is allowed; returns the lineage entries to record.

    Raises:
        BreakingChangeError: naming every break, when `check` breaks and
            `allow_breaking_changes` is False.
    """
    if check.status == BREAKING:
        if not allow_breaking_changes:
            raise BreakingChangeError(check.error_message(), check.to_lineage(False))
        logger.warning('Exporting despite breaking changes: %s', check.error_message())
    return check.to_lineage(allow_breaking_changes)


def guard_serving_signatures(
    new_dir: str,
    new_store: Store,
    model_base: str,
    store: Store | None = None,
    *,
    allow_breaking_changes: bool,
    model_name: str | None = None,
    label: str = model_config.DEFAULT_LABEL,
    new: ServingSignatures | None = None,
) -> dict[str, Any]:
    """The guard in one call: read the new export's signatures, compare, enforce.

    Args:
        new_dir: The new export's SavedModel folder: the source model for a byte
            copy, the staged folder for a re-export.
        new_store: The store holding `new_dir`.
        model_base: `<export_base>/<name>`, where the export will be published.
        store: The store holding `model_base`; resolved from the path when None.
        allow_breaking_changes: Let a breaking export through (and record it).
        model_name: The model's name in `models.config`.
        label: The label clients use.
        new: The signatures of `new_dir`, when already read; else read here.

    Returns:
        The lineage entries: `serving_signature_diff`, and `serving_signature_breaks`
        when breaks went through.

    Raises:
        BreakingChangeError: for breaking changes not allowed; nothing may be published.
            Its `lineage` holds the entries a refused export would have recorded.
        InvalidInputError: if the new export's graph file does not parse, or
            `models.config` is not a model server config.
    """
    if new is None:
        new = read_serving_signatures(new_dir, new_store)
    check = compare_with_served(new, model_base, store, model_name=model_name, label=label)
    logger.info(
        'Serving signatures: %s%s.',
        check.status,
        f' against {check.served.describe()}' if check.served else '',
    )
    return enforce(check, allow_breaking_changes=allow_breaking_changes)
