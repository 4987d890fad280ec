"""The JSON response engine builds directly (engine.default_plugins.responses.json_response) is the one Starlette's
constructor would build: a Starlette upgrade that changes the constructor fails here, not in a client."""
from __future__ import annotations

from starlette.responses import Response

from engine.default_plugins.responses import json_response


def test_json_response_is_what_starlettes_constructor_builds():
    body = b'{"y":1.5}'
    built, starlettes = json_response(body), Response(body, media_type="application/json")
    assert type(built) is Response
    assert vars(built) == vars(starlettes)
    assert sorted(vars(starlettes)) == ["background", "body", "media_type", "raw_headers", "status_code"]
