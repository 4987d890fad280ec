"""Cortex's test/batch/onnx shape: onnx_client on a batch of rows, the results in
<dest_dir>/<job_id>/<batch_id>.json."""
import json
from pathlib import Path

import numpy as np


class ONNXPredictor:
    def __init__(self, onnx_client, config, job_spec):
        self.client = onnx_client
        self.out = Path(config["dest_dir"]) / job_spec["job_id"]
        self.out.mkdir(parents=True, exist_ok=True)

    def predict(self, payload, batch_id):
        scores = self.client.predict(np.array(payload, dtype=np.float32))[0]
        classes = np.argmax(scores, axis=1).tolist()
        (self.out / f"{batch_id}.json").write_text(json.dumps({"rows": payload, "classes": classes}))
