"""The job API at a BatchAPI's endpoint, as Cortex's operator answered it: POST submits (?dryRun=true lists what
would run), GET ?jobID= is a job's status, DELETE ?jobID= stops it. `<endpoint>/<job_id>` is accepted for the job
too (Cortex's docs and v0.19–v0.20); engine adds GET without a job (every job of the API) and GET
`<endpoint>/<job_id>/failed_batches` (the local dead-letter queue). Errors are Cortex's: 400 {"kind", "message"}."""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from engine.jobs.service import JobService
from engine.jobs.sources import check_paths, list_files
from engine.jobs.submission import (
    MAX_SUBMISSION_BYTES,
    NOT_CORTEX,
    JobError,
    parse_bool,
    parse_submission,
)

REQUIRED_JOB_ID = JobError("endpoints.query_param_required", "query param required: jobID")


class JobRoutes:
    """The routes of one BatchAPI's job API."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.endpoint = service.api.endpoint

    def routes(self) -> list[BaseRoute]:
        """The endpoint, `<endpoint>/<job_id>`, and `<endpoint>/<job_id>/failed_batches`."""
        base = self.endpoint.rstrip("/")
        return [Route(self.endpoint, self.handle, methods=["GET", "POST", "DELETE"]),
                Route(base + "/{job_id}", self.handle, methods=["GET", "DELETE"]),
                Route(base + "/{job_id}/failed_batches", self.failed_batches, methods=["GET"])]

    async def handle(self, request: Request) -> Response:
        """Submit, status, list or stop, by method."""
        try:
            if request.method == "POST":
                return await self._submit(request)
            job_id = request.path_params.get("job_id") or request.query_params.get("jobID")
            if request.method == "DELETE":
                if not job_id:
                    raise REQUIRED_JOB_ID
                return JSONResponse(await asyncio.to_thread(self.service.stop, job_id))
            if not job_id:
                return JSONResponse({"job_statuses": await asyncio.to_thread(self.service.jobs)})
            return JSONResponse(await asyncio.to_thread(self.service.status, job_id, self._url(request)))
        except JobError as error:
            return cortex_error(error)

    async def failed_batches(self, request: Request) -> Response:
        """The batches of a job kept as failed, with their items and last error."""
        try:
            return JSONResponse(await asyncio.to_thread(self.service.failed_batches, request.path_params["job_id"]))
        except JobError as error:
            return cortex_error(error)

    async def _submit(self, request: Request) -> Response:
        body = await _read_limited(request)
        if body is None:
            return cortex_error(JobError("error", "http: request body too large"))
        dry_run = parse_bool(request.query_params.get("dryRun"))
        try:
            submission = parse_submission(body)
        except JobError as error:
            if dry_run and error.kind != NOT_CORTEX:  # a failed check (not the decoding): Cortex's dry run said it
                return PlainTextResponse(f"\n{error.message}\n", status_code=400)
            raise
        root = self.service.place.project_root if self.service.place else None
        assert root is not None, "the job API is routed once the service has started"
        if dry_run:
            try:
                files = await asyncio.to_thread(_listing, submission.source, root)
            except JobError as error:
                return PlainTextResponse(f"\n{error.message}\n", status_code=400)
            return PlainTextResponse("".join(f"{file}\n" for file in files) + "validations passed")
        await asyncio.to_thread(check_paths, submission.source, root)
        return JSONResponse(await asyncio.to_thread(self.service.submit, submission))

    def _url(self, request: Request) -> str:
        """The API's URL as the client reached it."""
        return f"{request.url.scheme}://{request.url.netloc}{self.endpoint}"


def _listing(source: Any, root: Any) -> list[str]:
    check_paths(source, root)
    return [] if source.kind == "item_list" else list_files(source, root)


def cortex_error(error: JobError) -> Response:
    """Cortex's error answer: 400 {"kind", "message"}."""
    return JSONResponse({"kind": error.kind, "message": error.message}, status_code=400)


async def _read_limited(request: Request) -> bytes | None:
    """The request body, or None once it passes Cortex's 10 MiB submission limit."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_SUBMISSION_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
