class PythonPredictor:
    """The echo workload: {"x": [floats]} → {"y": sum}. Shared by every server in the echo comparison."""

    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"y": sum(payload["x"])}
