"""A TrafficSplitter's cost: a splitter in front of two echo APIs against calling one of them directly, and with a
shadow API mirroring 10% and 100% of the requests, side by side in one run.

    .venv/bin/python benchmarks/splitter.py [--duration 10] [--rounds 2] [--server hypercorn]

One project, served by one `engine serve` (access log off: the same for every path) on core 0, wrk on core 1
(benchmarks/suite.py's helpers): the echo API `echo-a` called directly; the splitter `one` (echo-a 100, echo-b 0:
the routing's own cost, the same predictor doing the same work); the splitter `split` (echo-a 50, echo-b 50: two
APIs, so two predict threads where echo-a alone has one); the splitters `mirror10` and `mirror100` (echo-a 100,
echo-b the shadow at 10% and 100%). At 1 and 32 connections; then the goals: through a splitter ≥ 0.95× the direct
throughput and p99 ≤ 1.1× (`one`), and with a shadow the primary's p99 ≤ 1.1× (the shadow's echo runs on the same
core: at 100% each request costs two predicts' CPU, which throughput at 32 connections shows).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from suite import ECHO_BODY, HERE, Server, best, engine_command, measure, table

CONNECTIONS = [1, 32]
CONFIG = """
- name: echo-a
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
- name: echo-b
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
- name: one
  kind: TrafficSplitter
  apis: [{name: echo-a, weight: 100}, {name: echo-b, weight: 0}]
- name: split
  kind: TrafficSplitter
  apis: [{name: echo-a, weight: 50}, {name: echo-b, weight: 50}]
- name: mirror10
  kind: TrafficSplitter
  apis: [{name: echo-a, weight: 100}, {name: echo-b, weight: 10, shadow: true}]
- name: mirror100
  kind: TrafficSplitter
  apis: [{name: echo-a, weight: 100}, {name: echo-b, weight: 100, shadow: true}]
"""
PATHS = {"direct /echo-a": "/echo-a", "splitter 100/0": "/one", "splitter 50/50": "/split", "shadow 10%": "/mirror10",
         "shadow 100%": "/mirror100"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each path is measured (default 2)")
    parser.add_argument("--server", default="hypercorn", help="engine's HTTP server (default hypercorn)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    project = Path(tempfile.mkdtemp(prefix="engine-splitter-bench-"))
    try:
        shutil.copy(HERE / "echo" / "predictor.py", project / "predictor.py")
        (project / "cortex.yaml").write_text(CONFIG)
        command = engine_command(project, "--server", args.server, "--log-level", "warning")
        servers = [Server(name, command, path) for name, path in PATHS.items()]
        print(f"echo workload through a TrafficSplitter, engine on {args.server}, server on one core")
        results = measure(servers, ECHO_BODY, CONNECTIONS, args.duration, args.rounds)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    table(results)
    direct = "direct /echo-a"
    print("\nratios against calling echo-a directly:")
    for count in CONNECTIONS:
        base = best(results, direct, count)
        for name, goals in (("splitter 100/0", (">= 0.95x", "<= 1.1x")), ("splitter 50/50", ("", "")),
                            ("shadow 10%", ("", "<= 1.1x")), ("shadow 100%", ("", "<= 1.1x"))):
            run = best(results, name, count)
            throughput = f" (goal {goals[0]})" if goals[0] else ""
            p99 = f" (goal {goals[1]})" if goals[1] else ""
            print(f"  c={count:<3} {name:<15} throughput {run.rps / base.rps:.2f}x{throughput}, "
                  f"p99 {run.p99_ms / base.p99_ms:.2f}x{p99}, "
                  f"CPU/request {run.cpu_us_per_request / base.cpu_us_per_request:.2f}x")


if __name__ == "__main__":
    main()
