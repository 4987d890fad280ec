"""Server-side batching's two dispatch policies against no batching, side by side in one run.

    .venv/bin/python benchmarks/batching.py [--duration 10] [--rounds 2]

The heavy ONNX MLP (benchmarks/mlp) and a light one (1024 → 16 → 10: HTTP costs more than inference), each served
by engine unbatched, batched with `dispatch: when_free` (the default) and batched with `dispatch: interval`
(Cortex's), max_batch_size 64 and batch_interval 20 ms, at 1, 8 and 64 connections; server on core 0, wrk on
core 1, onnxruntime on one thread. For each batched measurement, the mean batch size formed and the mean time a
request waited for its batch, from engine_batch_size and engine_batch_wait_seconds.
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
    in_process_rows_per_second,
    wrk,
)

CONNECTIONS = (1, 8, 64)
POLICIES = {"unbatched": "", "when_free": "when_free", "interval": "interval"}


def project(root: Path, model_dir: Path, policy: str) -> Path:
    """An onnx API over the model, batched with `policy` (or not)."""
    folder = root / f"{model_dir.name}-{policy or 'unbatched'}"
    folder.mkdir()
    shutil.copy(HERE / "mlp" / "predictor.py", folder)
    batching = (f"    server_side_batching:\n      max_batch_size: 64\n      batch_interval: 20ms\n"
                f"      dispatch: {policy}\n") if policy else ""
    (folder / "cortex.yaml").write_text(f"- name: mlp\n  kind: RealtimeAPI\n  predictor:\n    type: onnx\n"
                                        f"    path: predictor.py\n    model_path: {model_dir}\n{batching}")
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


def run(model_name: str, model_dir: Path, root: Path, args: argparse.Namespace) -> dict[tuple[str, int], tuple]:
    servers = {name: Server(f"{model_name} {name}", engine_command(project(root, model_dir, policy)), "/mlp",
                            {"ENGINE_ONNX_INTRA_OP_THREADS": "1"}) for name, policy in POLICIES.items()}
    results: dict[tuple[str, int], list] = {}
    for _ in range(args.rounds):
        for name, server in servers.items():
            server.start(MLP_BODY)
            try:
                for count in CONNECTIONS:
                    wrk(server, MLP_BODY, count, min(2.0, args.duration))
                    before = sums(server.url)
                    result = wrk(server, MLP_BODY, count, args.duration)
                    after = sums(server.url)
                    batches = after["engine_batch_size_count"] - before["engine_batch_size_count"]
                    waits = after["engine_batch_wait_seconds_count"] - before["engine_batch_wait_seconds_count"]
                    size = (after["engine_batch_size_sum"] - before["engine_batch_size_sum"]) / batches \
                        if batches else 0.0
                    wait_ms = (after["engine_batch_wait_seconds_sum"] - before["engine_batch_wait_seconds_sum"]) \
                        / waits * 1e3 if waits else 0.0
                    results.setdefault((name, count), []).append((result, size, wait_ms))
                    print(f"  {server.name:<22} c={count:<3} {result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                          f"p99 {result.p99_ms:7.2f} ms  batch {size:5.1f}  wait {wait_ms:6.2f} ms", flush=True)
            finally:
                server.stop()
    print(f"\n{model_name}: {'policy':<10} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'wait ms':>8}")
    medians = {}
    for (name, count), runs in results.items():
        rps, p50, p99 = (statistics.median(getattr(r, f) for r, _, _ in runs) for f in ("rps", "p50_ms", "p99_ms"))
        size, wait = statistics.median(s for _, s, _ in runs), statistics.median(w for _, _, w in runs)
        medians[(name, count)] = (rps, p50)
        print(f"{'':<{len(model_name) + 2}}{name:<10} {count:>5} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} {size:>6.1f} "
              f"{wait:>8.2f}")
    for policy in ("when_free", "interval"):
        for count in CONNECTIONS:
            rps, p50 = medians[(policy, count)]
            base_rps, base_p50 = medians[("unbatched", count)]
            print(f"  {policy} / unbatched at {count}: throughput {rps / base_rps:.2f}x, p50 {p50 / base_p50:.2f}x")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each server is measured (default 2)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="engine-batching-"))
    try:
        for name, flags in (("heavy", []), ("light", ["--light"])):
            model_dir = root / name
            model_dir.mkdir()
            subprocess.run([sys.executable, str(HERE / "mlp" / "make_model.py"), str(model_dir / "mlp.onnx"), *flags],
                           check=True)
            medians = run(name, model_dir, root, args)
            if name == "heavy":
                in_process = in_process_rows_per_second(model_dir / "mlp.onnx", args.duration)
                print(f"  in process (no HTTP): {in_process[32]:.0f} rows/s at batch 32; when_free at 64 / that = "
                      f"{medians[('when_free', 64)][0] / in_process[32]:.2f}x (goal >= 0.6x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
