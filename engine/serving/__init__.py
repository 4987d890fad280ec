"""The request path: admission, backend, pipeline, workers, batching, streams."""
