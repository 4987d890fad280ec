class PythonPredictor:
    """The echo workload as an async predict: {"x": [floats]} → {"y": sum}; with {"stream": n}, n items streamed."""

    def __init__(self, config):
        pass

    async def predict(self, payload):
        if "stream" in payload:
            return self.items(payload["stream"])
        return {"y": sum(payload["x"])}

    async def items(self, count):
        for n in range(count):
            yield {"n": n}
