"""application/msgpack payloads in, and msgpack responses out when the client sends `Accept: application/msgpack`."""
import msgpack
from starlette.responses import Response

from engine import PayloadError, hookimpl

MEDIA_TYPE = "application/msgpack"


@hookimpl
def engine_payload_media_types():
    """Tell engine's OpenAPI document (and the /docs page) that msgpack bodies are welcome."""
    return [MEDIA_TYPE]


@hookimpl
def engine_parse_payload(body, content_type, headers, api):
    """Unpack msgpack bodies; decline (None) for every other media type."""
    if not content_type.lower().startswith(MEDIA_TYPE):
        return None
    try:
        return msgpack.unpackb(body)
    except (ValueError, msgpack.UnpackException) as error:
        raise PayloadError(f"invalid msgpack body: {error}") from None


@hookimpl
def engine_encode_response(result, request_headers, api):
    """Pack JSON-like results as msgpack for clients that accept it."""
    if MEDIA_TYPE not in request_headers.get("accept", "") or isinstance(result, (bytes, str, Response)):
        return None
    return Response(msgpack.packb(result), media_type=MEDIA_TYPE)
