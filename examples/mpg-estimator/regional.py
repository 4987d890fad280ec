# One model per region (models.dir), at most one in memory at a time (cache_size: 1).
from linear_model import LinearModel


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return LinearModel.load(model_path)

    def predict(self, payload, query_params):
        region = query_params.get("region", "usa")
        model = self.client.get_model(region, query_params.get("version", "latest"))
        features = [payload[key] for key in ("cylinders", "displacement", "horsepower", "weight", "acceleration")]
        return {"region": region, "prediction": model.predict([features])[0]}
