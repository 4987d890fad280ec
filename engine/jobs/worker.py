"""One worker of a job: the API's predictor built once with the job's spec, then predict for batch after batch.

The same code runs in a local worker process (engine.jobs.worker_main) and in a Ray actor (engine-ray)."""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
from typing import Any

from engine import plugins, tracebacks
from engine.errors import EngineError
from engine.jobs import messages
from engine.project.files import enter_view
from engine.serving.predictor import Predictor, attach_models, construct, open_models

log = logging.getLogger("engine")


class JobWorker:
    """Builds the predictor (start) and answers RunBatch and Complete."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.job_spec: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # for an async predict or on_job_complete

    def start(self, start: messages.Start) -> messages.Ready | messages.StartFailed:
        """Enter the project, set up the device, load the models and run __init__ (on this thread, as Cortex)."""
        try:
            os.environ.update(start.environment)
            enter_view(start.view, [start.api.predictor.python_path or ""])
            tracebacks.register_view(start.view, start.project_root)
            # Imports come from the view, but the job's relative input paths name files of the project directory
            # itself, which may have been added since the view was made.
            os.chdir(start.project_root)
            pm = plugins.from_portable(start.plugins)
            # compute is per worker and a job's worker is its API's only process: each gets the API's first devices
            device = plugins.setup_device(pm, start.api, process_index=0)
            models = open_models(start.api, pm, device, start.project_root, poll_interval=0)
            self.job_spec = start.job_spec
            client, predictor = construct(start.api, pm, start.view, device, models, None, self.job_spec,
                                          start.config)
            if models is not None:
                load_model = getattr(predictor.instance, "load_model", None)
                if predictor.async_load_model:
                    load_model = self._run_async(load_model)
                attach_models(start.api, pm, client, models, load_model)
            self.predictor = predictor
            return messages.Ready()
        except Exception as error:
            return messages.StartFailed(str(error) if isinstance(error, EngineError)
                                        else tracebacks.format_exception(error))

    def run(self, batch: messages.RunBatch) -> messages.BatchDone:
        """Call predict with the batch's payload (its return value is not used, as in Cortex)."""
        assert self.predictor is not None, "start() comes first"
        started = time.perf_counter()
        try:
            # json, as Cortex's worker: orjson turns integers over 64 bits into floats and refuses lone surrogates
            payload = json.loads(batch.body)
            result = self.predictor.predict({"payload": payload, "batch_id": batch.batch_id})
            if inspect.isawaitable(result):
                self._await(result)
            return messages.BatchDone(batch.batch_id, time.perf_counter() - started)
        except Exception as error:
            log.error("failed processing batch %s\n%s", batch.batch_id, tracebacks.format_exception(error))
            return messages.BatchDone(batch.batch_id, time.perf_counter() - started,
                                      f"{type(error).__name__}: {error}\n{tracebacks.format_exception(error)}")

    def complete(self, complete: messages.Complete) -> messages.Completed:
        """Call on_job_complete, if the class defines it, with the job's outcome (also put in job_spec)."""
        assert self.predictor is not None, "start() comes first"
        hook = getattr(self.predictor.instance, "on_job_complete", None)
        if hook is None:
            return messages.Completed()
        self.job_spec["batch_metrics"] = complete.batch_metrics
        log.info("executing on_job_complete")
        try:
            wants = "batch_metrics" in inspect.signature(hook).parameters
            result = hook(batch_metrics=complete.batch_metrics) if wants else hook()
            if inspect.isawaitable(result):
                self._await(result)
            return messages.Completed()
        except Exception as error:
            log.error("failed to handle on_job_complete\n%s", tracebacks.format_exception(error))
            return messages.Completed(f"{type(error).__name__}: {error}\n{tracebacks.format_exception(error)}")

    def _await(self, awaitable: Any) -> Any:
        """Run an async method of the predictor to its end on this worker's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def _run_async(self, method: Any) -> Any:
        return lambda *arguments: self._await(method(*arguments))
