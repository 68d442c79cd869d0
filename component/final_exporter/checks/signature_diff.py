"""Which changes to the serving signatures break the clients of the served version.

A client of TensorFlow Serving names a signature, sends every input by its key
with a dtype and a shape the signature accepts, and reads outputs by key. So,
from the served version to the new export:

Breaking:
  * a signature removed, or its method name changed (Classify, Regress and
    Predict requests each need their own);
  * an input added (clients do not send it), removed, or renamed (a removed and
    an added input with the same dtype, shape and encoding are reported as one
    rename);
  * an input's dtype or encoding changed, or its shape narrowed or changed;
  * an output removed, or its dtype or encoding changed.

Compatible: a signature added, an output added, an input's shape relaxed. An
output's shape change is recorded as compatible: clients read what comes back.

Shapes, of an input (old -> new), dimension by dimension (-1: any size):
  * unknown rank -> unknown rank, or the same dimensions: unchanged;
  * known rank -> unknown rank, or fixed -> -1 in some dimensions and nothing
    else changed: relaxed (every request that was accepted still is);
  * unknown rank -> known rank, or -1 -> fixed in some dimension: narrowed
    (requests of other shapes that were accepted are now refused);
  * a different rank, or fixed a -> fixed b: changed (breaking); a shape that
    is changed in one dimension and relaxed in another is changed.
The tensor names inside the graph (`serving_default_x:0`) are not compared:
requests never name them, and every re-export renames them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from final_exporter.checks.signature_defs import Signature, TensorSpec

SAME, RELAXED, NARROWED, CHANGED = 'same', 'relaxed', 'narrowed', 'changed'

BREAKING_KINDS = frozenset({
    'signature_removed',
    'method_name_changed',
    'input_added',
    'input_removed',
    'input_renamed',
    'input_dtype_changed',
    'input_encoding_changed',
    'input_shape_narrowed',
    'input_shape_changed',
    'output_removed',
    'output_dtype_changed',
    'output_encoding_changed',
})  # fmt: skip
COMPATIBLE_KINDS = frozenset({
    'signature_added',
    'output_added',
    'input_shape_relaxed',
    'output_shape_changed',
})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SignatureChange:
    """One difference between the served signatures and the new ones.

    Attributes:
        kind: One of `BREAKING_KINDS` or `COMPATIBLE_KINDS`.
        signature: The signature key.
        side: `input` or `output` for a tensor's change; None for a signature's.
        name: The input's or output's key (for a rename: the served one).
        new_name: For a rename: the new key.
        old: The served tensor (for a removal, a rename or a change).
        new: The new tensor (for an addition, a rename or a change).
        old_method: For a signature removed or a method name changed: the served method.
        new_method: For a signature added or a method name changed: the new method.
    """

    kind: str
    signature: str
    side: str | None = None
    name: str | None = None
    new_name: str | None = None
    old: TensorSpec | None = None
    new: TensorSpec | None = None
    old_method: str | None = None
    new_method: str | None = None

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING_KINDS

    def text(self) -> str:
        """One line naming the signature, the input or output, and the dtypes and shapes."""
        where = f'signature {self.signature!r}'
        what = self.kind.rsplit('_', 1)[-1]  # removed, added, renamed, changed, ...
        if self.side is None:
            if self.kind == 'method_name_changed':
                return f'{where}: method name changed {self.old_method!r} -> {self.new_method!r}'
            return f'{where} {what} (method {self.old_method or self.new_method!r})'
        tensor = f'{where}: {self.side} {self.name!r}'
        if self.kind.endswith('_renamed'):
            return f'{tensor} renamed to {self.new_name!r} ({self.new.text()})'
        if self.old is None or self.new is None:
            return f'{tensor} {what} ({(self.old or self.new).text()})'
        aspect = self.kind.split('_')[1]  # dtype, encoding, shape
        if aspect == 'shape':
            change = f'{self.old.shape_text()} -> {self.new.shape_text()} ({self.new.dtype})'
        else:
            before, after = getattr(self.old, aspect), getattr(self.new, aspect)
            change = f'{before} -> {after} (shape {self.new.shape_text()})'
        return f'{tensor} {aspect} {what} {change}'

    def to_dict(self) -> dict[str, Any]:
        """JSON-able for lineage: the fields that are set, the tensors as dicts, and `text`."""
        record: dict[str, Any] = {'kind': self.kind, 'signature': self.signature}
        for field in ('side', 'name', 'new_name', 'old_method', 'new_method'):
            if getattr(self, field) is not None:
                record[field] = getattr(self, field)
        for field in ('old', 'new'):
            if getattr(self, field) is not None:
                record[field] = getattr(self, field).to_dict()
        record['text'] = self.text()
        return record


@dataclasses.dataclass(frozen=True)
class SignatureDiff:
    """The breaking and the compatible changes from the served signatures to the new ones."""

    breaks: tuple[SignatureChange, ...]
    compatible: tuple[SignatureChange, ...]

    @property
    def breaking(self) -> bool:
        return bool(self.breaks)

    def to_lineage(self) -> dict[str, Any]:
        """`{'breaks': [...], 'compatible_changes': [...]}`, each change as `to_dict` gives it."""
        return {
            'breaks': [c.to_dict() for c in self.breaks],
            'compatible_changes': [c.to_dict() for c in self.compatible],
        }


def compare_shapes(old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> str:
    """`same`, `relaxed`, `narrowed` or `changed`: an input's shape from `old` to `new`.

    Shapes are as `TensorSpec.shape` holds them: None for an unknown rank, -1 for
    a dimension of any size. See the module docstring for the rules.
    """
    if old is None or new is None:
        return SAME if old == new else (NARROWED if old is None else RELAXED)
    if len(old) != len(new):
        return CHANGED
    seen = set()
    for before, after in zip(old, new, strict=True):
        if before == after:
            continue
        if before >= 0 and after >= 0:
            return CHANGED
        seen.add(NARROWED if before < 0 else RELAXED)
    if seen == {NARROWED, RELAXED}:
        return CHANGED
    return seen.pop() if seen else SAME


def diff_signatures(served: Mapping[str, Signature], new: Mapping[str, Signature]) -> SignatureDiff:
    """Compares the served version's signatures with the new export's.

    Args:
        served: By signature key, as `signature_defs.read_serving_signatures` reads them.
        new: The same for the new export.

    Returns:
        The SignatureDiff, its changes in signature-key order.
    """
    changes: list[SignatureChange] = []
    for key in sorted(set(served) | set(new)):
        old_sig, new_sig = served.get(key), new.get(key)
        if new_sig is None:
            changes.append(
                SignatureChange('signature_removed', key, old_method=old_sig.method_name)
            )
        elif old_sig is None:
            changes.append(SignatureChange('signature_added', key, new_method=new_sig.method_name))
        else:
            changes += _signature_changes(key, old_sig, new_sig)
    return SignatureDiff(
        breaks=tuple(c for c in changes if c.breaking),
        compatible=tuple(c for c in changes if not c.breaking),
    )


def _signature_changes(key: str, old: Signature, new: Signature) -> list[SignatureChange]:
    changes = []
    if old.method_name != new.method_name:
        changes.append(
            SignatureChange(
                'method_name_changed', key, old_method=old.method_name, new_method=new.method_name
            )
        )
    changes += _input_changes(key, old.inputs, new.inputs)
    changes += _output_changes(key, old.outputs, new.outputs)
    return changes


def _input_changes(
    key: str, old: Mapping[str, TensorSpec], new: Mapping[str, TensorSpec]
) -> list[SignatureChange]:
    removed = [n for n in old if n not in new]
    added = [n for n in new if n not in old]
    changes = []
    for name in removed:
        twin = next((a for a in added if new[a] == old[name]), None)
        if twin is None:
            changes.append(SignatureChange('input_removed', key, 'input', name, old=old[name]))
        else:
            added.remove(twin)
            changes.append(
                SignatureChange(
                    'input_renamed', key, 'input', name, twin, old=old[name], new=new[twin]
                )
            )
    changes += [SignatureChange('input_added', key, 'input', n, new=new[n]) for n in added]
    for name in sorted(set(old) & set(new)):
        changes += _tensor_changes(key, 'input', name, old[name], new[name])
    return changes


def _output_changes(
    key: str, old: Mapping[str, TensorSpec], new: Mapping[str, TensorSpec]
) -> list[SignatureChange]:
    changes = [
        SignatureChange('output_removed', key, 'output', n, old=old[n]) for n in old if n not in new
    ]
    changes += [
        SignatureChange('output_added', key, 'output', n, new=new[n]) for n in new if n not in old
    ]
    for name in sorted(set(old) & set(new)):
        changes += _tensor_changes(key, 'output', name, old[name], new[name])
    return changes


def _tensor_changes(
    key: str, side: str, name: str, old: TensorSpec, new: TensorSpec
) -> list[SignatureChange]:
    """The dtype, encoding and shape changes of one input or output kept under its key."""
    kinds = [
        f'{side}_{aspect}_changed'
        for aspect in ('dtype', 'encoding')
        if getattr(old, aspect) != getattr(new, aspect)
    ]
    shape = compare_shapes(old.shape, new.shape)
    if shape != SAME:
        kinds.append(f'{side}_shape_changed' if side == 'output' else f'input_shape_{shape}')
    return [SignatureChange(kind, key, side, name, old=old, new=new) for kind in kinds]
