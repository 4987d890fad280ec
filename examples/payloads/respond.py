import pickle

import numpy as np
from starlette.exceptions import HTTPException
from starlette.responses import Response


class PythonPredictor:
    """Answers with the response type named by ?as=json|text|bytes|response|numpy|error."""

    def __init__(self, config):
        pass

    def predict(self, payload, query_params):
        kind = query_params.get("as", "json")
        if kind == "json":
            return {"labels": ["setosa", "versicolor"], "scores": [0.9, 0.1]}
        if kind == "text":
            return "class 1"
        if kind == "bytes":
            return pickle.dumps(np.eye(2))
        if kind == "response":
            return Response(content="a,b\n1,2\n", media_type="text/csv", status_code=201)
        if kind == "numpy":
            return {"mean": np.float32(0.5), "matrix": np.eye(2)}
        if kind == "teapot":
            raise HTTPException(status_code=418, detail="I'm a teapot")
        raise ValueError(f"unknown response type {kind!r}")

    def post_predict(self, response, query_params):
        print(f"post_predict: answered ?as={query_params.get('as', 'json')} with {type(response).__name__}")
