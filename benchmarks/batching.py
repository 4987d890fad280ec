"""Server-side batching's two dispatch policies against no batching, side by side in one run, on both HTTP servers.

    .venv/bin/python benchmarks/batching.py [--duration 10] [--rounds 2] [--light] [--servers hypercorn,uvicorn]

The heavy ONNX MLP (benchmarks/mlp; with --light also a light one, 1024 → 16 → 10, where HTTP costs more than
inference), served by engine on Hypercorn and on uvicorn, unbatched, batched with `dispatch: when_free` (the
default) and with `dispatch: interval` (Cortex's), in Cortex's shape: threads_per_process 32 equal to
max_batch_size 32, batch_interval 20 ms, one batch at a time; at 1, 8 and 64 connections; server on core 0, wrk on
core 1, onnxruntime on one thread. For each batched measurement, the mean batch size formed and the mean time a
request waited for its batch, from engine_batch_size and engine_batch_wait_seconds; then the goals: at 1 connection
when_free ≥ 0.9× unbatched throughput and p50 ≤ 1.2×; at 64, ≥ 5× unbatched and ≥ 0.6× onnxruntime's own rows/s at
batch 32 on the same core.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from suite import (
    HERE,
    MLP_BODY,
    Server,
    engine_command,
    floors,
    in_process_rows_per_second,
    wrk,
)

CONNECTIONS = (1, 8, 64)
POLICIES = {"unbatched": "", "when_free": "when_free", "interval": "interval"}


BATCH = 32  # max_batch_size and threads_per_process, as Cortex required for the python predictor


def project(root: Path, model_dir: Path, policy: str) -> Path:
    """An onnx API over the model in Cortex's shape, batched with `policy` (or not)."""
    folder = root / f"{model_dir.name}-{policy or 'unbatched'}"
    if folder.exists():
        return folder
    folder.mkdir()
    shutil.copy(HERE / "mlp" / "predictor.py", folder)
    batching = (f"    server_side_batching:\n      max_batch_size: {BATCH}\n      batch_interval: 20ms\n"
                f"      dispatch: {policy}\n") if policy else ""
    (folder / "cortex.yaml").write_text(f"- name: mlp\n  kind: RealtimeAPI\n  predictor:\n    type: onnx\n"
                                        f"    path: predictor.py\n    model_path: {model_dir}\n"
                                        f"    threads_per_process: {BATCH}\n{batching}")
    return folder


def sums(url: str) -> dict[str, float]:
    """engine_batch_size and engine_batch_wait_seconds _sum and _count, from /metrics."""
    text = httpx.get(url.rsplit("/", 1)[0] + "/metrics").text
    found = {}
    for name in ("engine_batch_size_sum", "engine_batch_size_count", "engine_batch_wait_seconds_sum",
                 "engine_batch_wait_seconds_count"):
        match = re.search(rf"^{name}{{[^}}]*}} ([\d.e+-]+)$", text, re.MULTILINE)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def run(model_name: str, model_dir: Path, root: Path, http_server: str,
        args: argparse.Namespace) -> dict[tuple[str, int], tuple]:
    servers = {name: Server(f"{model_name} {http_server} {name}",
                            engine_command(project(root, model_dir, policy), "--server", http_server), "/mlp",
                            {"ENGINE_ONNX_INTRA_OP_THREADS": "1"}) for name, policy in POLICIES.items()}
    # The floor: benchmarks/bare_asgi.py batching the same model on the same server, one batch at a time
    bare = {"BARE_ASGI_MODEL": str(model_dir / "mlp.onnx"), "BARE_ASGI_BATCH": str(BATCH)}
    servers["floor"] = next(server for server in floors(bare) if server.name.lower() == f"floor: {http_server}")
    results: dict[tuple[str, int], list] = {}
    for _ in range(args.rounds):
        for name, server in servers.items():
            server.start(MLP_BODY)
            try:
                for count in CONNECTIONS:
                    wrk(server, MLP_BODY, count, min(2.0, args.duration))
                    before = sums(server.url) if name != "floor" else {}
                    result = wrk(server, MLP_BODY, count, args.duration)
                    after = sums(server.url) if name != "floor" else before
                    change = {key: after[key] - before[key] for key in after}
                    batches = change.get("engine_batch_size_count")
                    waits = change.get("engine_batch_wait_seconds_count")
                    size = change["engine_batch_size_sum"] / batches if batches else 0.0
                    wait_ms = change["engine_batch_wait_seconds_sum"] / waits * 1e3 if waits else 0.0
                    results.setdefault((name, count), []).append((result, size, wait_ms))
                    print(f"  {server.name:<32} c={count:<3} {result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                          f"p99 {result.p99_ms:7.2f} ms  batch {size:5.1f}  wait {wait_ms:6.2f} ms", flush=True)
            finally:
                server.stop()
    label = f"{model_name} on {http_server}"
    print(f"\n{label}: {'policy':<10} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'wait ms':>8}")
    medians = {}
    for (name, count), runs in results.items():
        rps, p50, p99 = (statistics.median(getattr(r, f) for r, _, _ in runs) for f in ("rps", "p50_ms", "p99_ms"))
        size, wait = statistics.median(s for _, s, _ in runs), statistics.median(w for _, _, w in runs)
        medians[(name, count)] = (rps, p50)
        print(f"{'':<{len(label) + 2}}{name:<10} {count:>5} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} {size:>6.1f} "
              f"{wait:>8.2f}")
    for policy in ("when_free", "interval"):
        for count in CONNECTIONS:
            rps, p50 = medians[(policy, count)]
            base_rps, base_p50 = medians[("unbatched", count)]
            goal = {1: " (goal: when_free >= 0.9x, p50 <= 1.2x)", 64: " (goal: when_free >= 5x)"}.get(count, "")
            print(f"  {policy} / unbatched at {count}: throughput {rps / base_rps:.2f}x, p50 {p50 / base_p50:.2f}x"
                  f"{goal if policy == 'when_free' else ''}")
    for count in CONNECTIONS:
        print(f"  when_free / the bare batching floor at {count}: "
              f"{medians[('when_free', count)][0] / medians[('floor', count)][0]:.2f}x")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each server is measured (default 2)")
    parser.add_argument("--light", action="store_true", help="the light MLP too")
    parser.add_argument("--servers", default="hypercorn,uvicorn", help="HTTP servers (default hypercorn,uvicorn)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="engine-batching-"))
    try:
        for name, flags in (("heavy", []), ("light", ["--light"]))[:2 if args.light else 1]:
            model_dir = root / name
            model_dir.mkdir()
            subprocess.run([sys.executable, str(HERE / "mlp" / "make_model.py"), str(model_dir / "mlp.onnx"), *flags],
                           check=True)
            found = {server: run(name, model_dir, root, server, args) for server in args.servers.split(",")}
            if name == "heavy":
                in_process = in_process_rows_per_second(model_dir / "mlp.onnx", args.duration)
                print(f"\nin process (no HTTP, one core): {in_process[32]:.0f} rows/s at batch 32")
                for server, medians in found.items():
                    when_free, interval = (medians[(policy, 64)][0] / in_process[32]
                                           for policy in ("when_free", "interval"))
                    print(f"  {server}: when_free at 64 / that = {when_free:.2f}x, interval at 64 / that = "
                          f"{interval:.2f}x (goal: when_free >= 0.6x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
