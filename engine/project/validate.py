"""Every check `engine serve` runs before it binds a port; `engine validate` runs exactly these."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine import plugins
from engine.errors import ConfigError, EngineError
from engine.project.batch import BatchApi
from engine.project.config import Api, not_applied_locally, read_config
from engine.project.files import Project, ProjectWarning
from engine.project.predictor_class import check_class, static_methods
from engine.project.splitters import TrafficSplitter
from engine.settings import env_name

CONFIG_FILE_NAME = "cortex.yaml"


@dataclass
class ValidatedProject:
    """A project whose configuration passed every pre-start check."""

    project: Project
    apis: list[Api]
    warnings: list[ProjectWarning] = field(default_factory=list)
    splitters: list[TrafficSplitter] = field(default_factory=list)
    batch_apis: list[BatchApi] = field(default_factory=list)


def find_config(project_dir: str | Path = ".", config_file: str | Path | None = None) -> Path:
    """The config file: `config_file` (relative to the working directory) or PROJECT_DIR/cortex.yaml."""
    path = Path(config_file) if config_file else Path(project_dir) / CONFIG_FILE_NAME
    if not path.is_file():
        where = "" if config_file else \
            f" (looked for {CONFIG_FILE_NAME} in {Path(project_dir).resolve()}; use -f to name another file)"
        raise ConfigError(f"{path}: configuration file not found{where}")
    return path.resolve()


def validate_project(project_dir: str | Path = ".", config_file: str | Path | None = None,
                     pm: plugins.PluginManager | None = None, cpu: bool = False,
                     hardware: bool = True, served: list[str] | None = None) -> ValidatedProject:
    """Load cortex.yaml and check it against the project files and the installed plugins.

    With `cpu`, APIs that ask for GPUs or Inferentia chips are served on the CPU instead (with a warning each).
    Without `hardware`, each API is checked as if it were served on the CPU, its compute left as it is: for a
    distributed engine whose replicas check their hardware on their own nodes. With `served`, only the APIs named
    are checked against this machine's hardware (the others are served elsewhere)."""
    pm = pm or plugins.make_plugin_manager()
    path = find_config(project_dir, config_file)
    config = read_config(path, hints={"predictor.type": "installed predictor types: "
                                                        + ", ".join(sorted(plugins.predictor_types(pm)))})
    apis = config.apis
    project = Project(path.parent, path)
    problems: list[str] = []
    checked_apis = [*apis, *config.batch_apis]  # a BatchAPI's predictor is checked as a RealtimeAPI's
    warnings = [ProjectWarning(line) for line in on_cpu(checked_apis)] if cpu else []
    for api in checked_apis:
        checked = api if hardware and (served is None or api.name in served) else _on_cpu_copy(api)
        found: list[str] = []
        try:
            check_api(checked, project, pm)
        except EngineError as error:
            found.append(str(error))
        found += plugins.api_problems(pm, checked, project.root)
        if found and plugins.compute_target(checked) != "cpu":
            found.append(f"to serve it on the CPU instead, run engine serve --cpu (or set {env_name('cpu')}=1)")
        problems += [f"{path}: api '{api.name}': {problem}" for problem in found]
        ignored = not_applied_locally(api)
        if ignored:
            warnings.append(ProjectWarning(f"api '{api.name}': not applied locally (accepted for Cortex "
                                           f"compatibility): {', '.join(ignored)}", local=True))
    warnings += [ProjectWarning(f"api '{splitter.name}' (TrafficSplitter): not applied locally (accepted for Cortex "
                                "compatibility): networking.api_gateway", local=True)
                 for splitter in config.splitters if "api_gateway" in splitter.networking.model_fields_set]
    if problems:
        raise ConfigError("\n".join(problems))
    return ValidatedProject(project, apis, warnings, config.splitters, config.batch_apis)


def on_cpu(apis: list[Api]) -> list[str]:
    """Serve every API on the CPU: drop compute.gpu and compute.inf; one warning per API changed."""
    warnings = []
    for api in apis:
        changed = [f"compute.{name}: {getattr(api.compute, name)}" for name in ("gpu", "inf")
                   if getattr(api.compute, name)]
        if changed:
            api.compute.gpu = api.compute.inf = 0
            warnings.append(f"api '{api.name}': served on the CPU (--cpu), ignoring {' and '.join(changed)}")
    return warnings


def _on_cpu_copy(api: Api) -> Api:
    """The API as --cpu would serve it (the original is left as it is)."""
    return api.model_copy(update={"compute": api.compute.model_copy(update={"gpu": 0, "inf": 0})})


def check_api(api: Api, project: Project, pm: plugins.PluginManager) -> None:
    """The checks of one API that need the project files or the plugins."""
    ptype = plugins.predictor_type(pm, api.predictor.type)
    for name in api.predictor.type_fields_set():
        if name not in ptype.type_fields:
            raise ConfigError(f"predictor: {name} is not a supported field for the {ptype.name} predictor type")
    if ptype.requires_models and api.predictor.models is None:
        raise ConfigError(f"predictor: at least one model must be specified for the {ptype.name} predictor type "
                          "(predictor.models.path, .paths or .dir; predictor.model_path in Cortex v0.22–v0.24)")
    plugins.check_hardware_target(pm, api)
    if not project.has_file(api.predictor.path):
        raise ConfigError(f"predictor.path: {api.predictor.path} does not exist, or has been excluded from the "
                          "project directory (hidden, bytecode, or matched by .cortexignore)")
    if api.predictor.python_path and not project.has_dir(api.predictor.python_path):
        raise ConfigError(f"predictor.python_path: {api.predictor.python_path} does not exist, or has been excluded "
                          "from the project directory")
    if api.predictor.warmup_file and not (project.root / api.predictor.warmup_file).is_file():
        raise ConfigError(f"predictor.warmup_file: {api.predictor.warmup_file} does not exist (it is relative to the "
                          f"project directory {project.root})")
    for location in model_locations(api):
        if not location.startswith("s3://") and not (project.root / location).exists():
            raise ConfigError(f"predictor.models: {location} does not exist (local model paths are relative to the "
                              f"project directory {project.root})")
    methods = static_methods(project.root / api.predictor.path, ptype.class_name)
    if methods is not None:
        check_class(methods, ptype, api.predictor.models is not None, f"{api.predictor.path}: {ptype.class_name}",
                    batch=isinstance(api, BatchApi))


def model_locations(api: Api) -> list[str]:
    """Every model location an API names (path, each of paths, or dir)."""
    models = api.predictor.models
    if models is None:
        return []
    if models.path:
        return [models.path]
    if models.dir:
        return [models.dir]
    return [entry.path for entry in models.paths or () if entry.path is not None]
