"""`engine serve --on ray`: every API of a project as a Ray Serve application; Ray is imported only then."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine import hookimpl

if TYPE_CHECKING:
    from engine import ServeSettings

TARGET = "ray"


@hookimpl
def engine_serve_on(target: str, project_dir: Path, config_file: Path | None, settings: ServeSettings) -> int | None:
    """Deploy the project on Ray Serve and serve until SIGTERM (other targets: decline)."""
    if target != TARGET:
        return None
    from engine_ray.driver import serve_on_ray

    return serve_on_ray(project_dir, config_file, settings)
