"""The `inf` hardware target: AWS Inferentia NeuronCores, found on the machine and given out to worker processes."""
from __future__ import annotations

from engine_hw_inferentia.discovery import NeuronDevice, NeuronHost, parse_neuron_ls
from engine_hw_inferentia.target import InferentiaTarget, split_cores

__all__ = ["InferentiaTarget", "NeuronDevice", "NeuronHost", "parse_neuron_ls", "split_cores"]

# The `inferentia` entry point registers this module: its hooks are those of one InferentiaTarget over the machine
# ($ENGINE_NEURON_ROOT, default /). Tests register their own InferentiaTarget(NeuronHost(tmp_path)) instead.
TARGET = InferentiaTarget()
engine_hardware_targets = TARGET.engine_hardware_targets
engine_validate_api = TARGET.engine_validate_api
engine_setup_device = TARGET.engine_setup_device
