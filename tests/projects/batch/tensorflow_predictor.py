"""Cortex's test/batch/tensorflow shape: tensorflow_client on a batch of rows, the results in
<dest_dir>/<job_id>/<batch_id>.json."""
import json
from pathlib import Path


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config, job_spec):
        self.client = tensorflow_client
        self.out = Path(config["dest_dir"]) / job_spec["job_id"]
        self.out.mkdir(parents=True, exist_ok=True)

    def predict(self, payload, batch_id):
        prediction = self.client.predict({"x": payload})
        classes = [int(value) for value in prediction["class_ids"]]
        (self.out / f"{batch_id}.json").write_text(json.dumps({"rows": payload, "classes": classes}))
