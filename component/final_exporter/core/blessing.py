"""The gate: is the model blessed, and was the blessing made for this model?

Blessings arrive as TFX artifacts (custom property `blessed`, set by Evaluator
and InfraValidator) or, on the command line, as the artifact folders those
components write (a `BLESSED` / `NOT_BLESSED` file, or `INFRA_BLESSED` /
`INFRA_NOT_BLESSED`). Both become a plain `Blessing`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import BlessingMismatchError, InvalidInputError

# Marker files written by tfx/components/evaluator and tfx/components/infra_validator.
_MARKERS = {
    'BLESSED': True,
    'NOT_BLESSED': False,
    'INFRA_BLESSED': True,
    'INFRA_NOT_BLESSED': False,
}


@dataclasses.dataclass(frozen=True)
class Blessing:
    """One blessing, reduced to what the gate needs.

    Attributes:
        kind: The input key, `model_blessing` or `infra_blessing`.
        uri: The blessing artifact's folder.
        blessed: The verdict.
        artifact_id: MLMD id of the blessing artifact, if known.
        model_id: MLMD id of the model the blessing was made for, if recorded.
        model_uri: URI of the model the blessing was made for, if recorded.
    """

    kind: str
    uri: str
    blessed: bool
    artifact_id: str | None = None
    model_id: str | None = None
    model_uri: str | None = None


@dataclasses.dataclass(frozen=True)
class GateDecision:
    export: bool
    reason: str


def parse_blessed(value: Any, *, kind: str, uri: str) -> bool:
    """Reads a `blessed` property: 1 or 0, as int, float (Vertex AI) or string.

    Raises:
        InvalidInputError: for a missing or unexpected value.
    """
    if value is None or value == '':
        raise InvalidInputError(
            f'{kind} at {uri!r} has no {keys.BLESSED_PROPERTY!r} property; expected 1 or 0 as '
            'set by Evaluator or InfraValidator'
        )
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number not in (0.0, 1.0):
        raise InvalidInputError(
            f'{kind} at {uri!r} has {keys.BLESSED_PROPERTY}={value!r}; expected 1 or 0'
        )
    return number == 1.0


def normalize_id(value: Any) -> str | None:
    """MLMD ids as strings; Vertex AI may hand back 12.0 for 12. 0 means unknown.

    Integers and integer strings are kept exact: on Kubeflow Pipelines v2 the
    TFX entrypoint's artifact ids are 63-bit hashes, which a float would round.
    """
    if value is None or value == '':
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value == 0 else str(value)
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            return text
        if not as_float.is_integer():
            return text
        number = int(as_float)
    return None if number == 0 else str(number)


def blessing_from_folder(kind: str, path: str) -> Blessing:
    """Reads a blessing artifact folder as Evaluator or InfraValidator writes it.

    Raises:
        InvalidInputError: if the folder is missing or holds no (or conflicting) verdict.
    """
    if not os.path.isdir(path):
        raise InvalidInputError(f'{kind} folder {path!r} does not exist')
    found = {
        name: verdict
        for name, verdict in _MARKERS.items()
        if os.path.isfile(os.path.join(path, name))
    }
    if len(set(found.values())) != 1:
        what = 'no' if not found else 'conflicting'
        raise InvalidInputError(
            f'{kind} folder {path!r} holds {what} verdict files ({", ".join(sorted(found)) or "none"}); '
            f'expected exactly one of {", ".join(_MARKERS)}'
        )
    return Blessing(kind=kind, uri=path, blessed=next(iter(found.values())))


def check_blessings(
    blessings: Sequence[Blessing],
    *,
    model_id: str | None,
    model_uri: str,
    require_blessing: bool,
) -> GateDecision:
    """Decides whether to export.

    Every wired blessing must be blessed. A blessing made for another model is
    an error, not a "no": it means the pipeline is wired wrongly.

    Raises:
        BlessingMismatchError: if a blessing records a different model.
        InvalidInputError: if no blessing is given while one is required.
    """
    if not blessings:
        if require_blessing:
            raise InvalidInputError(
                'no blessing was given; pass a model blessing (Evaluator) or infra blessing '
                '(InfraValidator), or set require_blessing=False to export unvalidated models'
            )
        return GateDecision(True, 'exported without a blessing (require_blessing=False)')
    for b in blessings:
        _check_same_model(b, model_id=model_id, model_uri=model_uri)
    for b in blessings:
        if not b.blessed:
            return GateDecision(False, f'{b.kind} at {b.uri} is not blessed')
    return GateDecision(True, 'blessed by ' + ', '.join(b.kind for b in blessings))


def _check_same_model(b: Blessing, *, model_id: str | None, model_uri: str) -> None:
    if b.model_id is not None and model_id is not None:
        if b.model_id != model_id:
            raise BlessingMismatchError(
                f'{b.kind} at {b.uri} was made for model id {b.model_id}, but the model wired '
                f'in has id {model_id} ({model_uri}); wire the blessing from the Evaluator that '
                'evaluated this model'
            )
    elif b.model_uri and os.path.normpath(b.model_uri) != os.path.normpath(model_uri):
        raise BlessingMismatchError(
            f'{b.kind} at {b.uri} was made for the model at {b.model_uri}, not for {model_uri}'
        )


def stamped_model_dir(infra_blessing_uri: str, has_model: Any) -> str:
    """The model to export when `model` is not wired: the InfraValidator's stamped model.

    As the TFX Pusher does: an InfraValidator run with `request_spec.make_warmup`
    copies the model it validated, with the warmup requests it sent, to
    `<blessing>/stamped_model/` and sets `has_model` = 1 on its blessing.

    Args:
        infra_blessing_uri: The InfraBlessing folder.
        has_model: Its `has_model` property (1 or 1.0 when it holds a model), or
            None where properties are not known (the CLI): then the folder decides.

    Raises:
        InvalidInputError: if the blessing holds no model, saying what to wire.
    """
    path = f'{infra_blessing_uri.rstrip("/")}/{keys.STAMPED_MODEL_DIR}'
    holds = os.path.isdir(path) if has_model is None else str(has_model) in ('1', '1.0', 'True')
    if not holds:
        found = 'no stamped_model folder' if has_model is None else f'has_model={has_model!r}'
        raise InvalidInputError(
            f'model is not wired, and infra_blessing {infra_blessing_uri!r} holds no model '
            f'({found}); InfraValidator stamps one only with request_spec.make_warmup=True. '
            'Wire model=trainer.outputs["model"] (CLI: --model), or run InfraValidator with '
            'make_warmup to export its stamped model with its warmup requests'
        )
    return path
