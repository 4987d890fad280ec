"""`engine validate`'s last check: import each API's predictor module as `engine serve` would, in a child process.

A child process, so that an import that crashes the interpreter or never returns is reported instead of taking
`engine validate` with it. The child prints nothing on success; on failure, the error as serve would report it.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine.errors import EngineError


def check_imports(config_file: Path, api_names: list[str], cpu: bool, timeout: float) -> dict[str, str]:
    """Import every API's predictor in a child process; what went wrong, by API name (empty when all import)."""
    problems = {}
    for name in api_names:
        command = [sys.executable, "-m", "engine.project.import_check", str(config_file), name,
                   *(["--cpu"] if cpu else [])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            problems[name] = (f"importing its predictor did not finish within {timeout:g} s (an import that waits "
                              "for something, or a very slow one: see --import-timeout)")
            continue
        if done.returncode < 0:
            problems[name] = (f"importing its predictor crashed the Python process "
                              f"({signal.Signals(-done.returncode).name}){_last_lines(done.stderr)}")
        elif done.returncode != 0:
            problems[name] = done.stdout.strip() or f"importing its predictor failed:{_last_lines(done.stderr)}"
    return problems


def _last_lines(text: str, count: int = 20) -> str:
    lines = text.strip().splitlines()[-count:]
    return ("\n" + "\n".join(lines)) if lines else ""


def main(argv: list[str] | None = None) -> int:
    """In the child: set up the API's environment and view as serve does, import, check the class."""
    parser = argparse.ArgumentParser(prog="python -m engine.project.import_check")
    parser.add_argument("config")
    parser.add_argument("api")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    from engine import plugins
    from engine.project.files import enter_view, remove_view
    from engine.project.loading import load_project
    from engine.project.predictor_class import load_class

    loaded = load_project(Path(args.config).parent, args.config, cpu=args.cpu, apis=[args.api])
    api = [*loaded.apis, *loaded.batch_apis][0]
    pm = plugins.make_plugin_manager()
    plugins.setup_device(pm, api, process_index=0)  # sets what frameworks read at import (threads, visible devices)
    view = loaded.project.create_view()
    try:
        os.environ.update(loaded.environment)
        enter_view(view, [api.predictor.python_path or ""])
        load_class(view, api, plugins.predictor_type(pm, api.predictor.type))
    except EngineError as error:
        print(error)
        return 1
    finally:
        os.chdir("/")
        remove_view(view)
    return 0


if __name__ == "__main__":
    sys.exit(main())
