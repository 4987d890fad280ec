"""The `inf` target: check compute.inf, the Neuron runtime and framework, and give each worker its NeuronCores."""
from __future__ import annotations

import logging
import os
from typing import Any

from engine import ConfigError, Device, VisibleDevices, hookimpl, share_cores
from engine_hw_inferentia.discovery import (
    FRAMEWORKS,
    NEURON_LIB,
    TENSORFLOW_FRAMEWORKS,
    DiscoveryError,
    NeuronHost,
    core_range,
    installed_frameworks,
    parse_cores,
)

log = logging.getLogger("engine.inferentia")

VISIBLE_ENV = "NEURON_RT_VISIBLE_CORES"
GROUP_ENV = "NEURONCORE_GROUP_SIZES"  # Neuron 1.x (and Cortex's) name for a process's group of cores
LEGACY_DAEMON_ENV = "NEURON_RTD_ADDRESS"  # set when a Neuron 1.x neuron-rtd daemon owns the device instead of libnrt


def split_cores(cores: list[int], processes: int, index: int) -> list[int]:
    """Worker `index`'s contiguous share of the API's cores (4 cores, 2 workers: [0, 1] and [2, 3])."""
    size = len(cores) // processes
    return cores[index * size:(index + 1) * size]


def allowed_processes(cores: int) -> str:
    """`1, 2, 4` for 4 cores."""
    return ", ".join(str(n) for n in range(1, cores + 1) if cores % n == 0)


class InferentiaTarget:
    """Owns APIs with compute.inf > 0, over a NeuronHost (the real machine unless a test passes a fake tree)."""

    def __init__(self, host: NeuronHost | None = None) -> None:
        self.host = host
        self.visible = VisibleDevices(VISIBLE_ENV, "NeuronCores", "the Neuron runtime", "Inferentia", log)

    def machine(self) -> NeuronHost:
        """The host, read from $ENGINE_NEURON_ROOT when none was given."""
        return self.host or NeuronHost()

    def api_cores(self, api: Any) -> list[int]:
        """The NeuronCores an API gets: compute.inf devices' worth of the visible cores; ConfigError if too few."""
        wanted = api.compute.inf
        try:
            devices = self.machine().devices()
        except DiscoveryError as error:
            raise ConfigError(f"compute.inf: {wanted} requested, but no Neuron device was found ({error}). Serve on "
                              "an Inferentia instance with the Neuron driver (aws-neuronx-dkms) loaded, or set "
                              "compute.inf: 0") from None
        per_device = len(devices[0].cores)
        needed = wanted * per_device
        present = [core for device in devices for core in device.cores]
        setting = self.visible.user_setting(api)
        visible = present
        if setting is not None:
            named = parse_cores(setting)
            if named is None:
                raise ConfigError(f"{VISIBLE_ENV}={setting!r} is not a NeuronCore index or range (e.g. 0 or 0-3)")
            visible = [core for core in named if core in present]
        if len(visible) >= needed:
            return visible[:needed]
        message = (f"compute.inf: {wanted} requested ({needed} NeuronCores), {len(devices)} Neuron "
                   f"device{'s' if len(devices) != 1 else ''} found ({', '.join(d.describe() for d in devices)})")
        if setting is not None:
            message += f"; {VISIBLE_ENV}={setting!r} leaves {len(visible)} NeuronCores"
        raise ConfigError(message)

    def problems(self, api: Any) -> list[str]:
        """Everything that keeps the API from running on Inferentia here."""
        found = []
        try:
            cores = self.api_cores(api)
            processes = api.predictor.processes_per_replica
            if len(cores) % processes:
                found.append(f"predictor.processes_per_replica: cannot evenly distribute {len(cores)} NeuronCores "
                             f"(compute.inf: {api.compute.inf}) over {processes} processes; allowed: "
                             f"{allowed_processes(len(cores))} (given: {processes})")
        except ConfigError as error:
            found.append(str(error))
        if LEGACY_DAEMON_ENV not in os.environ and self.machine().runtime_library() is None:
            found.append(f"compute.inf: the Neuron runtime library libnrt.so was not found (looked in "
                         f"{self.machine().root / NEURON_LIB} and LD_LIBRARY_PATH): install aws-neuronx-runtime-lib "
                         "from the AWS Neuron repository")
        wanted = TENSORFLOW_FRAMEWORKS if api.predictor.type == "tensorflow" else tuple(FRAMEWORKS)
        if not installed_frameworks(wanted):
            packages = " or ".join(FRAMEWORKS[name] for name in wanted)
            found.append(f"compute.inf: no Neuron framework integration is installed for the {api.predictor.type} "
                         f"predictor (looked for {', '.join(wanted)}): pip install {packages} from the AWS Neuron "
                         "pip repository, in the environment engine runs in")
        return found

    @hookimpl
    def engine_hardware_targets(self) -> list[str]:
        """AWS Inferentia (and Trainium) NeuronCores."""
        return ["inf"]

    @hookimpl
    def engine_validate_api(self, api: Any, project_root: Any) -> list[str] | None:
        """compute.inf against the devices present, plus the Neuron runtime and framework integration."""
        if not api.compute.inf:
            return None
        return self.problems(api)

    @hookimpl
    def engine_setup_device(self, api: Any, process_index: int) -> Device | None:
        """Give this worker its contiguous NeuronCores through NEURON_RT_VISIBLE_CORES, before any framework import."""
        if not api.compute.inf:
            return None
        processes = api.predictor.processes_per_replica
        cores = self.api_cores(api)
        if len(cores) % processes:
            raise ConfigError(f"predictor.processes_per_replica: cannot evenly distribute {len(cores)} NeuronCores "
                              f"over {processes} processes; allowed: {allowed_processes(len(cores))}")
        mine = split_cores(cores, processes, process_index)
        value = core_range(mine)
        if len(mine) > 1 and "," in value:
            raise ConfigError(f"NeuronCores {value} of process {process_index} are not one range, which "
                              f"{VISIBLE_ENV} needs; set {VISIBLE_ENV} to one range (e.g. 0-3) or unset it")
        env = self.visible.claim(api, value)
        if env:
            os.environ[GROUP_ENV] = env[GROUP_ENV] = str(len(mine))
        threads, shared = share_cores(processes)
        env.update(shared)
        log.info("api '%s' process %d: NeuronCores %s (%s=%s)", api.name, process_index, value, VISIBLE_ENV,
                 os.environ[VISIBLE_ENV])
        visible = parse_cores(os.environ[VISIBLE_ENV]) or []
        return Device(kind="inferentia", process_index=process_index, env=env,
                      visible_devices=[str(core) for core in visible], threads=threads,
                      options={"neuron_cores": os.environ[VISIBLE_ENV],
                               "frameworks": installed_frameworks()})
