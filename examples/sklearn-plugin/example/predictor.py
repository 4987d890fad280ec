LABELS = ["setosa", "versicolor", "virginica"]


class SklearnPredictor:
    def __init__(self, sklearn_client, config):
        self.client = sklearn_client

    def predict(self, payload):
        features = [payload["sepal_length"], payload["sepal_width"], payload["petal_length"], payload["petal_width"]]
        return LABELS[self.client.predict(features)[0]]
