"""Fake Neuron machines and APIs for the Inferentia plugin's tests."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from engine_hw_inferentia import InferentiaTarget, NeuronHost

from engine import Api, testing

GIB = 2**30


def inf1_devices(count: int) -> list[dict]:
    """What neuron-ls --json-output says on an inf1 machine: 4 NeuronCores and 8 GB per device."""
    return [{"neuron_device": index, "bdf": f"00:{0x1c + index:02x}.0", "connected_to": None, "nc_count": 4,
             "memory_size": 8 * GIB, "neuron_processes": []} for index in range(count)]


def inf2_devices(count: int) -> list[dict]:
    """The same on an inf2 machine: 2 NeuronCores and 32 GB per device, with their core ids listed."""
    return [{"neuron_device": index, "bdf": f"00:{0x1e + index:02x}.0", "cpu_affinity": "0-7", "numa_node": "-1",
             "connected_to": None, "nc_count": 2, "memory_size": 32 * GIB,
             "neuroncore_ids": [2 * index, 2 * index + 1], "neuron_processes": []} for index in range(count)]


class FakeNeuronMachine:
    """Builds a machine's Neuron files under `root` and framework packages under `site`."""

    def __init__(self, root: Path, site: Path, monkeypatch) -> None:
        self.root, self.site, self.monkeypatch = root, site, monkeypatch
        root.mkdir(parents=True)

    @property
    def host(self) -> NeuronHost:
        return NeuronHost(self.root)

    def neuron_ls(self, devices: list[dict] | str, exit_code: int = 0, stderr: str = "") -> None:
        """Install a neuron-ls that prints `devices` (JSON, or the text as is) and exits with `exit_code`."""
        script = self.root / "opt/aws/neuron/bin/neuron-ls"
        script.parent.mkdir(parents=True, exist_ok=True)
        output = script.parent / "neuron-ls.out"
        output.write_text(devices if isinstance(devices, str) else json.dumps(devices, indent=4))
        script.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            [ "$1" = --json-output ] || {{ echo "usage: neuron-ls --json-output" >&2; exit 2; }}
            cat "{output}"
            echo "{stderr}" >&2
            exit {exit_code}
        """))
        script.chmod(0o755)

    def device_nodes(self, count: int, sysfs: str = "core_count", cores: int = 4) -> None:
        """/dev/neuron0..count-1, with sysfs telling the cores by `core_count`, by `folders`, or not at all (`none`)."""
        (self.root / "dev").mkdir(exist_ok=True)
        for index in range(count):
            (self.root / "dev" / f"neuron{index}").touch()
            folder = self.root / "sys/devices/virtual/neuron_device" / f"neuron{index}"
            if sysfs == "core_count":
                folder.mkdir(parents=True)
                (folder / "core_count").write_text(f"{cores}\n")
            elif sysfs == "folders":
                for core in range(cores):
                    (folder / f"neuron_core{core}").mkdir(parents=True)

    def runtime(self) -> None:
        """Install libnrt.so.1 where the aws-neuronx-runtime-lib package puts it."""
        library = self.root / "opt/aws/neuron/lib/libnrt.so.1"
        library.parent.mkdir(parents=True, exist_ok=True)
        library.touch()

    def framework(self, name: str = "torch_neuronx") -> None:
        """Install an importable (but never imported) framework integration package."""
        package = self.site / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("raise RuntimeError('the plugin must not import the framework')\n")
        self.monkeypatch.syspath_prepend(str(self.site))

    def inf1(self, devices: int = 1) -> FakeNeuronMachine:
        """A complete inf1 machine: neuron-ls, device nodes, runtime and torch-neuron(x)."""
        self.neuron_ls(inf1_devices(devices))
        self.device_nodes(devices)
        self.runtime()
        self.framework()
        return self

    def plugin_manager(self):
        """A fresh plugin manager with the built-in defaults and an InferentiaTarget over this machine."""
        return testing.plugin_manager(inferentia=InferentiaTarget(self.host))


def make_api(inf: int = 1, processes: int = 1, type_: str = "python", env: dict | None = None,
             name: str = "clf") -> Api:
    """An API asking for `inf` Inferentia chips with `processes` worker processes."""
    return Api.model_validate({"name": name, "kind": "RealtimeAPI", "compute": {"inf": inf},
                               "predictor": {"type": type_, "path": "predictor.py", "processes_per_replica": processes,
                                             "env": env or {}}})
