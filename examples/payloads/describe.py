from starlette.datastructures import FormData, UploadFile


class PythonPredictor:
    """Says what payload it received: the type depends on the request's Content-Type."""

    def __init__(self, config):
        pass

    def predict(self, payload, query_params, headers):
        return {
            "payload_type": type(payload).__name__,
            "payload": self.summarise(payload),
            "query_params": dict(query_params),
            "content_type": headers.get("content-type"),
        }

    def summarise(self, payload):
        if isinstance(payload, FormData):
            return {key: self.summarise_field(value) for key, value in payload.multi_items()}
        if isinstance(payload, bytes):
            return f"{len(payload)} bytes"
        return payload

    def summarise_field(self, value):
        if isinstance(value, UploadFile):
            return f"file {value.filename}: {len(value.file.read())} bytes"
        return value
