"""Loading a project as data: its APIs checked as `engine serve` checks them, the environment its predictors run
with, and what to warn the user of. `engine serve`, `engine validate` and distributed engines (engine-ray) all load
a project through load_project, so that it gets the same environment, warnings and errors everywhere."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError
from engine.project.batch import BatchApi
from engine.project.config import Api
from engine.project.files import Project, ProjectWarning, conflicting_env
from engine.project.splitters import TrafficSplitter
from engine.project.validate import validate_project

if TYPE_CHECKING:
    from engine.plugins import PluginManager


@dataclass
class LoadedProject:
    """A project that passed every check `engine serve` runs before it binds a port."""

    project: Project  # its files (what the predictors see) and its .env
    apis: list[Api]  # the RealtimeAPIs to serve: every one of the configuration file, or those named
    environment: dict[str, str]  # what the process serving `apis` and `batch_apis` runs with (predictor.env, .env)
    warnings: list[ProjectWarning]  # for the user, once; the caller says them (load_project logs nothing)
    # the names of every RealtimeAPI of the configuration file, served here or not (one alone is also served at /
    # and /predict: BatchAPIs and TrafficSplitters do not count)
    every_api: list[str]
    # the file's TrafficSplitters (create_app serves those whose APIs it serves, or is given as targets)
    splitters: list[TrafficSplitter] = field(default_factory=list)
    batch_apis: list[BatchApi] = field(default_factory=list)  # the BatchAPIs to serve: every one, or those named

    @property
    def config_file(self) -> Path:
        """The configuration file (absolute)."""
        return self.project.config_file

    def environment_for(self, apis: list[Api]) -> dict[str, str]:
        """The variables a process serving just `apis` runs with ($VARIABLES in .env expanded against this process's
        environment): what a distributed engine hands the replicas of each API."""
        return self.project.environment({api.name: api.predictor.env for api in apis}, os.environ)


def load_project(project_dir: str | Path = ".", config_file: str | Path | None = None, *,
                 pm: PluginManager | None = None, cpu: bool = False, apis: list[str] | None = None,
                 hardware: bool = True) -> LoadedProject:
    """Read and check a project (PROJECT_DIR/cortex.yaml, or `config_file`); ConfigError (one paragraph, every
    problem) when it cannot be served.

    `cpu` serves GPU and Inferentia APIs on the CPU (engine serve --cpu); `apis` keeps only the APIs named (RealtimeAPIs
    and BatchAPIs); without `hardware`, the APIs' compute is not checked against this machine (a cluster's replicas
    check it on their node).
    The environment's $VARIABLES are expanded against os.environ as it is now.
    """
    validated = validate_project(project_dir, config_file, pm, cpu=cpu, hardware=hardware, served=apis)
    served, batch_served = validated.apis, validated.batch_apis
    if apis is not None:
        unknown = sorted(set(apis) - {api.name for api in [*served, *batch_served]})
        if unknown:
            raise ConfigError(f"{validated.project.config_file}: no api named {', '.join(unknown)}")
        served = [api for api in served if api.name in apis]
        batch_served = [api for api in batch_served if api.name in apis]
    api_envs = {api.name: api.predictor.env for api in [*served, *batch_served]}
    warnings = [*validated.project.warnings, *validated.warnings,
                *(ProjectWarning(line, local=True) for line in conflicting_env(api_envs))]
    return LoadedProject(validated.project, served, validated.project.environment(api_envs, os.environ), warnings,
                         [api.name for api in validated.apis], validated.splitters, batch_served)
