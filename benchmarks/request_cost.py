"""The cost of a request (issue 30): the bare ASGI floors, engine on both servers, P=1, P=2 and --isolate, the heavy
MLP and a CPU-bound predictor, in one run; with --before REV, every engine row also from a git worktree of REV.

    .venv/bin/python benchmarks/request_cost.py [--before REV] [--duration 10] [--rounds 2] [--only WORDS]

Echo and MLP: the server pinned to core 0 (its worker processes inherit it), wrk on core 1, so that requests per
second on one core are the inverse of the CPU each request costs. The CPU-bound rows run the server on both cores
(wrk, still on core 1, shares that core with it). Each measurement follows a warm-up; the configurations alternate
within each round and the table shows the medians of the rounds. Server CPU per request comes from /proc (utime +
stime of the server and all its children, before and after the measurement, over the requests answered). The access
log is off (--log-level warning) except in the row that says default settings. Needs wrk and
benchmarks/requirements.txt (onnx for the MLP).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from suite import HERE, LOAD_CORE, MLP_BODY, REPO, Result, Server, engine_command, floors, measure
from workers import PREDICTOR as CPU_BOUND_PREDICTOR

ECHO_BODY = json.dumps({"x": [float(i) / 7 for i in range(16)]})
CPU_BOUND_BODY = json.dumps({"burn": True})
CPU_BOUND_WORK = 1_000_000  # loop iterations per CPU-bound request (tens of milliseconds)
BOTH_CORES = "0,1"
QUIET = ("--log-level", "warning")  # engine's access log off
FLOOR_OF = {"uvicorn": "floor: uvicorn", "hypercorn": "floor: Hypercorn"}
BEFORE = " (before)"


@dataclass
class Row:
    """One configuration of a workload's table."""

    name: str
    project: str  # a key of Workload.projects; "" for the floors
    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    processes: int | None = None  # server processes it must run (front + workers); None: not checked
    server: str = ""  # the floor an engine row is compared with: "uvicorn" or "hypercorn"


@dataclass
class Workload:
    """A table: its rows, the body every request sends and the connection counts it is measured at."""

    name: str
    title: str
    body: str
    path: str
    connections: list[int]
    rows: list[Row]
    projects: dict[str, Path] = field(default_factory=dict)


@dataclass
class Revision:
    """The code engine rows run: the current tree, or a worktree of an earlier commit (--before)."""

    label: str  # "" for the current tree, BEFORE otherwise
    name: str
    root: Path
    env: dict[str, str]


@dataclass
class CheckedServer(Server):
    """A suite.Server that, once started, checks its process count and that every process runs the revision's code."""

    processes: int | None = None
    revision: Revision | None = None

    def start(self, body: str) -> None:
        try:
            super().start(body)
        except RuntimeError as error:
            raise RuntimeError(f"{error} with environment {self.env} (run that command so to see its error)") \
                from error
        pids = self.pids()
        if self.processes is not None and len(pids) != self.processes:
            self.stop()
            raise RuntimeError(f"{self.name}: {len(pids)} server processes, expected {self.processes} "
                               "(did a default change? see the row's flags and environment)")
        for pid in pids if self.revision else ():
            environment = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text()
                               .split("\0") if "=" in entry)
            if any(environment.get(name, "") != value for name, value in self.revision.env.items()):
                self.stop()
                raise RuntimeError(f"{self.name}: process {pid} does not run with {self.revision.env}")


def tree(label: str, name: str, root: Path) -> Revision:
    """The code of the tree at root, imported first: its root and its plugins' folders."""
    paths = [root, *sorted(path for path in (root / "plugins").iterdir() if path.is_dir())]
    # PYTHONSAFEPATH: `python -m` (the server, its workers) must not put the working directory (REPO) first
    return Revision(label, name, root, {"PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(map(str, paths))})


@contextmanager
def before(rev: str) -> Iterator[Revision]:
    """A git worktree of `rev` in a temporary directory, removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="engine-before-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(root), rev], check=True,
                   capture_output=True)
    try:
        yield tree(BEFORE, f"before ({rev})", root)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root)], check=False)
        shutil.rmtree(root.parent, ignore_errors=True)


def check_imports(revision: Revision) -> None:
    """Fail unless engine and every installed engine plugin import from the revision's tree, in the servers' env."""
    code = ("import importlib.metadata, importlib.util, json\n"
            "names = {'engine'} | {e.value.split(':')[0].split('.')[0] for e in "
            "importlib.metadata.entry_points(group='engine')}\n"
            "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in sorted(names)}))")
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **revision.env},
                            capture_output=True, text=True, check=True).stdout
    origins = json.loads(output)
    wrong = {name: origin for name, origin in origins.items()
             if origin is None or not Path(origin).resolve().is_relative_to(revision.root.resolve())}
    if wrong:
        sys.exit(f"{revision.name}: not imported from {revision.root}: {wrong}")
    print(f"{revision.name}: engine from {origins['engine']}; "
          f"{len(origins) - 1} plugins from {revision.root}")


def echo_rows() -> list[Row]:
    in_process = {"ENGINE_ISOLATE": "0"}
    return [
        Row("floor: uvicorn", ""),
        Row("engine --server uvicorn", "p1", ("--server", "uvicorn", *QUIET), in_process, 1, "uvicorn"),
        Row("engine uvicorn --isolate", "p1", ("--server", "uvicorn", *QUIET, "--isolate"), {}, 2, "uvicorn"),
        Row("engine uvicorn P=2", "p2", ("--server", "uvicorn", *QUIET), {}, 3, "uvicorn"),
        Row("floor: Hypercorn", ""),
        Row("engine default settings", "p1", (), {}, None, "hypercorn"),
        Row("engine hypercorn", "p1", ("--server", "hypercorn", *QUIET), in_process, 1, "hypercorn"),
        Row("engine hypercorn --isolate", "p1", ("--server", "hypercorn", *QUIET, "--isolate"), {}, 2, "hypercorn"),
        Row("engine hypercorn P=2", "p2", ("--server", "hypercorn", *QUIET), {}, 3, "hypercorn"),
    ]


def mlp_rows() -> list[Row]:
    onnx = {"ENGINE_ONNX_INTRA_OP_THREADS": "1"}
    in_process = {**onnx, "ENGINE_ISOLATE": "0"}
    return [
        Row("engine hypercorn", "p1", ("--server", "hypercorn", *QUIET), in_process, 1),
        Row("engine hypercorn --isolate", "p1", ("--server", "hypercorn", *QUIET, "--isolate"), onnx, 2),
        Row("engine hypercorn P=2", "p2", ("--server", "hypercorn", *QUIET), onnx, 3),
        Row("engine uvicorn", "p1", ("--server", "uvicorn", *QUIET), in_process, 1),
        Row("engine uvicorn --isolate", "p1", ("--server", "uvicorn", *QUIET, "--isolate"), onnx, 2),
    ]


def cpu_bound_rows() -> list[Row]:
    return [
        Row("engine hypercorn P=1, 2 cores", "p1", ("--server", "hypercorn", *QUIET), {"ENGINE_ISOLATE": "0"}, 1),
        Row("engine hypercorn P=2, 2 cores", "p2", ("--server", "hypercorn", *QUIET), {}, 3),
    ]


def write_projects(root: Path, workload: Workload) -> None:
    """The workload's cortex.yaml projects at processes_per_replica 1 (p1) and 2 (p2), under root."""
    for key, processes in (("p1", 1), ("p2", 2)):
        project = root / f"{workload.name}-{key}"
        project.mkdir()
        if workload.name == "echo":
            shutil.copy(HERE / "echo" / "predictor.py", project)
            predictor = "    type: python\n    path: predictor.py\n"
        elif workload.name == "mlp":
            shutil.copy(HERE / "mlp" / "predictor.py", project)
            predictor = f"    type: onnx\n    path: predictor.py\n    model_path: {root / 'model'}\n"
        else:
            (project / "predictor.py").write_text(CPU_BOUND_PREDICTOR)
            predictor = f"    type: python\n    path: predictor.py\n    config:\n      work: {CPU_BOUND_WORK}\n"
        (project / "cortex.yaml").write_text(f"- name: {workload.name}\n  kind: RealtimeAPI\n  predictor:\n"
                                             f"{predictor}    processes_per_replica: {processes}\n")
        workload.projects[key] = project


def servers(workload: Workload, revisions: list[Revision]) -> list[Server]:
    """Each row's server: a floor once, an engine row once per revision (after first, then before)."""
    found: list[Server] = []
    floor_by_name = {server.name: server for server in floors()}
    for row in workload.rows:
        if not row.project:
            found.append(floor_by_name[row.name])
            continue
        for revision in revisions:
            command = engine_command(workload.projects[row.project], *row.flags)
            if workload.name == "cpu-bound":
                command = ["taskset", "-c", BOTH_CORES, *command]  # widens suite.Server's core 0 to both cores
            found.append(CheckedServer(row.name + revision.label, command, workload.path,
                                       {**row.env, **revision.env}, processes=row.processes, revision=revision))
    return found


def chosen(workload: Workload, only: str | None) -> Workload:
    """The rows whose 'workload: row' name contains one of the comma-separated words of --only."""
    if only:
        words = only.split(",")
        workload.rows = [row for row in workload.rows if any(word in f"{workload.name}: {row.name}" for word in words)]
    return workload


def median(results: dict[tuple[str, int], list[Result]], name: str, connections: int) -> Result | None:
    runs = results.get((name, connections))
    if not runs:
        return None
    return Result(*(statistics.median(getattr(run, f) for run in runs) for f in Result.__dataclass_fields__))


def cell(after: float | None, before: float | None, digits: int = 0, unit: str = "") -> str:
    """'after', or 'before → after (after/before×)' when there is a before."""
    if after is None:
        return ""
    text = f"{after:.{digits}f}{unit}"
    if before is None:
        return text
    return f"{before:.{digits}f}{unit} → {text} ({after / before:.2f}×)"


def print_table(workload: Workload, results: dict[tuple[str, int], list[Result]], has_before: bool) -> None:
    """The issue's table: req/s at each connection count, CPU µs per request at the most, and against the floor."""
    top = max(workload.connections)
    head = [f"c{count} req/s" for count in workload.connections] + [f"server CPU µs per request at c{top}"]
    floors_measured = any(not row.project for row in workload.rows)
    if floors_measured:
        head.append(f"vs floor: req/s c{' / c'.join(map(str, workload.connections))}; CPU µs over the floor")
    print(f"\n{workload.title}" + (" (before → after, after/before)" if has_before else "") + "\n")
    print("| configuration | " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * len(head))
    for row in workload.rows:
        cells = []
        for count in workload.connections:
            after, earlier = median(results, row.name, count), median(results, row.name + BEFORE, count)
            cells.append(cell(after and after.rps, earlier and earlier.rps))
        after, earlier = median(results, row.name, top), median(results, row.name + BEFORE, top)
        cells.append(cell(after and after.cpu_us_per_request, earlier and earlier.cpu_us_per_request))
        if floors_measured:
            cells.append(against_floor(workload, results, row, has_before))
        print(f"| {row.name} | " + " | ".join(cells) + " |")


def against_floor(workload: Workload, results: dict[tuple[str, int], list[Result]], row: Row,
                  has_before: bool) -> str:
    """An engine row's throughput over its server's floor at each connection count, and its CPU µs above it."""
    if not row.server:
        return ""
    top = max(workload.connections)
    parts = []
    for label in ([BEFORE] if has_before else []) + [""]:
        ratios = [throughput_ratio(results, row.name + label, FLOOR_OF[row.server], count)
                  for count in workload.connections]
        extra = cpu_over(results, row.name + label, FLOOR_OF[row.server], top)
        if None in ratios or extra is None:
            parts.append("")
            continue
        parts.append(" / ".join(f"{value:.2f}×" for value in ratios) + f", {extra:+.0f} µs")
    return " → ".join(parts)


def throughput_ratio(results: dict, a: str, b: str, connections: int) -> float | None:
    first, second = median(results, a, connections), median(results, b, connections)
    return first.rps / second.rps if first and second else None


def cpu_over(results: dict, a: str, b: str, connections: int) -> float | None:
    first, second = median(results, a, connections), median(results, b, connections)
    return first.cpu_us_per_request - second.cpu_us_per_request if first and second else None


def goal(results: dict, text: str, a: str, b: str, connections: int, target: str, has_before: bool,
         difference: bool = False) -> None:
    """One line of the goals: a over b (or a - b in CPU µs per request), after, and before → after with --before."""
    measure_of = cpu_over if difference else throughput_ratio
    after = measure_of(results, a, b, connections)
    if after is None:
        return
    earlier = measure_of(results, a + BEFORE, b if ": floor" in b else b + BEFORE, connections) if has_before \
        else None
    shown = (lambda value: f"{value:+.0f} µs") if difference else (lambda value: f"{value:.2f}×")
    value = shown(after) if earlier is None else f"{shown(earlier)} → {shown(after)}"
    print(f"  {text}, c{connections}: {value} (goal {target})")


def goals(results: dict, has_before: bool) -> None:
    """The ratios the issue's goals name."""
    print("\ngoals (after; before → after with --before):")
    for server in ("hypercorn", "uvicorn"):
        for count in (1, 32):
            goal(results, f"P=2 / P=1 echo on one core, {server}", f"echo: engine {server} P=2",
                 f"echo: {P1_NAME[server]}", count, "≥ 0.8×", has_before)
    goal(results, "CPU-bound P=2 / P=1 on two cores (wrk shares core 1)", "cpu-bound: engine hypercorn P=2, 2 cores",
         "cpu-bound: engine hypercorn P=1, 2 cores", 8, "≥ 1.9×", has_before)
    for workload in ("echo", "mlp"):
        for server in ("hypercorn", "uvicorn"):
            for count in (1, 32):
                in_process = P1_NAME[server] if workload == "echo" else f"engine {server}"
                goal(results, f"--isolate / in-process at P=1, {workload}, {server}",
                     f"{workload}: engine {server} --isolate", f"{workload}: {in_process}", count, "≥ 0.9×",
                     has_before)
    for count in (1, 32):
        goal(results, "engine --server uvicorn CPU over the bare uvicorn floor", "echo: engine --server uvicorn",
             "echo: floor: uvicorn", count, "≤ +25 µs", has_before, difference=True)
    for count in (1, 32):
        goal(results, "engine default settings / bare Hypercorn floor", "echo: engine default settings",
             "echo: floor: Hypercorn", count, "≥ 0.9×", has_before)


P1_NAME = {"hypercorn": "engine hypercorn", "uvicorn": "engine --server uvicorn"}


def run(workload: Workload, revisions: list[Revision], args: argparse.Namespace,
        results: dict[tuple[str, int], list[Result]]) -> None:
    """Measure the workload's rows and add its results, named 'workload: row', to results."""
    print(f"\n{workload.title}", flush=True)
    measured = measure(servers(workload, revisions), workload.body, workload.connections, args.duration, args.rounds)
    print_table(workload, measured, len(revisions) > 1)
    for (name, count), runs in measured.items():
        results[(f"{workload.name}: {name}", count)] = runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="also run every engine row from a git worktree of REV "
                        "(e.g. the commit before the changes measured)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each configuration is measured (default 2)")
    parser.add_argument("--only", metavar="WORDS", help="only the rows whose 'workload: row' name contains one of "
                        "these comma-separated words (workloads: echo, mlp, cpu-bound; e.g. 'echo: floor,P=2')")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if not {0, int(LOAD_CORE)} <= os.sched_getaffinity(0):
        sys.exit("cores 0 and 1 are needed: one for the server, one for wrk")
    workloads = [
        Workload("echo", "echo: {\"x\": [16 floats]} -> {\"y\": sum}, server on core 0, wrk on core 1", ECHO_BODY,
                 "/echo", [1, 32], echo_rows()),
        Workload("mlp", "heavy MLP 1024 -> 4096 -> 4096 -> 10 (onnx predictor, 1 onnxruntime thread), server on "
                 "core 0, wrk on core 1", MLP_BODY, "/mlp", [1, 32], mlp_rows()),
        Workload("cpu-bound", f"CPU-bound Python predictor ({CPU_BOUND_WORK} loop iterations per request), server on "
                 "both cores, wrk on core 1 (sharing it)", CPU_BOUND_BODY, "/cpu-bound", [8], cpu_bound_rows()),
    ]
    workloads = [workload for workload in (chosen(w, args.only) for w in workloads) if workload.rows]
    if not workloads:
        sys.exit(f"--only {args.only}: no row matches")
    results: dict[tuple[str, int], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="engine-cost-") as temporary, \
            (before(args.before) if args.before else _nothing()) as earlier:
        root = Path(temporary)
        revisions = [tree("", "after (this working tree)", REPO)] + ([earlier] if earlier else [])
        for revision in revisions:
            check_imports(revision)
        if any(workload.name == "mlp" for workload in workloads):
            (root / "model").mkdir()
            subprocess.run([sys.executable, str(HERE / "mlp" / "make_model.py"), str(root / "model" / "mlp.onnx")],
                           check=True)
        for workload in workloads:
            write_projects(root, workload)
            run(workload, revisions, args, results)
    goals(results, bool(args.before))


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
