"""A Vertex AI ModelService on loopback, for the Model Registry tests.

Serves the `google.cloud.aiplatform.v1.ModelService` methods the exporter calls
(UploadModel, GetModel, ListModels, ListModelVersions, MergeVersionAliases) and
`google.longrunning.Operations.GetOperation`, with the request and response
messages of the client library itself (`google.cloud.aiplatform_v1.types`), so
the real `ModelServiceClient` talks to it over gRPC. Models, versions and
aliases live in memory. A test can fail the next call of a method, fail the
next upload's operation, or hold a method until it is released (to kill a
client at that moment).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from google.cloud.aiplatform_v1 import types
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import status_pb2

_SERVICE = 'google.cloud.aiplatform.v1.ModelService'
_OPERATIONS = 'google.longrunning.Operations'
_MODEL_RE = re.compile(
    r'(?P<location>projects/[^/]+/locations/[^/]+)/models/(?P<id>[^/@]+)(?:@(?P<ref>.+))?'
)
_FILTER_RE = re.compile(r'([\w.]+)\s*=\s*"([^"]*)"')


class _RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclasses.dataclass
class _Hold:
    reached: threading.Event = dataclasses.field(default_factory=threading.Event)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


class VertexModelService:
    """The in-memory registry and its gRPC handlers.

    Attributes:
        endpoint: `127.0.0.1:PORT`, for `FINAL_EXPORTER_VERTEX_ENDPOINT`.
        models: {model resource name: [version Model, ...]} in upload order.
        calls: (method, request) of every call, in order.
    """

    def __init__(self) -> None:
        self.models: dict[str, list[types.Model]] = {}
        self.calls: list[tuple[str, object]] = []
        self._operations: dict[str, tuple[operations_pb2.Operation, operations_pb2.Operation]] = {}
        self._failures: dict[str, tuple[grpc.StatusCode, str]] = {}
        self._operation_failure: tuple[int, str] | None = None
        self._holds: dict[str, _Hold] = {}
        self._ids = itertools.count(1000)
        self._lock = threading.RLock()
        self.endpoint = ''

    # --- What a test can ask for -------------------------------------------------------

    def fail_next(self, method: str, code: grpc.StatusCode, message: str = 'injected') -> None:
        """The next call of `method` (e.g. 'UploadModel') fails with `code`."""
        self._failures[method] = (code, message)

    def fail_next_operation(self, code: int = 13, message: str = 'injected failure') -> None:
        """The next UploadModel's operation finishes with this google.rpc error; no version."""
        self._operation_failure = (code, message)

    def hold(self, method: str) -> _Hold:
        """The next call of `method` waits until `.release` is set; `.reached` says it came."""
        hold = self._holds[method] = _Hold()
        return hold

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    def versions(self, display_name: str) -> list[types.Model]:
        """Every version of the models with this display name."""
        return [v for vs in self.models.values() for v in vs if v.display_name == display_name]

    def add_model(self, location: str, display_name: str, model_id: str | None = None) -> str:
        """Creates a model with one version (as another tool would); returns its name."""
        name = f'{location}/models/{model_id or next(self._ids)}'
        self.models[name] = [
            types.Model(
                name=name,
                display_name=display_name,
                version_id='1',
                version_aliases=['default'],
                artifact_uri='gs://elsewhere/model',
                version_create_time=timestamp_pb2.Timestamp(seconds=1),
            )
        ]
        return name

    # --- The methods ------------------------------------------------------------------------

    def _enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        self.calls.append((method, request))
        hold = self._holds.pop(method, None)
        if hold is not None:
            hold.reached.set()
            while not hold.release.wait(0.05):
                if not context.is_active():
                    break
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise _RpcError(*failure)

    def _model(self, name: str) -> tuple[str, list[types.Model], str | None]:
        match = _MODEL_RE.fullmatch(name)
        if not match:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f'bad model name {name!r}')
        model = f'{match["location"]}/models/{match["id"]}'
        if model not in self.models:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f'Model {model} not found')
        return model, self.models[model], match['ref']

    def _version(self, name: str) -> types.Model:
        _, versions, ref = self._model(name)
        ref = ref or 'default'
        for version in versions:
            if version.version_id == ref or ref in version.version_aliases:
                return version
        raise _RpcError(grpc.StatusCode.NOT_FOUND, f'no version {ref!r} of {name}')

    def upload_model(self, request: types.UploadModelRequest, context) -> operations_pb2.Operation:
        self._enter('UploadModel', request, context)
        if not request.model.display_name:
            # google.cloud.aiplatform.v1.Model.display_name is REQUIRED, on a new version too.
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, 'model.display_name is required')
        with self._lock:
            version = types.Model.deserialize(types.Model.serialize(request.model))
            if request.parent_model:
                name, versions, _ = self._model(request.parent_model)
                taken = {a for v in versions for a in v.version_aliases} - {'default'}
                clash = sorted(set(version.version_aliases) & taken)
                if clash:
                    raise _RpcError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f'version aliases {clash} are already used by another version',
                    )
                if 'default' in version.version_aliases:
                    for other in versions:
                        _drop(other, 'default')
            else:
                name = f'{request.parent}/models/{request.model_id or next(self._ids)}'
                if name in self.models:
                    raise _RpcError(grpc.StatusCode.ALREADY_EXISTS, f'{name} already exists')
                versions = self.models[name] = []
                if 'default' not in version.version_aliases:
                    version.version_aliases.append('default')
            operation_name = f'{request.parent}/operations/{next(self._ids)}'
            failure, self._operation_failure = self._operation_failure, None
            done = operations_pb2.Operation(name=operation_name, done=True)
            if failure is not None:
                if not versions:
                    del self.models[name]
                done.error.CopyFrom(status_pb2.Status(code=failure[0], message=failure[1]))
            else:
                version.name = name
                version.version_id = str(len(versions) + 1)
                version.version_create_time = timestamp_pb2.Timestamp(seconds=len(versions) + 2)
                versions.append(version)
                response = any_pb2.Any()
                response.Pack(
                    types.UploadModelResponse.pb(
                        types.UploadModelResponse(model=name, model_version_id=version.version_id)
                    )
                )
                done.response.CopyFrom(response)
            running = operations_pb2.Operation(name=operation_name, done=False)
            self._operations[operation_name] = (running, done)
        return running

    def get_operation(self, request: operations_pb2.GetOperationRequest, context):
        self._enter('GetOperation', request, context)
        if request.name not in self._operations:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f'no operation {request.name}')
        _, done = self._operations[request.name]
        return done

    def get_model(self, request: types.GetModelRequest, context) -> types.Model:
        self._enter('GetModel', request, context)
        return self._version(request.name)

    def list_models(self, request: types.ListModelsRequest, context) -> types.ListModelsResponse:
        self._enter('ListModels', request, context)
        wanted = dict(_FILTER_RE.findall(request.filter))
        found = []
        for name, versions in self.models.items():
            if not name.startswith(request.parent + '/'):
                continue
            default = next(v for v in versions if 'default' in v.version_aliases)
            if _matches(default, wanted):
                found.append(default)
        return types.ListModelsResponse(models=found)

    def list_model_versions(
        self, request: types.ListModelVersionsRequest, context
    ) -> types.ListModelVersionsResponse:
        self._enter('ListModelVersions', request, context)
        _, versions, _ = self._model(request.name)
        wanted = dict(_FILTER_RE.findall(request.filter))
        return types.ListModelVersionsResponse(models=[v for v in versions if _matches(v, wanted)])

    def merge_version_aliases(
        self, request: types.MergeVersionAliasesRequest, context
    ) -> types.Model:
        self._enter('MergeVersionAliases', request, context)
        with self._lock:
            _, versions, ref = self._model(request.name)
            if not ref or not ref.isdigit():
                raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, 'name needs @VERSION_ID')
            target = self._version(request.name)
            for alias in request.version_aliases:
                if alias.startswith('-'):
                    if alias[1:] == 'default':
                        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, 'cannot remove default')
                    _drop(target, alias[1:])
                    continue
                for other in versions:
                    _drop(other, alias)
                target.version_aliases.append(alias)
            return target

    # --- gRPC plumbing -----------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(method, request_type, response_serializer):
            def call(request, context):
                try:
                    return method(request, context)
                except _RpcError as e:
                    context.abort(e.code, e.message)

            return grpc.unary_unary_rpc_method_handler(
                call,
                request_deserializer=request_type,
                response_serializer=response_serializer,
            )

        def proto_plus(method, request_cls, response_cls):
            return unary(method, request_cls.deserialize, response_cls.serialize)

        operation_out = operations_pb2.Operation.SerializeToString
        return grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                'UploadModel': unary(
                    self.upload_model, types.UploadModelRequest.deserialize, operation_out
                ),
                'GetModel': proto_plus(self.get_model, types.GetModelRequest, types.Model),
                'ListModels': proto_plus(
                    self.list_models, types.ListModelsRequest, types.ListModelsResponse
                ),
                'ListModelVersions': proto_plus(
                    self.list_model_versions,
                    types.ListModelVersionsRequest,
                    types.ListModelVersionsResponse,
                ),
                'MergeVersionAliases': proto_plus(
                    self.merge_version_aliases, types.MergeVersionAliasesRequest, types.Model
                ),
            },
        ), grpc.method_handlers_generic_handler(
            _OPERATIONS,
            {
                'GetOperation': unary(
                    self.get_operation,
                    operations_pb2.GetOperationRequest.FromString,
                    operation_out,
                )
            },
        )


def _drop(version: types.Model, alias: str) -> None:
    kept = [a for a in version.version_aliases if a != alias]
    del version.version_aliases[:]
    version.version_aliases.extend(kept)


def _matches(model: types.Model, wanted: dict[str, str]) -> bool:
    for key, value in wanted.items():
        if key == 'display_name' and model.display_name != value:
            return False
        if key.startswith('labels.') and model.labels.get(key[len('labels.') :]) != value:
            return False
    return True


@contextlib.contextmanager
def vertex_model_service() -> Iterator[VertexModelService]:
    """Runs the service on a loopback port; yields it (`.endpoint` is `127.0.0.1:PORT`)."""
    service = VertexModelService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(service.handler())
    port = server.add_insecure_port('127.0.0.1:0')
    server.start()
    service.endpoint = f'127.0.0.1:{port}'
    try:
        yield service
    finally:
        for hold in service._holds.values():
            hold.release.set()
        server.stop(grace=None)
