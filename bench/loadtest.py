"""HTTP figures: the service under gunicorn on loopback, driven by wrk.

gunicorn runs exactly as in production (``--config python:service.web.gunicorn_conf``: workers,
threads, keep-alive and recycling from the ``KCDS_*`` environment, preloaded app) with
``KCDS_AUTH=off``. wrk (Debian package ``wrk``) POSTs one request body with ``post.lua`` from
one thread, so the load generator takes as little as possible of the two cores.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine import Meter, calibrate, process_seconds, wait_quiet

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "python:service.web.gunicorn_conf"  # the production settings
APP = "service.web.wsgi:app"
FLOOR = "bench.floor:app"  # reads and parses the body, nothing else (bench/floor.py)
LUA = Path(__file__).resolve().parent / "post.lua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path
    scratch: tuple[Path, ...] = ()  # registry database and metrics files, removed at stop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        """PIDs of the gunicorn worker processes (children of the master)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            return [int(p) for p in children.read_text().split()]
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def cpu_seconds(self) -> float:
        """CPU seconds of the master, its live workers and the workers it has reaped (so
        that a worker recycled by max_requests during a measurement still counts)."""
        master = process_seconds(self.process.pid, reaped_children=True)
        return master + sum(process_seconds(p) for p in self.workers())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for path in self.scratch:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start(
    log_dir: Path, env: dict[str, str] | None = None, config: str = CONFIG, app: str = APP
) -> tuple[Server, float]:
    """gunicorn with the production settings (or ``config``, to try another) serving ``app``
    (the service, or the floor); returns it and the seconds until it answered."""
    port = free_port()
    log = log_dir / f"gunicorn-{port}.log"
    metrics = log_dir / f"metrics-{port}"  # prometheus multiprocess files, kept with the logs
    metrics.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "KCDS_AUTH": "off",
        "KCDS_DATABASE_URL": f"sqlite:///{log_dir}/bench-{port}.db",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        **(env or {}),
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--config",
            config,
            app,
        ],
        cwd=ROOT,
        env=full_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    # the registry database and the local journal beside it (service.registry.journal_path)
    scratch = (metrics, log_dir / f"bench-{port}.db", log_dir / f"bench-{port}.journal.db")
    server = Server(port, process, log, scratch)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            status, _, _ = request(server.url, "GET", "/health/live", None, timeout=1)
            if status == 200:
                return server, time.perf_counter() - started
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"gunicorn did not start: {log.read_text()[-2000:]}")


def request(
    url: str, method: str, path: str, body: bytes | None, timeout: float = 30
) -> tuple[int, bytes, float]:
    """One request on a new connection: (status, body, seconds from connect to last byte)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - started
    finally:
        conn.close()


def wrk_available() -> str | None:
    return shutil.which("wrk")


def wrk(
    url: str,
    body_file: Path,
    connections: int,
    seconds: float,
    threads: int = 1,
    patient: str | None = None,
) -> dict[str, Any]:
    """One wrk run; requests/s, latency percentiles (ms) and error counts. With ``patient``
    (the body's patient id) every request is about another patient (see ``post.lua``)."""
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body_file),
        *([patient] if patient else []),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    lat = data["latency_us"]
    errors = sum(data["errors"].values())
    return {
        "connections": connections,
        "requests": data["requests"],
        "seconds": data["duration_us"] / 1e6,
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "errors": errors,
        "error_detail": data["errors"],
    }


def measured_wrk(
    server: Server, url: str, body_file: Path, c: int, seconds: float, patient: str | None = None
):
    """wrk, plus the CPU the rest of the machine used meanwhile (busy cores minus gunicorn's
    and wrk's own), and how the load fell on the workers (each one's share of their CPU:
    gthread workers keep a client's connections, so a few connections can all land on one)."""
    speed = calibrate()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    per_worker = {pid: process_seconds(pid) for pid in server.workers()}
    meter = Meter(server.cpu_seconds).start()
    result = wrk(url, body_file, c, seconds, patient=patient)
    seen = meter.stop()
    used = [process_seconds(pid) - before for pid, before in per_worker.items()]
    total = sum(used) or 1.0
    result["worker_shares"] = sorted((u / total for u in used), reverse=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    wrk_cores = wrk_cpu / seen["wall_s"]
    result["speed_index_ms"] = speed
    result["wrk_cores"] = wrk_cores
    result["server_cores"] = seen["own_cores"]
    result["other_cores"] = max(0.0, seen["other_cores"] - wrk_cores)
    return result


def run(
    workloads: list[Any],
    results_dir: Path,
    seconds: float,
    concurrency: tuple[int, ...] = (1, 8, 32),
    cold_starts: int = 3,
    cold_workload: Any | None = None,
    env: dict[str, str] | None = None,
    max_wait: float = 4.0,
    config: str = CONFIG,
    floor: bool = True,
) -> dict[str, Any]:
    """Load per workload and concurrency, on the service and (``floor``) on the floor app
    right after it with the same settings; RSS per worker, and cold first requests."""
    log_dir = results_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("gunicorn-*.log"):  # keep only this run's logs
        old.unlink()
    out: dict[str, Any] = {
        "settings": _settings(env, config),
        "load": [],
        "floor": [],
        "cold": [],
        "rss_mb": {},
    }
    server, boot = start(log_dir, env, config)
    out["boot_seconds"] = boot
    bare = start(log_dir, env, config, FLOOR)[0] if floor else None
    try:
        out["rss_mb"]["idle"] = {str(p): rss_mb(p) for p in server.workers()}
        for w in workloads:
            body_file = results_dir / f"request-{w.name}.json"
            body_file.write_bytes(w.raw)
            path = f"/cds-services/{w.service_id}"
            status, answer, _ = request(server.url, "POST", path, w.raw)
            if status != 200:
                out["load"].append(
                    {"workload": w.name, "error": f"HTTP {status}: {answer[:300].decode()}"}
                )
                continue
            patient = w.body["context"]["patientId"]  # a new patient in every request
            for s in (server, bare) if bare else (server,):
                wrk(s.url + path, body_file, 8, min(2.0, seconds), patient=patient)  # warm up
            for c in concurrency:
                for s, rows in ((server, out["load"]), (bare, out["floor"])):
                    if s is None:
                        continue
                    if max_wait:
                        wait_quiet(max_wait)
                    result = measured_wrk(s, s.url + path, body_file, c, seconds, patient)
                    result["workload"] = w.name
                    result["request_bytes"] = len(w.raw)
                    rows.append(result)
            out["rss_mb"][f"after {w.name}"] = {str(p): rss_mb(p) for p in server.workers()}
        out["rss_mb"]["master"] = rss_mb(server.process.pid)
    finally:
        server.stop()
        if bare is not None:
            bare.stop()
    booted = server.log.read_text("utf-8", errors="replace").count("Booting worker")
    out["workers_booted"] = booted  # more than KCDS_WORKERS: recycled (max_requests) or died
    if cold_workload is not None:
        out["cold"] = cold(log_dir, cold_workload, cold_starts, env, config)
    return out


def cold(
    log_dir: Path,
    workload: Any,
    starts: int,
    env: dict[str, str] | None = None,
    config: str = CONFIG,
) -> list[dict[str, Any]]:
    """First hook request to a freshly started worker, and the second one for comparison.

    One worker (``KCDS_WORKERS=1``) so that the first hook request certainly reaches a
    worker that has answered nothing but the readiness probe (``/health/live``).
    """
    path = f"/cds-services/{workload.service_id}"
    results = []
    for _ in range(starts):
        server, boot = start(log_dir, {**(env or {}), "KCDS_WORKERS": "1"}, config)
        try:
            status1, _, first = request(server.url, "POST", path, workload.raw)
            status2, _, second = request(server.url, "POST", path, workload.raw)
            results.append(
                {
                    "workload": workload.name,
                    "boot_seconds": boot,
                    "first_ms": first * 1000,
                    "second_ms": second * 1000,
                    "status": [status1, status2],
                }
            )
        finally:
            server.stop()
    return results


_CONFIG_PROBE = """
import importlib, json, runpy, sys
spec = sys.argv[1]
if spec.startswith("python:"):
    c = vars(importlib.import_module(spec[len("python:"):]))
else:
    c = runpy.run_path(spec)
names = ("workers", "threads", "worker_class", "keepalive", "max_requests", "preload_app")
print(json.dumps({n: c.get(n) for n in names}))
"""


def effective_config(env: dict[str, str] | None, config: str) -> dict[str, Any]:
    """What gunicorn will run with: the config module evaluated with the same environment."""
    with tempfile.TemporaryDirectory() as metrics:
        done = subprocess.run(
            [sys.executable, "-c", _CONFIG_PROBE, config],
            cwd=ROOT,
            env={
                **os.environ,
                "KCDS_AUTH": "off",
                **(env or {}),
                "PROMETHEUS_MULTIPROC_DIR": metrics,  # the config would create one otherwise
            },
            capture_output=True,
            text=True,
        )
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": done.stderr[-500:]}


def _settings(env: dict[str, str] | None, config: str) -> dict[str, Any]:
    effective = effective_config(env, config)
    return {
        "config": "service/web/gunicorn_conf.py" if config == CONFIG else config,
        "KCDS_WORKERS": str(effective.get("workers")),
        "KCDS_THREADS": str(effective.get("threads")),
        "effective": effective,
        "KCDS_AUTH": "off",
        "extra environment": dict(env or {}),
        "load generator": "wrk -t1 (one thread, keep-alive connections), post.lua",
    }
