"""application/msgpack payloads in, and msgpack responses out when the client sends `Accept: application/msgpack`."""
import msgpack
from starlette.responses import Response

from engine import PayloadError, PayloadParser, hookimpl

MEDIA_TYPE = "application/msgpack"


def unpack(body, content_type, headers, api):
    """A msgpack body as Python objects."""
    try:
        return msgpack.unpackb(body)
    except (ValueError, msgpack.UnpackException) as error:
        raise PayloadError(f"invalid msgpack body: {error}") from None


@hookimpl
def engine_payload_parsers():
    """msgpack bodies (listed among each API's request body types in /openapi.json and on the /docs page)."""
    return [PayloadParser((MEDIA_TYPE,), unpack)]


@hookimpl
def engine_encode_response(result, request_headers, api):
    """Pack JSON-like results as msgpack for clients that accept it."""
    if MEDIA_TYPE not in request_headers.get("accept", "") or isinstance(result, (bytes, str, Response)):
        return None
    return Response(msgpack.packb(result), media_type=MEDIA_TYPE)
