"""`engine serve --on ray`: every API of a project as a Ray Serve application; Ray is imported only then."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine import Setting, hookimpl

if TYPE_CHECKING:
    from engine import ServeSettings

TARGET = "ray"
ADDRESS = Setting("address", "with --on ray: the Ray cluster to join (its address, such as ray://head:10001); "
                  "without it a local Ray instance is started", metavar="ADDRESS")


@hookimpl
def engine_settings():
    """--address."""
    return [ADDRESS]


@hookimpl
def engine_serve_on(target: str, project_dir: Path, config_file: Path | None, settings: ServeSettings) -> int | None:
    """Deploy the project on Ray Serve and serve until SIGTERM (other targets: decline)."""
    if target != TARGET:
        return None
    from engine_ray.driver import serve_on_ray

    return serve_on_ray(project_dir, config_file, settings)
