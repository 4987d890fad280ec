"""Finding Neuron devices, their NeuronCores, the Neuron runtime and the framework integrations."""
from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "ENGINE_NEURON_ROOT"  # where /dev, /sys and /opt/aws/neuron are; a fake tree in tests
NEURON_LS = "opt/aws/neuron/bin/neuron-ls"
NEURON_LIB = "opt/aws/neuron/lib"
SYSFS = "sys/devices/virtual/neuron_device"
INF1_CORES = 4  # NeuronCores of one Inferentia (inf1) chip, Cortex's NeuronCoresPerInf

# Import name → distribution of each framework integration, per predictor type that can use it.
FRAMEWORKS = {"torch_neuronx": "torch-neuronx", "torch_neuron": "torch-neuron",
              "tensorflow_neuronx": "tensorflow-neuronx", "tensorflow_neuron": "tensorflow-neuron"}
TENSORFLOW_FRAMEWORKS = ("tensorflow_neuronx", "tensorflow_neuron")


@dataclass(frozen=True)
class NeuronDevice:
    """One Neuron device (an Inferentia or Trainium chip) and the global ids of its NeuronCores."""

    index: int
    cores: tuple[int, ...]
    memory: int = 0  # bytes; 0 when unknown

    def describe(self) -> str:
        """`0: 4 NeuronCores (0-3)`."""
        plural = "s" if len(self.cores) != 1 else ""
        return f"{self.index}: {len(self.cores)} NeuronCore{plural} ({core_range(self.cores)})"


class DiscoveryError(Exception):
    """No Neuron device could be found; the message says where engine looked."""


class NeuronHost:
    """The machine's Neuron files under `root` (/ unless $ENGINE_NEURON_ROOT or a test says otherwise)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get(ROOT_ENV, "/"))

    @property
    def real(self) -> bool:
        """True when this is the machine itself, so PATH and the library path count too."""
        return self.root == Path("/")

    def devices(self) -> list[NeuronDevice]:
        """The Neuron devices, from neuron-ls --json-output when it answers, else from device nodes and sysfs."""
        tried = []
        command = self.neuron_ls()
        if command is None:
            tried.append("neuron-ls is not installed")
        else:
            try:
                found = parse_neuron_ls(_run([command, "--json-output"]))
                if found:
                    return found
                tried.append("neuron-ls lists no device")
            except DiscoveryError as error:
                tried.append(f"neuron-ls failed: {error}")
        found = self.devices_from_nodes()
        if not found:
            tried.append(f"there are no {self.root / 'dev'}/neuron* device nodes")
            raise DiscoveryError("; ".join(tried))
        return found

    def neuron_ls(self) -> str | None:
        """The neuron-ls command, if installed."""
        bundled = self.root / NEURON_LS
        if self.real:
            return shutil.which("neuron-ls") or (str(bundled) if bundled.is_file() else None)
        return str(bundled) if bundled.is_file() else None

    def device_nodes(self) -> list[Path]:
        """/dev/neuron0, /dev/neuron1, ... in index order."""
        nodes = [path for path in (self.root / "dev").glob("neuron*") if re.fullmatch(r"neuron\d+", path.name)]
        return sorted(nodes, key=lambda path: int(path.name[6:]))

    def devices_from_nodes(self) -> list[NeuronDevice]:
        """Devices from their /dev nodes; NeuronCores per device from sysfs (core_count or neuron_core* folders)."""
        devices, next_core = [], 0
        for node in self.device_nodes():
            index = int(node.name[6:])
            count = self._sysfs_core_count(index)
            devices.append(NeuronDevice(index, tuple(range(next_core, next_core + count))))
            next_core += count
        return devices

    def _sysfs_core_count(self, index: int) -> int:
        folder = self.root / SYSFS / f"neuron{index}"
        try:
            return int((folder / "core_count").read_text().strip())
        except (OSError, ValueError):
            cores = [path for path in folder.glob("neuron_core*") if re.fullmatch(r"neuron_core\d+", path.name)]
            return len(cores) or INF1_CORES  # no sysfs (an old driver): an inf1 chip, as Cortex assumed

    def runtime_library(self) -> str | None:
        """Where libnrt.so (Neuron runtime 2.x) is, or None."""
        folders = [self.root / NEURON_LIB]
        if self.real:
            folders += [Path(entry) for entry in os.environ.get("LD_LIBRARY_PATH", "").split(":") if entry]
        for folder in folders:
            found = sorted(folder.glob("libnrt.so*"))
            if found:
                return str(found[0])
        return ctypes.util.find_library("nrt") if self.real else None


def parse_neuron_ls(text: str) -> list[NeuronDevice]:
    """Devices from `neuron-ls --json-output`: a list of {neuron_device, nc_count, memory_size, neuroncore_ids?}."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise DiscoveryError(f"its output is not JSON ({error})") from None
    if isinstance(data, dict):  # newer layouts wrap the list
        data = data.get("neuron_devices", data.get("devices"))
    if not isinstance(data, list):
        raise DiscoveryError("its JSON output is not a list of devices")
    devices, next_core = [], 0
    try:
        for entry in sorted(data, key=lambda entry: int(entry["neuron_device"])):
            count = int(entry["nc_count"])
            ids = tuple(int(core) for core in entry.get("neuroncore_ids") or range(next_core, next_core + count))
            devices.append(NeuronDevice(int(entry["neuron_device"]), ids, int(entry.get("memory_size") or 0)))
            next_core = max(ids, default=next_core - 1) + 1
    except (KeyError, TypeError, ValueError) as error:
        raise DiscoveryError(f"a device in its JSON output lacks {error}") from None
    return devices


def installed_frameworks(names: tuple[str, ...] = tuple(FRAMEWORKS)) -> list[str]:
    """Which of the framework integrations are installed (found without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is not None]


def core_range(cores: tuple[int, ...] | list[int]) -> str:
    """`2-3` for consecutive cores, `2` for one, `0,2` otherwise (which NEURON_RT_VISIBLE_CORES does not take)."""
    cores = list(cores)
    if len(cores) > 1 and cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def parse_cores(setting: str) -> list[int] | None:
    """The cores a NEURON_RT_VISIBLE_CORES value names (`1`, `0-3`, or a comma list of those); None if malformed."""
    cores: list[int] = []
    for part in (part.strip() for part in setting.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            return None
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            return None
        cores += [core for core in range(first, last + 1) if core not in cores]
    return cores


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DiscoveryError(str(error)) from None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise DiscoveryError(f"exit code {result.returncode}{': ' + reason[-1] if reason else ''}")
    return result.stdout
