"""Cortex's payload parsing: JSON, form data, plain text, and raw bytes for everything else."""
from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from engine import hookimpl, jsoncodec
from engine.errors import PayloadError


@hookimpl(trylast=True)
def engine_payload_media_types():
    """Cortex's: JSON, form data, plain text, and anything else as bytes."""
    return ["application/json", "multipart/form-data", "application/x-www-form-urlencoded", "text/plain",
            "application/octet-stream"]


@hookimpl(trylast=True)
def engine_parse_payload(body, content_type, headers, api):
    """Parse by Content-Type prefix, case-insensitively; unknown or missing types give the raw bytes."""
    media_type = content_type.lower()
    if media_type.startswith("application/json"):
        return parse_json(body)
    if media_type.startswith("multipart/form") or media_type.startswith("application/x-www-form-urlencoded"):
        return parse_form(body, headers)
    if media_type.startswith("text/plain"):
        return parse_text(body, media_type)
    return body


def parse_json(body: bytes):
    """Parse a JSON body; any JSON value is a valid payload."""
    try:
        return jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(f"invalid JSON body: {error}") from None
    except RecursionError:
        raise PayloadError("invalid JSON body: it is nested too deeply to be parsed") from None


def parse_text(body: bytes, media_type: str) -> str:
    """Decode a text/plain body with its charset (utf-8 by default)."""
    charset = "utf-8"
    for param in media_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key == "charset" and value:
            charset = value.strip('"')
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError) as error:
        raise PayloadError(f"cannot decode text/plain body as {charset}: {error}") from None


async def parse_form(body: bytes, headers: Headers) -> FormData:
    """Parse multipart or urlencoded form data into Starlette's FormData, exactly as Request.form() does."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    multipart = headers.get("content-type", "").lower().startswith("multipart/")
    parser = MultiPartParser(headers, stream()) if multipart else FormParser(headers, stream())
    try:
        return await parser.parse()
    except (MultiPartException, ValueError) as error:
        raise PayloadError(f"invalid form data: {error}") from None
