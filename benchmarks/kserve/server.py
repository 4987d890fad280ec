"""The KServe peer (its Python model server, run with KServe's own defaults): the echo model, and the ONNX MLP
when given a model file. Run in a virtual environment of its own (pip install kserve onnxruntime):

    python benchmarks/kserve/server.py PORT [MODEL.onnx]
"""
import sys

import kserve


class Echo(kserve.Model):
    """{"x": [floats]} → {"y": sum}, as benchmarks/echo/predictor.py."""

    def __init__(self) -> None:
        super().__init__("echo")
        self.ready = True

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        return {"y": sum(payload["x"])}


class Mlp(kserve.Model):
    """{"x": [1024 floats]} → {"class": the best of 10}, onnxruntime on one thread, as benchmarks/mlp/predictor.py."""

    def __init__(self, path: str) -> None:
        super().__init__("mlp")
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.np = np
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        x = self.np.asarray([payload["x"]], dtype=self.np.float32)
        return {"class": int(self.session.run(None, {"x": x})[0][0].argmax())}


if __name__ == "__main__":
    model = Mlp(sys.argv[2]) if len(sys.argv) > 2 else Echo()
    kserve.ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, workers=1).start([model])
