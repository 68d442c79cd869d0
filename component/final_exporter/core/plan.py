"""The plan, made before anything is written: the source found and checked, the files to export.

Everything the user can get wrong about the inputs is found here: a model that is
not a readable SavedModel, an `assets_extra` source that is missing or clashes
with the model's files, serving options that cannot work together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from final_exporter.checks.savedmodel import (
    SavedModelInfo,
    inspect_saved_model,
    resolve_saved_model_dir,
)
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.keys import WARMUP_RELPATH
from final_exporter.core import lineage
from final_exporter.core.config import ExportConfig
from final_exporter.core.request import ExportRequest
from final_exporter.storage.base import Store
from final_exporter.storage.signing import SignerLoading
from final_exporter.storage.stores import store_for
from final_exporter.storage.types import CopyItem, FileEntry


@dataclasses.dataclass(frozen=True)
class Plan:
    """What will be exported, from where.

    Attributes:
        source_store: The store holding the source model.
        source_dir: The source SavedModel folder (inside the Model artifact).
        source: What its structure check found; `source.path` is where its files
            are read from (a local copy of a model in a bucket that TensorFlow
            rewrites, see `with_local_source`).
        assets: The `assets_extra` files, as copy items.
        items: Every file the export holds but the manifest (and signature), with its source.
        signer: The signing key (and chain), read, checked and loading; None: unsigned.
    """

    source_store: Store
    source_dir: str
    source: SavedModelInfo
    assets: list[CopyItem]
    items: list[CopyItem]
    signer: SignerLoading | None = None


def rewrites(config: ExportConfig) -> bool:
    """Whether TensorFlow writes the export's SavedModel (`serving_fn`, `as_text`), rather
    than the export being a byte copy of the source's."""
    return bool(config.serving_fn or config.as_text)


def plan_export(request: ExportRequest) -> Plan:
    """Resolves and checks the source model and plans the copy; writes nothing.

    Raises:
        InvalidInputError: for a model, `assets_extra` source, serving option or
            signing key that cannot be exported.
    """
    config = request.config
    with _unreadable_is_bad_input():
        source_store = store_for(request.model_uri)
        source_dir = resolve_saved_model_dir(request.model_uri, source_store)
        source = inspect_saved_model(source_dir, source_store)
        assets = _check_assets_extra_sources(config.assets_extra)
        items = _plan_copy(source_store, source, config, assets)
    _check_serving_inputs(config, request, items)
    return Plan(source_store, source_dir, source, assets, items, _signer(config))


def _signer(config: ExportConfig) -> SignerLoading | None:
    """The signing key and chain, read and checked now, so a bad key file is found before
    anything is written; loaded in full beside the copy (`SignerLoading`)."""
    if not config.signing_key:
        return None
    if importlib.util.find_spec('cryptography') is None:  # Found without importing it.
        raise InvalidInputError(
            "signing_key needs the [signing] extra: pip install 'tfx-final-exporter[signing]' "
            '(the cryptography package is not installed)'
        )
    return SignerLoading(config.signing_key, config.signing_certificate_chain)


def with_local_source(plan: Plan, config: ExportConfig, cleanup: contextlib.ExitStack) -> Plan:
    """The plan with the source as local files, when TensorFlow rewrites the model.

    TensorFlow needs the source model as files: a model in a bucket is downloaded
    once (into a folder `cleanup` removes); a local one is used where it is.
    """
    if not rewrites(config):
        return plan
    local = cleanup.enter_context(plan.source_store.local_tree(plan.source.path))
    source = dataclasses.replace(plan.source, path=local)
    items = _plan_copy(store_for(local), source, config, plan.assets)
    return dataclasses.replace(plan, source=source, items=items)


LineageFn = Callable[[Sequence[str], Mapping[str, FileEntry], Mapping[str, Any]], dict[str, Any]]


def lineage_maker(request: ExportRequest, plan: Plan, clock: Callable[[], float]) -> LineageFn:
    """The export's lineage, given its signatures, its files and the checks' results."""
    config = request.config

    def make_lineage(
        signatures: Sequence[str], files: Mapping[str, FileEntry], checks: Mapping[str, Any]
    ) -> dict[str, Any]:
        return lineage.build_lineage(
            name=config.name,
            export_format='pbtxt' if config.as_text else 'pb',
            signature_names=signatures,
            assets_extra_files=sorted(
                p.removeprefix(keys.ASSETS_EXTRA_DIR + '/')
                for p in files
                if p.startswith(keys.ASSETS_EXTRA_DIR + '/')
            ),
            source_model_uri=request.model_uri,
            source_model_id=request.model_id,
            source_saved_model_dir=plan.source_dir,
            blessings=request.blessings,
            serving_fn=config.serving_fn,
            extra={
                **request.extra_lineage,
                keys.EXAMPLES_URI_KEY: request.examples_uri,
                keys.IDEMPOTENCY_KEY_KEY: request.idempotency_key,
                **checks,
            },
            clock=clock,
        )

    return make_lineage


@contextlib.contextmanager
def _unreadable_is_bad_input() -> Iterator[None]:
    """A model file or folder this user cannot read is the input's fault (exit 2), not an I/O failure."""
    try:
        yield
    except PermissionError as e:
        raise InvalidInputError(
            f'cannot read {e.filename!r} ({e.strerror}); expected the model to be readable by '
            f'the user running the export (uid {os.geteuid()})'
        ) from None


def _check_assets_extra_sources(assets_extra: Mapping[str, str]) -> list[CopyItem]:
    items = []
    for dest, src in assets_extra.items():
        store = store_for(src)
        if not store.is_file(src):
            what = 'a folder' if store.children(src) else 'missing'
            raise InvalidInputError(
                f'assets_extra source for {dest!r} is {what}: {src!r}; expected a readable file'
            )
        if not store.is_readable(src):
            raise InvalidInputError(f'assets_extra source for {dest!r} is not readable: {src!r}')
        items.append(
            CopyItem(src=src, dest=f'{keys.ASSETS_EXTRA_DIR}/{dest}', size=store.size(src))
        )
    return items


def _check_serving_inputs(
    config: ExportConfig, request: ExportRequest, items: list[CopyItem]
) -> None:
    """Refuses, before anything is written, serving options that cannot work together."""
    if request.examples_uri and not os.path.isdir(request.examples_uri):
        raise InvalidInputError(f'examples folder {request.examples_uri!r} does not exist')
    if config.warmup_requests and not request.examples_uri:
        raise InvalidInputError(
            f'warmup_requests={config.warmup_requests} needs the examples input '
            '(an Examples artifact) to build the requests from'
        )
    if config.warmup_requests and any(i.dest == WARMUP_RELPATH for i in items):
        raise InvalidInputError(
            f'warmup_requests={config.warmup_requests}, but the export already has '
            f'{WARMUP_RELPATH} (from the model or assets_extra); set warmup_requests=0 to '
            'keep (and validate) that file'
        )


def _plan_copy(
    store: Store, source: SavedModelInfo, config: ExportConfig, assets: list[CopyItem]
) -> list[CopyItem]:
    """All files the export will hold (but the manifest), with their sources."""
    # A re-export of an export carries an old manifest and signature (over that manifest);
    # the new export writes its own.
    exclude = [keys.MANIFEST_RELPATH, keys.SIGNATURE_RELPATH]
    if config.serving_fn:
        # TensorFlow writes the SavedModel itself; only assets.extra is copied.
        planned = [
            i
            for i in store.plan_tree(source.path, exclude=exclude)
            if i.dest.startswith(keys.ASSETS_EXTRA_DIR + '/')
        ]
    else:
        if config.as_text:
            exclude.append(keys.SAVED_MODEL_PB)
        planned = store.plan_tree(source.path, exclude=exclude)
    taken = {i.dest for i in planned}
    for item in assets:
        if item.dest in taken:
            raise InvalidInputError(
                f'assets_extra destination {item.dest!r} is already in the source SavedModel; '
                'choose another destination'
            )
    return planned + assets
