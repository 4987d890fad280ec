"""Project loading: cortex.yaml, validation, the project's files, load_project."""
