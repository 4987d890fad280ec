import json
import os

labels = ["setosa", "versicolor", "virginica"]


class ONNXPredictor:
    def __init__(self, onnx_client, config, job_spec):
        self.client = onnx_client
        self.dest = os.path.join(config["dest"], job_spec["job_id"])
        os.makedirs(self.dest, exist_ok=True)

    def predict(self, payload, batch_id):
        results = []
        for flower in payload:  # the model takes one flower ([1, 4]) per call, as onnx_client shapes its input
            features = [flower[key] for key in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
            results.append(labels[self.client.predict(features)[0][0]])
        with open(os.path.join(self.dest, f"{batch_id}.json"), "w") as file:
            json.dump(results, file)

    def on_job_complete(self, batch_metrics):
        counts = {}
        for name in sorted(os.listdir(self.dest)):
            if name != "summary.json":
                with open(os.path.join(self.dest, name)) as file:
                    for label in json.load(file):
                        counts[label] = counts.get(label, 0) + 1
        with open(os.path.join(self.dest, "summary.json"), "w") as file:
            json.dump({"labels": counts, "batches": batch_metrics["succeeded"]}, file, sort_keys=True)
