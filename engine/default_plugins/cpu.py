"""The `cpu` hardware target: the default owner of every API without gpu or inf."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine import Device, hookimpl, share_cores

if TYPE_CHECKING:
    from engine import Api


@hookimpl
def engine_hardware_targets() -> list[str]:
    """The CPU is always there."""
    return ["cpu"]


@hookimpl(trylast=True)
def engine_setup_device(api: Api, process_index: int) -> Device | None:
    """Share the cores between the API's worker processes instead of letting each take them all."""
    if api.compute.gpu or api.compute.inf:
        return None
    threads, env = share_cores(api.predictor.processes_per_replica)
    return Device(kind="cpu", process_index=process_index, env=env, threads=threads)
