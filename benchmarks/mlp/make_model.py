"""Write the heavy MLP of the benchmark: 1024 → 4096 → 4096 → 10, float32, random weights, batch dimension free;
with --light, 1024 → 16 → 10 (same input, but HTTP costs more than inference).

    python benchmarks/mlp/make_model.py OUTPUT.onnx [--light]
"""
import sys
from itertools import pairwise

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZES = (1024, 4096, 4096, 10)
LIGHT_SIZES = (1024, 16, 10)


def build(sizes: tuple[int, ...] = SIZES) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, initializers, current = [], [], "x"
    for layer, (inputs, outputs) in enumerate(pairwise(sizes)):
        weight = (rng.standard_normal((inputs, outputs)) / np.sqrt(inputs)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"h{layer}"]))
        current = f"h{layer}"
        if layer < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{layer}"]))
            current = f"r{layer}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", 10])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


if __name__ == "__main__":
    onnx.save(build(LIGHT_SIZES if "--light" in sys.argv[2:] else SIZES), sys.argv[1])
