# The seed's live-reloading mpg-estimator, with a JSON linear model instead of mlflow.
from linear_model import LinearModel


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return LinearModel.load(model_path)

    def predict(self, payload, query_params):
        model_version = query_params.get("version")

        model = self.client.get_model(model_version=model_version)
        model_input = [
            payload["cylinders"],
            payload["displacement"],
            payload["horsepower"],
            payload["weight"],
            payload["acceleration"],
        ]
        result = model.predict([model_input])[0]

        return {"prediction": result, "model": {"version": model_version}}
