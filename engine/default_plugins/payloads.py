"""Cortex's payload parsing: JSON, form data, plain text; any other body (or one without a Content-Type) is given as
bytes, as engine gives every body that no parser claims."""
from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from engine import PayloadError, PayloadParser, hookimpl, json_loads

if TYPE_CHECKING:
    from engine import Api


def parse_json(body: bytes, content_type: str, headers: Headers, api: Api) -> Any:
    """Parse a JSON body; any JSON value is a valid payload."""
    try:
        return json_loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(f"invalid JSON body: {error}") from None
    except RecursionError:
        raise PayloadError("invalid JSON body: it is nested too deeply to be parsed") from None


def parse_text(body: bytes, content_type: str, headers: Headers, api: Api) -> str:
    """Decode a text/plain body with its charset (utf-8 by default)."""
    charset = "utf-8"
    for param in content_type.lower().split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key == "charset" and value:
            charset = value.strip('"')
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError) as error:
        raise PayloadError(f"cannot decode text/plain body as {charset}: {error}") from None


async def parse_form(body: bytes, content_type: str, headers: Headers, api: Api) -> FormData:
    """Parse multipart or urlencoded form data into Starlette's FormData, exactly as Request.form() does."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    multipart = content_type.lower().startswith("multipart/")
    parser = MultiPartParser(headers, stream()) if multipart else FormParser(headers, stream())
    try:
        return await parser.parse()
    except (MultiPartException, ValueError) as error:
        raise PayloadError(f"invalid form data: {error}") from None


def raw_bytes(body: bytes, content_type: str, headers: Headers, api: Api) -> bytes:
    """The body as it came."""
    return body


PARSERS = [
    PayloadParser(("application/json",), parse_json),
    PayloadParser(("multipart/form-data", "application/x-www-form-urlencoded"), parse_form),
    PayloadParser(("text/plain",), parse_text),
    PayloadParser(("application/octet-stream",), raw_bytes),
]


@hookimpl(trylast=True)
def engine_payload_parsers() -> list[PayloadParser]:
    """Cortex's parsers."""
    return PARSERS
