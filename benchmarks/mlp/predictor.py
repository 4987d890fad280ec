import numpy as np


class ONNXPredictor:
    """The heavy workload: 1024 floats in, the best of 10 classes out."""

    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        scores = self.client.predict(np.asarray(payload["x"], dtype=np.float32).reshape(1, -1))[0]
        return {"class": int(scores[0].argmax())}
