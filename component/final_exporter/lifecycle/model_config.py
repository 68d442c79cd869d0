"""Version labels (`stable`, `canary`, ...) in a TensorFlow Serving model config file.

The file is `<model_base>/models.config`, a `tensorflow.serving.ModelServerConfig`
in text format (the `tensorflow-serving-api` proto), next to the versions. The
name is the one TensorFlow Serving's documentation uses; it is not a number, so
the server never takes it for a version. Run the server with

    tensorflow_model_server --model_config_file=<model_base>/models.config \\
        --model_config_file_poll_wait_seconds=30 \\
        --allow_version_labels_for_unavailable_models=true

(the last flag lets a label that is new, e.g. at server start, name a version the
server is still loading).

What this module keeps in the file for its model (other models and fields are kept
as they are; comments are not):

* `version_labels`: label -> version.
* `model_version_policy { specific { versions: ... } }`: the versions the server
  loads. TensorFlow Serving only serves a label whose version is loaded, so this
  lists every labelled version, the latest complete version (so a new export is
  served), and, for each label, its *standby*: the newest complete version older
  than the labelled one, the version `rollback` would move the label to, loaded
  in advance so a rollback takes effect at once.

TensorFlow Serving checks labels before it loads anything a new config adds, and
it refuses to move an existing label to a version it has not loaded. A config
that did both at once would be refused at every poll and the new version would
never load. So moving an existing label to a version that the file does not list
yet is done in two steps: `set_label` adds the version to the policy and leaves
the label where it is (`applied=False`); the same call once the server has loaded
the version (one poll later) moves the label. `force=True` moves it at once (for a
server that is not running yet).

A version is *complete* when it holds `assets.extra/export_manifest.json`, the last
thing an export writes before its version folder appears.

The model base may be a local folder or a bucket prefix: the store (storage/)
serialises writers with its lock (locally an `flock` on `.models.config.lock`; on
a bucket a leased lock object) and replaces the file with a compare-and-swap
write (locally a temporary file, fsync and `os.replace`; on GCS a generation
precondition; on S3 a conditional write on the ETag). So concurrent writers (two
exporters, an exporter and `final-exporter label`, retention) never lose each
other's changes, and the server never reads half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from final_exporter.checks.savedmodel import GRAPH_FILES
from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.common.keys import LABEL_PATTERN
from final_exporter.storage.base import ModelBase, Store
from final_exporter.storage.stores import resolve_model_base
from final_exporter.storage.verify import verify_export

if TYPE_CHECKING:
    from tensorflow_serving.config import model_server_config_pb2

logger = logging.getLogger(__name__)

CONFIG_FILENAME = 'models.config'
LOCK_FILENAME = '.models.config.lock'
LABELS_LINEAGE_KEY = keys.LABELS_LINEAGE_KEY
DEFAULT_LABEL = 'stable'
MODEL_PLATFORM = 'tensorflow'
# Labels travel in REST paths (/v1/models/<name>/labels/<label>) and gRPC fields.
_LABEL_RE = re.compile(LABEL_PATTERN)
_HEADER = (
    '# TensorFlow Serving model config (ModelServerConfig text proto), managed by\n'
    '# final-exporter: `final-exporter label` / `rollback` change labels and the versions\n'
    '# served. Other models and fields are kept; comments are not.\n'
)


@dataclasses.dataclass(frozen=True)
class LabelResult:
    """The outcome of `set_label` or `rollback`.

    Attributes:
        config_path: The model config file.
        model_name: The model's name in it.
        label: The label that was set.
        version: The version the label was asked to point to.
        previous_version: Where the label pointed before (None if it is new).
        applied: False when the label was left where it was because the server has
            not been asked to load `version` yet (see the module docstring); the
            version was added to the served versions; call again later.
        labels: All labels of the model after the write.
        served_versions: The versions the policy lists after the write.
    """

    config_path: str
    model_name: str
    label: str
    version: int
    previous_version: int | None
    applied: bool
    labels: Mapping[str, int]
    served_versions: tuple[int, ...]

    def to_lineage(self) -> dict[str, Any]:
        """`{'version_labels': {...}}` for the lineage (JSON-able)."""
        return {
            LABELS_LINEAGE_KEY: {
                'config_path': self.config_path,
                'model_name': self.model_name,
                'label': self.label,
                'version': self.version,
                'previous_version': self.previous_version,
                'applied': self.applied,
                'labels': dict(sorted(self.labels.items())),
                'served_versions': list(self.served_versions),
            }
        }


def config_path(model_base: str | ModelBase) -> str:
    """`<model_base>/models.config`."""
    return resolve_model_base(model_base).join(CONFIG_FILENAME)


def complete_versions(model_base: str | ModelBase) -> list[int]:
    """The versions holding an export manifest and their graph file, ascending.

    On a bucket a version being published gets `saved_model.pb` last, so it is not
    complete (nor removed by retention) until its publish has finished. Local
    symlinks are left out: they are not folders this package made.
    """
    base = resolve_model_base(model_base)
    store = base.store
    found = []
    for version in base.list_versions():
        version_dir = base.version_dir(version)
        names = store.children(version_dir)
        if any(name in names for name in GRAPH_FILES) and store.is_file(
            store.join(version_dir, *keys.MANIFEST_RELPATH.split('/'))
        ):
            found.append(version)
    return found


@contextlib.contextmanager
def locked(model_base: str | ModelBase) -> Iterator[None]:
    """Holds the exclusive lock on the model config of `model_base` (see the store's `lock`).

    Raises:
        InvalidInputError: if the lock cannot be taken (e.g. `model_base` does not exist).
    """
    base = resolve_model_base(model_base)
    with base.store.lock(base.path):
        yield


def read_config(model_base: str | ModelBase) -> model_server_config_pb2.ModelServerConfig | None:
    """The parsed model config file, or None if there is none.

    Raises:
        InvalidInputError: if the file is not a `ModelServerConfig` text proto, or
            holds a `custom_model_config`, which this module cannot manage.
    """
    return _read_config(resolve_model_base(model_base))[0]


def _read_config(base: ModelBase) -> tuple[Any, Any]:
    """(the parsed config or None, the token a compare-and-swap write must match)."""
    path = config_path(base)
    current = base.store.read_versioned(path)
    if current.data is None:
        return None, current.token
    # Imported only to parse one: most exports (the guard reads the labels) find no file.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(current.data.decode('utf-8'), config)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise InvalidInputError(
            f'model config file {path!r} is not a tensorflow.serving.ModelServerConfig text '
            f'proto: {e}'
        ) from None
    if config.WhichOneof('config') == 'custom_model_config':
        raise InvalidInputError(
            f'model config file {path!r} holds a custom_model_config; expected a model_config_list'
        )
    return config, current.token


# Under the store's lock a write normally succeeds first time; a lost compare-and-swap
# means someone wrote without the lock (or took over an expired one), so read again.
_MAX_CONFIG_WRITES = 20


def _update_config(base: ModelBase, change: Callable[[Any], Any]) -> Any:
    """Reads the config, applies `change`, writes it back only if nobody wrote meanwhile.

    `change` gets the config (a new empty one if there is no file) and returns
    the result to hand back, or None to write nothing.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = config_path(base)
    for _ in range(_MAX_CONFIG_WRITES):
        config, token = _read_config(base)
        config = config or model_server_config_pb2.ModelServerConfig()
        result = change(config)
        if result is None:
            return None
        data = (_HEADER + text_format.MessageToString(config)).encode('utf-8')
        if base.store.write_versioned(path, data, token):
            return result
        logger.info('%s changed while it was updated; reading it again.', path)
    raise InvalidInputError(
        f'model config file {path!r} kept changing under {_MAX_CONFIG_WRITES} updates; is a '
        'writer ignoring the lock?'
    )


def _entry(base: ModelBase, model_name: str | None) -> Any | None:
    """The model's entry in the model config file; None without the file or the model."""
    config = _read_config(base)[0]
    return _find_entry(config, base, model_name) if config else None


def labels(model_base: str | ModelBase, *, model_name: str | None = None) -> dict[str, int]:
    """{label: version} of the model in `<model_base>/models.config`; {} without one."""
    entry = _entry(resolve_model_base(model_base), model_name)
    return dict(entry.version_labels) if entry else {}


def served_versions(model_base: str | ModelBase, *, model_name: str | None = None) -> list[int]:
    """The versions the model config's `specific` policy lists; [] without one."""
    entry = _entry(resolve_model_base(model_base), model_name)
    return _policy_versions(entry) if entry else []


def pinned_versions(model_base: str | ModelBase, *, model_name: str | None = None) -> set[int]:
    """Versions the model config needs: labelled or listed in the policy.

    Retention never removes these. Call it holding `locked(model_base)` so the
    answer stays true while you act on it.
    """
    entry = _entry(resolve_model_base(model_base), model_name)
    if entry is None:
        return set()
    return set(entry.version_labels.values()) | set(_policy_versions(entry))


def set_label(
    model_base: str | ModelBase,
    version: int,
    label: str,
    *,
    model_name: str | None = None,
    base_path: str | None = None,
    verify: bool = True,
    force: bool = False,
) -> LabelResult:
    """Points `label` at `version` in `<model_base>/models.config`, creating the file if needed.

    Args:
        model_base: `<export_base>/<name>`, the folder holding the versions (or
            its `ModelBase`, resolved already).
        version: The version to label.
        label: The label, e.g. `stable` or `canary`: a letter, then up to 62
            letters, digits, `_`, `.` or `-`.
        model_name: The model's name in the file; default: the file's only model,
            else the name of the `model_base` folder.
        base_path: The model base path as the server sees it (absolute path or URI,
            e.g. `/models/penguin` in a container); default: the absolute path of
            `model_base` for a new entry, unchanged for an existing one.
        verify: Re-hash the version against its manifest first. Pass False only
            when it was verified just now (e.g. by the exporter that published it).
        force: Move an existing label even to a version the server has not been
            asked to load yet (see the module docstring).

    Returns:
        The LabelResult; `applied` False means the label stays until the next call.

    Raises:
        InvalidInputError: for a bad label or base path, a version that does not
            exist or does not verify, or an unreadable model config file.
    """
    _check_label(label)
    _check_version(version)
    base = resolve_model_base(model_base)
    version_dir = _version_dir(base, version)
    if verify:
        check_version_verifies(version_dir, store=base.store)
    with locked(base):
        return _update_config(
            base,
            lambda config: _write_label(config, base, version, label, model_name, base_path, force),
        )


def rollback(
    model_base: str | ModelBase,
    label: str = DEFAULT_LABEL,
    *,
    model_name: str | None = None,
    force: bool = False,
) -> LabelResult:
    """Moves `label` to the newest version older than its current one that verifies.

    Versions are tried newest first; each is re-hashed against its manifest and
    skipped (with a warning) if it does not match. The standby the policy keeps
    loaded is normally the one chosen, so the server takes the change at once.

    Returns:
        The LabelResult: `previous_version` is the version rolled back from,
        `version` the one rolled back to.

    Raises:
        InvalidInputError: if the label is not set, no older version verifies, or
            the label moved while the versions were being checked.
    """
    _check_label(label)
    base = resolve_model_base(model_base)
    current = labels(base, model_name=model_name).get(label)
    if current is None:
        raise InvalidInputError(
            f'no label {label!r} in {config_path(base)!r} to roll back; it has labels '
            f'{labels(base, model_name=model_name)}'
        )
    target = _newest_verifying(base, current, label)
    with locked(base):
        now = labels(base, model_name=model_name).get(label)
        if now != current:
            raise InvalidInputError(
                f'label {label!r} moved from version {current} to {now} while rolling back; '
                'run the rollback again'
            )
        result = _update_config(
            base,
            lambda config: _write_label(config, base, target, label, model_name, None, force),
        )
    logger.info('Rolled %s back from version %s to %s.', label, current, target)
    return result


def _newest_verifying(base: ModelBase, current: int, label: str) -> int:
    """The newest complete version older than `current` that verifies.

    Raises:
        InvalidInputError: if there is none.
    """
    older = [v for v in complete_versions(base) if v < current]
    for candidate in reversed(older):
        try:
            check_version_verifies(base.version_dir(candidate), store=base.store)
        except InvalidInputError as e:
            logger.warning('Not rolling back to version %s: %s', candidate, e)
            continue
        return candidate
    raise InvalidInputError(
        f'cannot roll {label!r} back from version {current}: no complete version older than '
        f'it under {base.path!r} verifies against its manifest (checked {older[::-1]})'
    )


def refresh(
    model_base: str | ModelBase, *, model_name: str | None = None
) -> tuple[int, ...] | None:
    """Recomputes the served versions after a publish; a no-op without a model config file.

    Call it after publishing a version with no label, so the server loads the new
    latest version.

    Returns:
        The served versions, or None when there is no model config file.
    """
    base = resolve_model_base(model_base)
    if _read_config(base)[0] is None:
        return None

    def change(config: Any) -> tuple[int, ...] | None:
        entry = _find_entry(config, base, model_name)
        return None if entry is None else _set_policy(entry, base, extra=())

    with locked(base):
        return _update_config(base, change)


def check_version_verifies(version_dir: str, *, store: Store | None = None) -> None:
    """Re-hashes a version folder against its manifest.

    Args:
        version_dir: The version folder or prefix.
        store: The store holding it, when the caller has resolved it already.

    Raises:
        InvalidInputError: naming the folder and its first problems.
    """
    try:
        report = verify_export(version_dir, store=store)
    except IntegrityError as e:
        raise InvalidInputError(f'version {version_dir!r} does not verify: {e}') from None
    if not report.ok:
        problems = report.problems()
        more = f' and {len(problems) - 5} more' if len(problems) > 5 else ''
        raise InvalidInputError(
            f'version {version_dir!r} does not match its manifest: {"; ".join(problems[:5])}{more}'
        )


def _write_label(
    config: Any,
    base: ModelBase,
    version: int,
    label: str,
    model_name: str | None,
    base_path: str | None,
    force: bool,
) -> LabelResult:
    """Under the lock: sets the label (or stages its version) in `config`."""
    # Retention may have removed the version since it was checked; it holds the lock
    # while it does, so this is final.
    _version_dir(base, version)
    entry = _find_entry(config, base, model_name)
    if entry is None:
        entry = config.model_config_list.config.add()
        entry.name = model_name or _default_name(base)
        entry.base_path = _check_base_path(base_path or base.store.absolute(base.path))
        entry.model_platform = MODEL_PLATFORM
    elif base_path is not None:
        entry.base_path = _check_base_path(base_path)
    listed = set(_policy_versions(entry))
    previous = entry.version_labels.get(label)
    applied = force or previous is None or previous == version or version in listed
    if applied:
        entry.version_labels[label] = version
    else:
        logger.warning(
            'Label %s stays on version %s for now: TensorFlow Serving moves a label only to a '
            'loaded version, so version %s is added to the served versions first. Set the label '
            'again once the server has loaded it.',
            label,
            previous,
            version,
        )
    served = _set_policy(entry, base, extra=() if applied else (version,))
    logger.info(
        'Label %s -> %s in %s (served versions %s).',
        label,
        version if applied else previous,
        config_path(base),
        list(served),
    )
    return LabelResult(
        config_path=config_path(base),
        model_name=entry.name,
        label=label,
        version=version,
        previous_version=previous,
        applied=applied,
        labels=dict(entry.version_labels),
        served_versions=served,
    )


def _set_policy(entry: Any, base: ModelBase, extra: tuple[int, ...]) -> tuple[int, ...]:
    """Sets the `specific` policy: labelled versions, their standbys, the latest, `extra`."""
    complete = complete_versions(base)
    labelled = set(entry.version_labels.values())
    wanted = labelled | set(extra)
    if complete:
        wanted.add(complete[-1])
    for version in labelled:
        older = [v for v in complete if v < version]
        if older:
            wanted.add(older[-1])
    if not wanted:
        return tuple(_policy_versions(entry))
    versions = tuple(sorted(wanted))
    entry.model_version_policy.specific.Clear()
    entry.model_version_policy.specific.versions.extend(versions)
    return versions


def _policy_versions(entry: Any) -> list[int]:
    policy = entry.model_version_policy
    if policy.WhichOneof('policy_choice') != 'specific':
        return []
    return sorted(policy.specific.versions)


def _find_entry(config: Any, base: ModelBase, model_name: str | None) -> Any | None:
    entries = list(config.model_config_list.config)
    if model_name is not None:
        return next((e for e in entries if e.name == model_name), None)
    if len(entries) == 1:
        return entries[0]
    default = _default_name(base)
    return next((e for e in entries if e.name == default), None)


def _default_name(base: ModelBase) -> str:
    """The last part of the model base path: the model's name, as the exporter wrote it."""
    return base.store.absolute(base.path).rstrip('/').rsplit('/', 1)[-1]


def _version_dir(base: ModelBase, version: int) -> str:
    if version not in base.list_versions():
        raise InvalidInputError(
            f'version {version} does not exist under {base.path!r}; it has complete versions '
            f'{complete_versions(base)}'
        )
    return base.version_dir(version)


def _check_label(label: Any) -> None:
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise InvalidInputError(
            f'label must be a letter followed by up to 62 letters, digits, "_", "." or "-" '
            f'(e.g. "stable", "canary"), got {label!r}'
        )


def _check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidInputError(f'version must be a non-negative integer, got {version!r}')


def _check_base_path(base_path: str) -> str:
    # TensorFlow Serving refuses relative base paths (without --model_config_list_root_dir).
    if not (base_path.startswith('/') or '://' in base_path):
        raise InvalidInputError(
            f'base_path must be an absolute path or a URI (TensorFlow Serving refuses '
            f'relative ones), got {base_path!r}'
        )
    return base_path
