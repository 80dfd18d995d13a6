"""Online scoring latency: ``driftline serve`` under a fixed request rate, with a champion move in the middle.

Open loop: request i is sent at start + i / rate whether or not earlier ones have returned, and its
latency is counted from that scheduled time (a slow server cannot hide its queue by slowing the
client). A fresh state folder, a real MLflow SQLite registry with two versions of ``credit_default``,
a SQLite store; halfway through, ``Registry.promote`` moves the champion. Afterwards the server is
stopped with SIGTERM and every answered row is checked in the store under the version that answered.

``.venv/bin/python -m bench.serve [--rate 200] [--seconds 30] [--rows 1]``; writes bench/results/serve.md.
The load generator runs on the same machine as the server (2 cores here), so it competes for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "credit_default"


def _setup(home: Path) -> tuple[Any, Any, Any]:
    """Two versions of credit_default in a fresh registry under ``home``; v1 is the champion."""
    os.environ["DRIFTLINE_HOME"] = str(home)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL"):
        os.environ.pop(var, None)
    import mlflow
    import mlflow.sklearn
    import pandas as pd

    from ml import tracking
    from ml.config import load_config
    from ml.registry import Registry
    from ml.settings import get_settings
    from ml.simulator import CreditDefaultSimulator
    from ml.store import Store
    from ml.training import fit_full

    settings = get_settings()
    config = load_config(settings.models_dir / f"{MODEL}.yaml")
    sim = CreditDefaultSimulator(seed=0, rows_per_period=400)
    tracking.client(settings)
    experiment = tracking.ensure_experiment(MODEL)
    registry = Registry(MODEL, Store(settings.store_url), tracking.client(settings))
    for periods in ([0, 1], [2, 3]):
        batches = [sim.batch(p) for p in periods]
        data = pd.concat([b.features.merge(b.labels[["row_id", "label"]], on="row_id") for b in batches])
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.sklearn.log_model(fit_full(config, data), name="model", registered_model_name=MODEL,
                                            serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        version = int(info.registered_model_version)
        registry.set_tags(version, {"data_start": data["ts"].min().isoformat(), "data_end": data["ts"].max().isoformat()})
    registry.promote(1, run_id="bench-v1", actor="bench", reasons=["bench"])
    rows = CreditDefaultSimulator(seed=9, rows_per_period=2000).batch(0).features
    return config, registry, rows.drop(columns=["row_id", "ts"]).to_dict("records")


async def _load(port: int, features: list[dict], *, rate: float, seconds: float, rows: int,
                on_half: Any, connections: int = 32) -> list[dict]:
    """Open-loop load over ``connections`` keep-alive HTTP/1.1 connections written by hand: httpx's
    client costs a few ms of CPU per request, which on a 2-core machine would be measured as server
    latency. Bodies are serialised before the clock starts."""
    total = int(rate * seconds)
    bodies = []
    for i in range(total):
        picked = [{"key": f"b{i}-{j}", **features[(i * rows + j) % len(features)]} for j in range(rows)]
        payload = json.dumps({"rows": picked}).encode()
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        bodies.append((head + payload, [p["key"] for p in picked]))
    results: list[dict] = []
    pending: asyncio.Queue = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                item = await pending.get()
                if item is None:
                    return
                i, scheduled = item
                request, keys = bodies[i]
                try:
                    writer.write(request)
                    status_line = await reader.readline()
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.decode().partition(":")
                        if name.lower() == "content-length":
                            length = int(value)
                    body = json.loads(await reader.readexactly(length))
                    status = int(status_line.split()[1])
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                    status, body = repr(exc), {}
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                results.append({"i": i, "latency": time.perf_counter() - scheduled, "status": status,
                                "version": body.get("version"), "keys": keys, "done": time.perf_counter()})
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter()
    half_task = None
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.put_nowait((i, scheduled))
        if i == total // 2:
            half_task = asyncio.create_task(asyncio.to_thread(on_half))
    for _ in workers:
        pending.put_nowait(None)
    await asyncio.gather(*workers)
    if half_task is not None:
        await half_task
    return results


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_once(workers: int, *, rate: float, seconds: float, rows: int) -> dict[str, Any]:
    """One fresh state folder and server; returns the measurements."""
    home = Path(tempfile.mkdtemp(prefix="driftline-bench-serve-"))
    config, registry, features = _setup(home)
    from driftline.stack import free_port

    port = free_port()
    log_path = home / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "serve", MODEL, "--port", str(port), "--workers", str(workers)],
            cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:  # every worker must be up, not only the first to answer
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
                if healthy and log_path.read_text().count("Application startup complete") >= workers:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        moved: dict[str, float] = {}

        def promote() -> None:
            moved["at"] = time.perf_counter()
            registry.promote(2, run_id="bench-v2", actor="bench", reasons=["bench"])
            moved["done"] = time.perf_counter()

        results = asyncio.run(_load(port, features, rate=rate, seconds=seconds, rows=rows, on_half=promote))
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)

    ok = [r for r in results if r["status"] == 200]
    failed = [r["status"] for r in results if r["status"] != 200]
    if failed:
        print("failures, e.g.:", failed[:5], file=sys.stderr)
    latencies = [r["latency"] * 1000 for r in ok]
    swap_window = (moved["at"] - 1, moved["done"] + 5)  # by scheduled time
    around = [r["latency"] * 1000 for r in ok if swap_window[0] <= r["done"] - r["latency"] <= swap_window[1]]
    outside = [r["latency"] * 1000 for r in ok if not swap_window[0] <= r["done"] - r["latency"] <= swap_window[1]]
    first_v2 = min((r["done"] for r in ok if r["version"] == 2), default=None)
    last_v1 = max((r["done"] for r in ok if r["version"] == 1), default=moved["done"])

    from ml.store import Store

    stored = Store(f"sqlite:///{home / 'store.db'}").load(MODEL, config.feature_names).set_index("row_id")
    answered = {key: r["version"] for r in ok for key in r["keys"]}
    right = sum(1 for key, version in answered.items() if key in stored.index
                and stored.loc[key, "model_version"] == version)
    elapsed = max(r["done"] for r in results) - min(r["done"] - r["latency"] for r in results)
    return {
        "workers": workers, "requests": len(results), "rate": len(results) / elapsed, "failed": len(failed),
        "p50": _pct(latencies, 0.5), "p90": _pct(latencies, 0.9), "p99": _pct(latencies, 0.99),
        "max": max(latencies), "p99_outside": _pct(outside, 0.99) if outside else float("nan"),
        "p99_around": _pct(around, 0.99) if around else float("nan"),
        "first_v2": first_v2 - moved["done"] if first_v2 is not None else None,
        "last_v1": max(0.0, last_v1 - moved["done"]), "right": right, "answered": len(answered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to send (bounded: at most 120)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts to run, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.md"))
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 120.0)
    runs = []
    for w in args.workers.split(","):
        runs.append(run_once(int(w), rate=args.rate, seconds=seconds, rows=args.rows))
        runs[-1]["load"] = os.getloadavg()[0]  # the machine is shared: say how busy it was

    def ms(value: float) -> str:
        return f"{value:.1f} ms"

    lines = [
        "## Online scoring: `driftline serve` latency under load",
        "",
        (f"Open loop at {args.rate:g} requests/s for {seconds:g} s, {args.rows} row(s) per request, SQLite store, "
         "`credit_default` (the demo's LogisticRegression pipeline), the champion moved by `Registry.promote` "
         "halfway through (default 2 s poll). Latency counts from the moment each request was due, so a queue "
         "in the server shows up in it. The load generator (hand-written keep-alive HTTP/1.1 on 32 "
         "connections) runs on the same machine. Command: `.venv/bin/python -m bench.serve --rate "
         f"{args.rate:g} --seconds {seconds:g} --rows {args.rows} --workers {args.workers}`. Machine: "
         f"{platform.machine()}, {os.cpu_count()} cores, shared with other work while this ran, Python "
         f"{platform.python_version()}."),
        "",
        ("| uvicorn workers | requests | achieved rate | failed | p50 | p90 | p99 | max | p99 away from the swap "
         "| p99 from 1 s before the move to 5 s after | move → first answer by v2 | move → last answer by v1 "
         "| rows stored under the answering version | machine load (1 min) after |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        first = "never" if r["first_v2"] is None else f"{r['first_v2']:.2f} s"
        lines.append(
            f"| {r['workers']} | {r['requests']} | {r['rate']:.0f}/s | {r['failed']} | {ms(r['p50'])} | "
            f"{ms(r['p90'])} | {ms(r['p99'])} | {ms(r['max'])} | {ms(r['p99_outside'])} | {ms(r['p99_around'])} | "
            f"{first} | "
            f"{r['last_v1']:.2f} s | {r['right']} / {r['answered']} | {r['load']:.1f} |"
        )
    lines += [
        "",
        ("The swap's delay is at most one poll plus the load of the new version; with several workers each "
         "swaps on its own poll, so for a moment two versions answer (each answer and stored row names its own)."),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(r["failed"] == 0 and r["right"] == r["answered"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
