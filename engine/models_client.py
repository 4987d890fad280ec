"""`engine models`: the models of a running `engine serve`, listed, loaded and unloaded from the terminal through the
Open Inference Protocol's model repository extension (engine-oip's /v2/repository routes), over HTTP with the
standard library.

    engine models list [--url URL] [--api-key KEY]
    engine models load NAME [--url URL] [--api-key KEY]
    engine models unload NAME [--url URL] [--api-key KEY]

NAME is the model's name in the protocol: `<api>` for an API with one model, `<api>.<model>` for a named model.
list prints one line per model version, `<name>  <version>  <state>` and the reason of one UNAVAILABLE in
parentheses (a python API's own line has `-` for its version); load and unload print `<name>: loaded` or
`<name>: unloaded`. --url and --api-key work as for `engine jobs` ($ENGINE_URL, $ENGINE_API_KEY). A refusal is printed
as `error: <message> (HTTP <status> from POST <url>)` and the exit status is 1; a server without engine-oip says so.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from engine.install_hints import install_requirement
from engine.jobs.client import API_KEY_ENV, DEFAULT_URL, URL_ENV, ClientError

TIMEOUT = 600.0  # seconds a load may take (the server's --request-timeout ends it sooner)
INDEX = "/v2/repository/index"


def no_repository() -> str:
    """Why a server has no /v2/repository routes, and what to install (from engine's packaging: its `oip` extra)."""
    requirement = install_requirement("oip") or "the plugin that serves the Open Inference Protocol"
    return (f"it has no model repository API: the Open Inference Protocol plugin is not installed where `engine "
            f"serve` runs (pip install {requirement}, then restart it)")


class ModelsClient:
    """The model repository API of a running server."""

    def __init__(self, url: str | None, api_key: str | None) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self.api_key = key.split(",")[0].strip()  # the server's own variable may list several keys

    def post(self, path: str) -> Any:
        """POST to a repository route; its JSON answer, or ClientError saying why there is none."""
        target = self.url + path
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(target, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise ClientError(_refusal(error.code, error.read(), target)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ConnectionRefusedError):
                raise ClientError(f"cannot reach {self.url}: connection refused (is `engine serve` running there? "
                                  f"--url or ${URL_ENV} names another server)") from None
            raise ClientError(f"cannot reach {self.url}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ClientError(f"POST {target} answered {body[:100]!r}, not JSON: {no_repository()}") from None


def _refusal(code: int, body: bytes, target: str) -> str:
    """A non-2xx answer in one line: the protocol's {"error"}, or, for a route the server lacks, why."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    text = data["error"] if isinstance(data, dict) and isinstance(data.get("error"), str) else \
        body.decode("utf-8", "replace").strip()
    if code in (404, 405) and (target.endswith(INDEX) or text in ("", "Not Found", "Method Not Allowed")):
        return f"POST {target}: HTTP {code}: {no_repository()}"  # the server's own 404: no such route
    return f"{text} (HTTP {code} from POST {target})" if text else f"HTTP {code} from POST {target}"


# --- the commands ------------------------------------------------------------------------------------------------


def list_models(client: ModelsClient, out: TextIO | None = None) -> int:
    """One line per model version of every API, as the repository index lists them."""
    rows = client.post(INDEX)
    if not isinstance(rows, list):
        raise ClientError(f"POST {client.url}{INDEX} answered {rows!r}, not a list of models: {no_repository()}")
    for row in rows:
        print(model_line(row), file=out or sys.stdout)
    return 0


def model_line(row: dict[str, Any]) -> str:
    """`<name>  <version>  <state>`, and `  (<reason>)` when it gives one."""
    line = f"{row.get('name')}  {row.get('version') or '-'}  {row.get('state')}"
    return f"{line}  ({row['reason']})" if row.get("reason") else line


def load(client: ModelsClient, name: str, out: TextIO | None = None) -> int:
    """Load a model (in every process of its API): it is available again, its latest version in memory."""
    return _change(client, name, "load", out)


def unload(client: ModelsClient, name: str, out: TextIO | None = None) -> int:
    """Unload a model (in every process of its API): it answers 503 until loaded again, its memory freed."""
    return _change(client, name, "unload", out)


def _change(client: ModelsClient, name: str, action: str, out: TextIO | None) -> int:
    if not name.strip():
        raise ClientError("NAME: give the model's name, `<api>` or `<api>.<model>` (`engine models list` lists them)")
    client.post(f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/{action}")
    print(f"{name}: {action}ed", file=out or sys.stdout)
    return 0
