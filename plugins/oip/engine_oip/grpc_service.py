"""The Open Inference Protocol over gRPC: inference.GRPCInferenceService on --grpc-port, an engine service started
and stopped with the HTTP server, on its event loop (grpc.aio). Every model call goes through the same operations
as REST (engine.Served.operate: the API's readiness, concurrency limit, deadline, metrics and access log), and
every call needs the API key when the server requires one (the `authorization: Bearer KEY` or `x-api-key`
metadata).

The model repository extension's RPCs (Triton's RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload) run
the same operations as their REST routes.

ModelInfer's messages are passed as bytes: the front process reads only the model's name and version, and the
operation parses the request and writes the response where the model runs.
"""
from __future__ import annotations

import logging
from typing import Any

import grpc
import orjson
from google.protobuf.message import DecodeError
from grpc import aio

from engine import EngineError
from engine_oip.models import locate, unknown_model
from engine_oip.protocol import open_inference_pb2 as pb
from engine_oip.repository import refused_parameters
from engine_oip.rest import MODEL_HEADER, VERSION_HEADER, repository_call, repository_index, server_metadata

log = logging.getLogger("engine.oip")

SERVICE = "inference.GRPCInferenceService"
# An HTTP status of an engine answer → the gRPC status code the protocol's clients expect.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED, 500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class GrpcService:
    """An engine service (engine_services): the gRPC server of the protocol."""

    def __init__(self, served: Any, settings: Any) -> None:
        self.served = served
        self.settings = settings
        self.server: aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        limit = self.settings.max_body_size or -1
        self.server = aio.server(options=[("grpc.max_receive_message_length", limit),
                                          ("grpc.max_send_message_length", -1),
                                          ("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers([self._handlers()])
        host = self.settings.host
        address = f"[{host}]:{self.settings.grpc_port}" if ":" in host else f"{host}:{self.settings.grpc_port}"
        try:
            credentials = self._credentials()
            self.port = self.server.add_secure_port(address, credentials) if credentials else \
                self.server.add_insecure_port(address)
        except RuntimeError as error:
            self.port = 0
            reason = str(error).split(";")[0]  # grpc's advice on GRPC_VERBOSITY is not ours to give
        else:
            reason = "the address is taken or not of this machine"
        if not self.port:
            raise EngineError(f"--grpc-port: cannot listen on {address} ({reason}); stop what listens there or "
                              "choose another --grpc-port")
        await self.server.start()
        log.info("Open Inference Protocol over gRPC on %s (inference.GRPCInferenceService)", address)

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)

    def _credentials(self) -> grpc.ServerCredentials | None:
        settings = self.settings
        if not settings.certfile:
            return None
        with open(settings.certfile, "rb") as cert, open(settings.keyfile, "rb") as key:
            pair = (key.read(), cert.read())
        roots = None
        if settings.ca_certs:
            with open(settings.ca_certs, "rb") as cas:
                roots = cas.read()
        return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(method, request_type, response_type=None):
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=request_type.FromString if request_type else None,
                response_serializer=response_type.SerializeToString if response_type else None)
        return grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": unary(self.model_infer, None, None),  # bytes in and out: see the module's docstring
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
            "RepositoryModelLoad": unary(self.repository_model_load, pb.RepositoryModelLoadRequest,
                                         pb.RepositoryModelLoadResponse),
            "RepositoryModelUnload": unary(self.repository_model_unload, pb.RepositoryModelUnloadRequest,
                                           pb.RepositoryModelUnloadResponse),
        })

    # --- the RPCs ------------------------------------------------------------------------------------------------

    async def server_live(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._authorize(context)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._authorize(context)
        return pb.ServerReadyResponse(ready=self.served.is_ready())

    async def server_metadata(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._authorize(context)
        return pb.ServerMetadataResponse(**server_metadata())

    async def model_ready(self, request: Any, context: aio.ServicerContext) -> Any:
        headers = await self._authorize(context)
        api = await self._api(request.name, context)
        if not self.served.is_ready(api):
            return pb.ModelReadyResponse(ready=False)
        body = await self._operate(api, "oip.ready", b"", headers, request.name, request.version, context, (200, 400))
        return pb.ModelReadyResponse(ready=orjson.loads(body).get("ready") is True)  # 400: {"ready": false}

    async def model_metadata(self, request: Any, context: aio.ServicerContext) -> Any:
        headers = await self._authorize(context)
        api = await self._api(request.name, context)
        body = await self._operate(api, "oip.metadata", b"", headers, request.name, request.version, context)
        described = orjson.loads(body)
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=described["name"], versions=described["versions"],
                                        platform=described["platform"], **tensors)

    async def model_infer(self, request: bytes, context: aio.ServicerContext) -> bytes:
        headers = await self._authorize(context)
        try:
            route = pb.ModelInferRequest.FromString(request)
        except DecodeError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a ModelInferRequest: {error}")
        api = await self._api(route.model_name, context)
        return await self._operate(api, "oip.infer_grpc", request, headers, route.model_name, route.model_version,
                                   context)

    async def repository_index(self, request: Any, context: aio.ServicerContext) -> Any:
        headers = await self._authorize(context)
        rows = await repository_index(self.served, headers, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def repository_model_load(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._repository_call("oip.load", request, context)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._repository_call("oip.unload", request, context)
        return pb.RepositoryModelUnloadResponse()

    # --- helpers ---------------------------------------------------------------------------------------------------

    async def _repository_call(self, operation: str, request: Any, context: aio.ServicerContext) -> None:
        headers = await self._authorize(context)
        refused = refused_parameters(request.parameters)
        if refused:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
        await self._check(await repository_call(self.served, operation, request.model_name, headers), context)

    async def _authorize(self, context: aio.ServicerContext) -> list[tuple[bytes, bytes]]:
        headers = [(key.lower().encode(), value if isinstance(value, bytes) else value.encode())
                   for key, value in context.invocation_metadata() or ()
                   if not key.startswith(":") and not key.lower().startswith("oip-")]
        if not self.served.authorized(headers):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid API key is required (metadata "
                                "`authorization: Bearer KEY` or `x-api-key: KEY`)")
        return headers

    async def _api(self, name: str, context: aio.ServicerContext) -> str:
        api_names = [api.name for api in self.served.apis]
        api = locate(api_names, name)
        if api is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, unknown_model(name, api_names))
        return api  # type: ignore[return-value]  # abort raises: NoReturn in grpc, which ships no py.typed

    async def _operate(self, api: str, operation: str, body: bytes, headers: list[tuple[bytes, bytes]], name: str,
                       version: str, context: aio.ServicerContext, answers: tuple[int, ...] = (200,)) -> bytes:
        """The operation's answer (of a status among `answers`); any other aborts the call with the error."""
        headers = [*headers, (MODEL_HEADER, name.encode())]
        if version:
            headers.append((VERSION_HEADER, version.encode()))
        return await self._check(await self.served.operate(api, operation, body, headers), context, answers)

    async def _check(self, response: Any, context: aio.ServicerContext, answers: tuple[int, ...] = (200,)) -> bytes:
        traceparent = response.headers.get("traceparent")
        if traceparent:  # a traced call: its server span, as REST's response header names it
            await context.send_initial_metadata((("traceparent", traceparent),))
        if response.status_code not in answers:
            try:
                message = str(orjson.loads(response.body)["error"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = f"HTTP status {response.status_code}"
            await context.abort(STATUS_CODES.get(response.status_code, grpc.StatusCode.UNKNOWN), message)
        return bytes(response.body)
