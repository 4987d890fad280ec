"""`engine jobs`: the job API of a running `engine serve`, from the terminal (over HTTP, with the standard library).

    engine jobs submit API (--items FILE [--batch-size N] | --submission FILE.json) [--workers N] [--config JSON]
                           [--timeout SECONDS] [--max-receive-count N] [--dry-run]
    engine jobs status API JOB_ID
    engine jobs stop API JOB_ID
    engine jobs list API

Every command takes --url URL (default $ENGINE_URL or http://127.0.0.1:8888) and --api-key KEY (default
$ENGINE_API_KEY, its first key when it lists several; sent as `Authorization: Bearer KEY`). API is the BatchAPI's
endpoint path (/jobs/images) or its name (images, whose endpoint is /images). `submit --items` reads FILE here (JSON
values, one item each) and sends them as an `item_list` (the server's 10 MiB request limit applies: `engine run`
streams a file of any size); `--submission` sends a Cortex job submission file, the flags given replacing its keys.
submit prints the JobSpec (or the dry run's list of files), status the job's status, stop the server's message, list
one line per job (id, status, batches succeeded/failed/total). A refusal (400 {"kind", "message"}) is printed as
`error: <message> (<kind>)` and the exit status is 1.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from engine.errors import EngineError
from engine.jobs.submission import NotJsonError, reject_constant

DEFAULT_URL = "http://127.0.0.1:8888"
URL_ENV, API_KEY_ENV = "ENGINE_URL", "ENGINE_API_KEY"
TIMEOUT = 300.0  # seconds an answer may take (a dry run lists S3 prefixes; a submission is up to 10 MiB)
_DECODER = json.JSONDecoder(parse_constant=reject_constant)
NOT_JOB_API = "that is not the job API of a BatchAPI of this server (name the API by its name or its endpoint path)"


class ClientError(EngineError):
    """The server refused the request, or could not be reached: said in one paragraph, exit status 1."""


@dataclass(frozen=True)
class Answer:
    """A 2xx answer of the server."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class JobClient:
    """The job API of one BatchAPI of a running server."""

    def __init__(self, url: str | None, api_key: str | None, api: str) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self.api_key = key.split(",")[0].strip()  # the server's own variable may list several keys
        self.endpoint = endpoint(api)

    def request(self, method: str, query: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
        """Send one request to the API's endpoint; its answer, or ClientError saying why there is none."""
        target = self.url + urllib.parse.quote(self.endpoint)
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(target, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return Answer(response.status, response.headers.get("Content-Type", ""), response.read())
        except urllib.error.HTTPError as error:
            raise ClientError(_refusal(error.code, error.read(), method, target)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ConnectionRefusedError):
                raise ClientError(f"cannot reach {self.url}: connection refused (is `engine serve` running there? "
                                  f"--url or ${URL_ENV} names another server)") from None
            raise ClientError(f"cannot reach {self.url}: {reason}") from None


def endpoint(api: str) -> str:
    """The endpoint path an API argument names: a path as given, a name `x` as /x."""
    if not api.strip("/"):
        raise ClientError(f"API {api!r}: give the BatchAPI's name or its endpoint path (e.g. image-classifier or "
                          "/jobs/images)")
    return api if api.startswith("/") else "/" + api


def _refusal(code: int, body: bytes, method: str, target: str) -> str:
    """A non-2xx answer in one paragraph: Cortex's `<message> (<kind>)`, engine's error, or the status and text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str) and isinstance(data.get("kind"), str):
        return f"{data['message']} ({data['kind']})"
    text = data["error"] if isinstance(data, dict) and isinstance(data.get("error"), str) else \
        body.decode("utf-8", "replace").strip()
    if code in (404, 405):
        return f"{method} {target}: HTTP {code}: {NOT_JOB_API}"
    if code == 400 and data is None and text:  # a dry run's refusal is Cortex's text
        return text
    return f"{text} (HTTP {code} from {method} {target})" if text else f"HTTP {code} from {method} {target}"


def _expect(answer: Answer, key: str, client: JobClient, method: str) -> Any:
    """The answer's JSON, which must be an object holding `key`; ClientError when another kind of API answered."""
    try:
        data = answer.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or key not in data:
        shown = answer.body[:100].decode("utf-8", "replace")
        raise ClientError(f"{method} {client.url}{client.endpoint} answered {shown!r}: {NOT_JOB_API}")
    return data


# --- the commands ------------------------------------------------------------------------------------------------


def submit(client: JobClient, items: str | None, submission: str | None, batch_size: int | None,
           workers: int | None, config: dict[str, Any] | None, timeout: int | None, max_receive_count: int | None,
           dry_run: bool, out: TextIO | None = None) -> int:
    """POST a job: print the JobSpec (or, with dry_run, the files the job would read)."""
    out = out or sys.stdout
    keys: dict[str, Any] = {}
    if workers is not None:
        keys["workers"] = workers
    if config is not None:
        keys["config"] = config
    if timeout is not None:
        keys["timeout"] = timeout
    if max_receive_count is not None:
        keys["sqs_dead_letter_queue"] = {"arn": "local", "max_receive_count": max_receive_count}
    if items is not None:
        body = item_list_body(items, batch_size or 1, {"workers": 1, **keys})
    else:
        assert submission is not None, "argparse requires --items or --submission"
        if batch_size is not None:
            raise ClientError("--batch-size goes with --items (a --submission file gives its own batch_size)")
        body = _submission_body(submission, keys)
    answer = client.request("POST", {"dryRun": "true"} if dry_run else None, body)
    if dry_run:
        print(answer.body.decode("utf-8", "replace").rstrip("\n"), file=out)
    else:
        print(json.dumps(_expect(answer, "job_id", client, "POST"), indent=2), file=out)
    return 0


def status(client: JobClient, job_id: str, out: TextIO | None = None) -> int:
    """GET ?jobID=: print the job's status (JSON)."""
    answer = _expect(client.request("GET", {"jobID": job_id}), "job_status", client, "GET")
    print(json.dumps(answer, indent=2), file=out or sys.stdout)
    return 0


def stop(client: JobClient, job_id: str, out: TextIO | None = None) -> int:
    """DELETE ?jobID=: stop the job; print the server's message."""
    print(_expect(client.request("DELETE", {"jobID": job_id}), "message", client, "DELETE")["message"],
          file=out or sys.stdout)
    return 0


def list_jobs(client: JobClient, out: TextIO | None = None) -> int:
    """GET without a job: one line per job of the API, newest first."""
    out = out or sys.stdout
    for job in _expect(client.request("GET"), "job_statuses", client, "GET")["job_statuses"]:
        print(job_line(job), file=out)
    return 0


def job_line(job: dict[str, Any]) -> str:
    """`<job_id>  <status>  <succeeded>/<failed>/<total> batches succeeded/failed/total` (failed counts attempts, as
    Cortex's batch_metrics does)."""
    metrics = job.get("batch_metrics") or {}
    counts = f"{metrics.get('succeeded', 0)}/{metrics.get('failed', 0)}/{job.get('total_batch_count', 0)}"
    return f"{job.get('job_id')}  {job.get('status')}  {counts} batches succeeded/failed/total"


# --- bodies ------------------------------------------------------------------------------------------------------


def item_list_body(items_file: str, batch_size: int, keys: dict[str, Any]) -> bytes:
    """A submission with the file's JSON values as its item_list (each value as written in the file)."""
    raw = read_items(items_file)
    head = json.dumps({**keys, "item_list": {"batch_size": batch_size, "items": []}})
    marker = '"items": []'
    before, _, after = head.rpartition(marker)
    return (before + '"items": [' + ",".join(raw) + "]" + after).encode()


def read_items(items_file: str) -> list[str]:
    """The JSON values of a file (any whitespace between them), each as its text; ClientError for a bad file."""
    try:
        text = Path(items_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ClientError(f"--items {items_file}: cannot read it ({getattr(error, 'strerror', None) or error})") \
            from None
    values: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            return values
        try:
            end = _DECODER.raw_decode(text, pos)[1]
        except json.JSONDecodeError as error:
            raise ClientError(f"--items {items_file}: item {len(values)}: {error}") from None
        except NotJsonError as error:
            raise ClientError(f"--items {items_file}: item {len(values)}: {error}") from None
        values.append(text[pos:end])
        pos = end


def _submission_body(submission_file: str, keys: dict[str, Any]) -> bytes:
    """The submission file's bytes, as they are unless flags replace some of its keys."""
    try:
        body = Path(submission_file).read_bytes()
    except OSError as error:
        raise ClientError(f"--submission {submission_file}: cannot read it ({error.strerror or error})") from None
    if not keys:
        return body  # the server checks it, and says what is wrong in Cortex's words
    try:
        data = json.loads(body)
    except ValueError as error:
        raise ClientError(f"--submission {submission_file}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ClientError(f"--submission {submission_file}: a job submission is a JSON object")
    return json.dumps({**data, **keys}).encode()


def json_object(text: str, flag: str) -> dict[str, Any]:
    """A flag's JSON object (--config); ClientError otherwise."""
    try:
        value = json.loads(text)
    except ValueError as error:
        hint = " (the configuration file is named with -f)" if text.endswith((".yaml", ".yml")) else ""
        raise ClientError(f"{flag} {text}: not JSON ({error}); give the job's config as a JSON object, e.g. "
                          f"{flag} '{{\"key\": 1}}'{hint}") from None
    if not isinstance(value, dict):
        raise ClientError(f"{flag}: give a JSON object (got {type(value).__name__}), e.g. {flag} '{{\"key\": 1}}'")
    return value
