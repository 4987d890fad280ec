"""The project as the driver sees it: checked as `engine serve` checks it, its APIs, and what ships to the nodes."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine import Api, ConfigError, ServeSettings, create_app

CONFIG_NAME = "cortex.yaml"
ENV_FILE = ".env"
IGNORE_FILE = ".cortexignore"
# engine serves the files .gitignore lists (models, often); Ray would leave them out of an uploaded working_dir.
IGNORE_GITIGNORE_ENV = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"
# What create_app says about serving on this machine, which on Ray is the driver's to say (it says Ray's instead).
LOCAL_WARNINGS = ("not applied locally", "served on the CPU (--cpu)")


@dataclass(frozen=True)
class Project:
    """A checked project: its folder (the configuration file's), the file's name there, and its APIs."""

    root: Path
    config_name: str
    apis: list[Api]

    def env_vars(self, api: Api) -> dict[str, str]:
        """The variables a replica's process starts with: predictor.env, then .env's literal values (engine applies
        .env again in the replica, expanding $VARIABLES there as `engine serve` does)."""
        from dotenv import dotenv_values

        found = dotenv_values(self.root / ENV_FILE, interpolate=False) if (self.root / ENV_FILE).is_file() else {}
        literal = {key: value for key, value in found.items() if value is not None and "$" not in value}
        return {**api.predictor.env, **literal}

    def excludes(self) -> list[str]:
        """.cortexignore's patterns (gitignore syntax, as Ray's excludes are)."""
        path = self.root / IGNORE_FILE
        lines = path.read_text().splitlines() if path.is_file() else []
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]

    def job_runtime_env(self) -> dict:
        """For a cluster: the project folder, uploaded when the driver joins (Ray uploads folders only then), its
        ignored files left out."""
        os.environ[IGNORE_GITIGNORE_ENV] = "1"
        return {"working_dir": str(self.root), "excludes": self.excludes()}


def load_project(project_dir: Path, config_file: Path | None, settings: ServeSettings, local: bool) -> Project:
    """Run every check `engine serve` runs (on a cluster that is not this machine, the hardware ones are left to
    each replica, on its node), then read the APIs."""
    config = Path(config_file) if config_file else Path(project_dir) / CONFIG_NAME
    checked = settings if local else dataclasses.replace(settings, cpu=True)
    hide = LOCAL_WARNINGS[:1] if local and settings.cpu else LOCAL_WARNINGS  # --cpu's own warnings are right here
    with dropping(logging.getLogger("engine"), hide):
        create_app(project_dir, config, settings=checked, apis=[])
    config = config.resolve()
    apis = [Api.model_validate(entry) for entry in yaml.safe_load(config.read_text())]
    if not apis:
        raise ConfigError(f"{config}: no api to serve")
    return Project(config.parent, config.name, apis)


def read_keys(settings: ServeSettings) -> tuple[str, ...]:
    """The API keys of --api-key and --api-key-file (create_app has checked the file), sent to every replica."""
    keys = list(settings.api_key)
    if settings.api_key_file:
        lines = Path(settings.api_key_file).read_text().splitlines()
        keys += [key for key in (line.split("#", 1)[0].strip() for line in lines) if key]
    return tuple(keys)


class dropping:
    """Leave out a logger's records that contain any of some phrases, for the duration of a block."""

    def __init__(self, logger: logging.Logger, phrases: tuple[str, ...]) -> None:
        self.logger = logger
        self.filter = logging.Filter()
        self.filter.filter = lambda record: not any(phrase in record.getMessage() for phrase in phrases)

    def __enter__(self) -> None:
        self.logger.addFilter(self.filter)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self.filter)
