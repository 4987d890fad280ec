"""Neuron discovery on fake machines: neuron-ls output, device nodes and sysfs, libnrt, framework packages."""
from __future__ import annotations

import json
import sys

import pytest
from engine_hw_inferentia.discovery import (
    DiscoveryError,
    NeuronDevice,
    NeuronHost,
    core_range,
    installed_frameworks,
    parse_cores,
    parse_neuron_ls,
)
from neuron_testing import GIB, inf1_devices, inf2_devices


def test_neuron_ls_on_inf1_numbers_the_cores_across_devices():
    devices = parse_neuron_ls(json.dumps(inf1_devices(4)))
    assert [device.cores for device in devices] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
    assert devices[1] == NeuronDevice(1, (4, 5, 6, 7), 8 * GIB)
    assert devices[1].describe() == "1: 4 NeuronCores (4-7)"


def test_neuron_ls_core_ids_are_used_when_listed():
    devices = parse_neuron_ls(json.dumps(inf2_devices(2)))
    assert [(device.index, device.cores) for device in devices] == [(0, (0, 1)), (1, (2, 3))]


def test_neuron_ls_devices_are_sorted_and_a_wrapped_list_is_read():
    shuffled = list(reversed(inf1_devices(2)))
    assert [d.index for d in parse_neuron_ls(json.dumps({"neuron_devices": shuffled}))] == [0, 1]


@pytest.mark.parametrize("output, says", [
    ("not json", "its output is not JSON"),
    ('{"instance_type": "inf1.xlarge"}', "its JSON output is not a list of devices"),
    ('[{"neuron_device": 0}]', "a device in its JSON output lacks 'nc_count'"),
])
def test_bad_neuron_ls_output(output, says):
    with pytest.raises(DiscoveryError, match=says):
        parse_neuron_ls(output)


def test_devices_from_the_neuron_ls_command(machine):
    machine.neuron_ls(inf1_devices(2))
    assert [device.cores for device in machine.host.devices()] == [(0, 1, 2, 3), (4, 5, 6, 7)]


@pytest.mark.parametrize("sysfs, cores, expected", [
    ("core_count", 2, [(0, 1), (2, 3)]),
    ("folders", 2, [(0, 1), (2, 3)]),
    ("none", 0, [(0, 1, 2, 3), (4, 5, 6, 7)]),  # an old driver without sysfs: inf1 chips of 4 cores, as in Cortex
])
def test_device_nodes_and_sysfs_when_neuron_ls_is_missing(machine, sysfs, cores, expected):
    machine.device_nodes(2, sysfs=sysfs, cores=cores)
    assert [device.cores for device in machine.host.devices()] == expected


def test_a_failing_neuron_ls_falls_back_to_the_device_nodes(machine):
    machine.neuron_ls("", exit_code=1, stderr='level=fatal msg="failed to discover Neuron devices"')
    machine.device_nodes(1)
    assert machine.host.devices() == [NeuronDevice(0, (0, 1, 2, 3))]


def test_device_nodes_are_ordered_by_number(machine):
    machine.device_nodes(12, sysfs="none")
    assert [node.name for node in machine.host.device_nodes()][:3] == ["neuron0", "neuron1", "neuron2"]
    assert machine.host.devices()[11].cores == (44, 45, 46, 47)


def test_no_device_says_where_it_looked(machine):
    with pytest.raises(DiscoveryError) as raised:
        machine.host.devices()
    assert str(raised.value) == f"neuron-ls is not installed; there are no {machine.root / 'dev'}/neuron* device nodes"
    machine.neuron_ls("", exit_code=1, stderr="no neuron device found")
    with pytest.raises(DiscoveryError, match=r"neuron-ls failed: exit code 1: no neuron device found; there are no "):
        machine.host.devices()
    machine.neuron_ls([])
    with pytest.raises(DiscoveryError, match=r"neuron-ls lists no device; there are no "):
        machine.host.devices()


def test_the_runtime_library(machine):
    assert machine.host.runtime_library() is None
    machine.runtime()
    assert machine.host.runtime_library() == str(machine.root / "opt/aws/neuron/lib/libnrt.so.1")


def test_the_root_comes_from_the_environment(machine, monkeypatch):
    monkeypatch.setenv("ENGINE_NEURON_ROOT", str(machine.root))
    assert NeuronHost().root == machine.root and not NeuronHost().real
    monkeypatch.delenv("ENGINE_NEURON_ROOT")
    assert NeuronHost().real


def test_frameworks_are_found_without_being_imported(machine):
    assert installed_frameworks(("torch_neuronx",)) == []
    machine.framework("torch_neuronx")
    machine.framework("tensorflow_neuron")
    assert installed_frameworks() == ["torch_neuronx", "tensorflow_neuron"]
    assert "torch_neuronx" not in sys.modules  # importing it would have raised


@pytest.mark.parametrize("cores, text", [((0, 1, 2, 3), "0-3"), ((5,), "5"), ((2, 3), "2-3"), ((0, 2), "0,2"),
                                         ((), "")])
def test_core_range(cores, text):
    assert core_range(cores) == text


@pytest.mark.parametrize("setting, cores", [("3", [3]), ("0-3", [0, 1, 2, 3]), (" 4-5, 8 ", [4, 5, 8]),
                                            ("2-3,3", [2, 3]), ("3-1", None), ("all", None), ("", None)])
def test_parse_cores(setting, cores):
    assert parse_cores(setting) == cores
