import json
import os

# Module-level code runs after .env and predictor.env are applied.
DEFAULT_NAME = os.environ["GREETER_NAME"]


class PythonPredictor:
    def __init__(self, config):
        with open("values.json") as values_file:  # relative to the project directory
            self.languages = json.load(values_file)["languages"]
        self.default_greeting = config["greeting"]
        self.punctuation = os.environ["GREETER_PUNCTUATION"]

    def predict(self, payload, query_params):
        name = payload.get("name", DEFAULT_NAME) if isinstance(payload, dict) else DEFAULT_NAME
        greeting = self.languages.get(query_params.get("lang", ""), self.default_greeting)
        return {"greeting": f"{greeting}, {name}{self.punctuation}", "signature": os.environ["GREETER_SIGNATURE"]}
