"""Request bodies into predict's `payload`: the payload parsers plugins contribute (engine.PayloadParser), chosen
by the request's media type, once per request."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from engine import plugins
from engine.plugin_api import PayloadParser

if TYPE_CHECKING:
    from starlette.datastructures import Headers

    from engine.project.config import Api

    Parse = Callable[[bytes, str, Headers, Api], object]  # a PayloadParser's parse

REMEMBERED = 256  # distinct Content-Type values whose parser is remembered


class ParsePayload(Protocol):
    """The per-request parser of request bodies (payload_parser)."""

    def __call__(self, body: bytes, content_type: str, headers: Headers, api: Api) -> object:
        """The payload, or an awaitable of it."""


def payload_parsers(pm: plugins.PluginManager) -> list[PayloadParser]:
    """Every payload parser, in the order engine asks them (installed plugins first, the built-in ones last)."""
    return [parser for _, parser in plugins.contributed(pm, "engine_payload_parsers", PayloadParser)]


def media_types(pm: plugins.PluginManager) -> list[str]:
    """Every request media type a parser takes (the deprecated engine_payload_media_types' too), for the docs."""
    found = {media for parser in payload_parsers(pm) for media in parser.media_types}
    return sorted(found | {media for answer in pm.hook.engine_payload_media_types() for media in answer or ()})


def payload_parser(pm: plugins.PluginManager) -> ParsePayload:
    """The per-request parser of request bodies: (body, content_type, headers, api) → the payload, or an awaitable
    of it. The parser of the Content-Type's media type, else the first whose media type it starts with, else the
    body as bytes; a plugin implementing the deprecated engine_parse_payload is asked first."""
    by_media: dict[str, Parse] = {}
    for parser in payload_parsers(pm):
        for media in parser.media_types:
            by_media.setdefault(media.lower(), parser.parse)
    by_prefix = tuple(by_media.items())
    chosen: dict[str, Parse | None] = {}  # Content-Type as sent → its parse (None: the body as bytes)

    def choose(content_type: str) -> Parse | None:
        media = content_type.partition(";")[0].strip().lower()
        parse = by_media.get(media) or next((candidate for prefix, candidate in by_prefix if media.startswith(prefix)),
                                            None)
        if len(chosen) >= REMEMBERED:  # multipart boundaries make every Content-Type new: keep the map bounded
            chosen.clear()
        chosen[content_type] = parse
        return parse

    def parse_payload(body: bytes, content_type: str, headers: Headers, api: Api) -> object:
        parse = chosen.get(content_type, ...)  # ...: a Content-Type not seen yet
        if parse is ...:
            parse = choose(content_type)
        return body if parse is None else parse(body, content_type, headers, api)

    deprecated = pm.hook.engine_parse_payload
    if not deprecated.get_hookimpls():
        return parse_payload

    def parse_payload_or_ask_deprecated_hook(body: bytes, content_type: str, headers: Headers, api: Api) -> object:
        payload = deprecated(body=body, content_type=content_type, headers=headers, api=api)
        return parse_payload(body, content_type, headers, api) if payload is None else payload

    return parse_payload_or_ask_deprecated_hook
