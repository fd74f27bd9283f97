"""Where a hook call's CPU goes over HTTP: a gunicorn worker under wrk, per part of the path.

    .venv/bin/python bench/attribute.py                    # S, 1 worker, 8 connections, 10 s
    .venv/bin/python bench/attribute.py --workload M --seconds 15
    .venv/bin/python bench/attribute.py --env KCDS_THREADS=1   # the sync worker
    .venv/bin/python bench/attribute.py --py-spy           # plus py-spy's top functions

gunicorn runs the production settings (``service/web/gunicorn_conf.py``) with the CPU
accounting of ``bench/cpu_account.py`` installed in the worker (``bench/attribute_conf.py``),
one worker by default so that all the load reaches the process that is measured. The table
is CPU milliseconds per request (thread CPU time, so a busy machine stretches it little),
beside the in-process figure for the same request (``orjson.loads`` → ``handle`` →
``orjson.dumps``, the path of ``bench/run.py``), so that what HTTP adds is the difference.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import cpu_account  # noqa: E402
import inprocess  # noqa: E402
import loadtest  # noqa: E402
import orjson  # noqa: E402
import workloads  # noqa: E402

CONFIG = str(HERE / "attribute_conf.py")
#: the worker's threads that answer requests: the sync worker's only thread, or gthread's
#: loop and its pool (the first ThreadPoolExecutor the worker creates)
REQUEST_THREADS = ("MainThread", "ThreadPoolExecutor-0")
#: py-spy frames ("function (path/file.py:line)", paths relative to sys.path) → the part of
#: the request path they belong to; the first match from the innermost frame outwards decides
SPY_PARTS = (
    ("(service/registry/", "registry"),
    ("(sqlite3/", "registry"),
    ("(sqlalchemy/", "registry"),
    ("(prometheus_client/", "metrics"),
    ("(service/web/metrics.py", "metrics"),
    ("(logging/", "logging"),
    ("(service/web/logs.py", "logging"),
    ("(cds_hooks/validation.py", "validation"),
    ("(jsonschema", "validation"),
    ("(referencing/", "validation"),
    ("(cds_hooks/auth.py", "auth"),
    ("(service/engine/", "engine"),
    ("(fhir/resources/", "engine"),
    ("(pydantic", "engine"),
    ("(cds_hooks/", "cds_hooks"),
    ("(flask/", "Flask/Werkzeug"),
    ("(werkzeug/", "Flask/Werkzeug"),
    ("(gunicorn/", "gunicorn"),
    ("(concurrent/futures/", "gunicorn"),
    ("(selectors.py", "gunicorn"),
    ("(socket.py", "gunicorn"),
    ("(threading.py", "gunicorn"),
)


def in_process_ms(workload: Any, seconds: float = 3.0) -> dict[str, float]:
    """CPU ms (process time) of the in-process path for the same request: median of batches."""
    bench = inprocess.Bench()
    for _ in range(20):
        bench.call(workload.service_id, workload.raw)
    per_call: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(per_call) < 5:
        started, n = time.process_time(), 0
        batch_end = time.perf_counter() + 0.2
        while time.perf_counter() < batch_end:
            bench.call(workload.service_id, workload.raw)
            n += 1
        per_call.append((time.process_time() - started) / n * 1000)
    return {"median_ms": statistics.median(per_call), "batches": len(per_call)}


def auth_ms(calls: int = 300) -> dict[str, float]:
    """CPU ms of one caller JWT check (``JwtAuthenticator.verify``: signature, claims, replay
    cache), by the client's algorithm. wrk sends one body and one header, so the HTTP runs
    have KCDS_AUTH=off (a replayed jti is refused) and this is measured in process."""
    from cds_hooks.auth import JwtAuthenticator, TrustedIssuer
    from tests.auth_helpers import ISSUER, PUBLIC_URL, es384, rs384

    audience = PUBLIC_URL + "/cds-services/ketamine-order-sign"
    out = {}
    for key in (es384(), rs384()):
        check = JwtAuthenticator([TrustedIssuer(ISSUER, jwks={"keys": [key.jwk()]})])
        tokens = [key.token(audience) for _ in range(calls + 20)]
        for token in tokens[:20]:
            check.verify(token, audience)
        started = time.process_time()
        for token in tokens[20:]:
            check.verify(token, audience)
        out[key.alg] = (time.process_time() - started) / calls * 1000
    return out


def _spy_part(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for fragment, part in SPY_PARTS:
            if fragment in frame:
                return part
    return "other"


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "500",
            "--format",
            "raw",
            "--nonblocking",
            "--threads",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def spy_summary(raw: Path, top: int) -> str:
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        parts[_spy_part(stack)] += n
        own[stack.split(";")[-1]] += n
    if not total:
        return "py-spy: no samples"
    lines = [f"py-spy: {total} samples (not idle) in the worker", ""]
    lines += [f"{n / total * 100:6.1f}%  {p}" for p, n in parts.most_common()]
    lines += ["", f"top {top} functions by own time:"]
    lines += [f"{n / total * 100:6.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def attribute(args: argparse.Namespace) -> dict[str, Any]:
    (w,) = workloads.build(names={args.workload})
    env = {**dict(e.split("=", 1) for e in args.env), "KCDS_WORKERS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        body = log_dir / "request.json"
        body.write_bytes(w.raw)
        server, _ = loadtest.start(log_dir, env, CONFIG)
        try:
            path = f"/cds-services/{w.service_id}"
            status, answer, _ = loadtest.request(server.url, "POST", path, w.raw)
            if status != 200:
                raise SystemExit(f"HTTP {status}: {answer[:300]!r}")
            patient = w.body["context"]["patientId"]  # a new patient in every request
            loadtest.wrk(server.url + path, body, args.connections, 2, patient=patient)
            time.sleep(0.5)
            loadtest.request(server.url, "POST", cpu_account.PATH, b"")  # reset
            before = _seen(server)
            spying = None
            if args.py_spy:
                spying = spy(server.workers()[0], args.seconds, log_dir / "spy.txt")
            result = loadtest.measured_wrk(
                server, server.url + path, body, args.connections, args.seconds, patient
            )
            after = _seen(server)
            if spying is not None:
                spying.wait(timeout=60)
                result["py_spy"] = spy_summary(log_dir / "spy.txt", args.top)
        finally:
            server.stop()
    result["workload"] = w.name
    result["env"] = env
    result["worker_class"] = loadtest.effective_config(env, CONFIG).get("worker_class")
    result["in_process"] = in_process_ms(w)
    result["parts"] = parts(before, after)
    result["wrapper_overhead_us"] = cpu_account.overhead_seconds() * 1e6
    result["auth_ms"] = auth_ms()
    return result


def _seen(server: loadtest.Server) -> dict[str, Any]:
    status, data, _ = loadtest.request(server.url, "GET", cpu_account.PATH, None)
    if status != 200:
        raise RuntimeError(f"{cpu_account.PATH}: HTTP {status}")
    return orjson.loads(data)


def parts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU ms per request by part: the wrapped buckets, Flask's remainder, gunicorn's share
    of the request threads, the worker's other threads."""
    buckets = dict(after["buckets"])
    requests = buckets.pop(cpu_account.REQUESTS, 0) or 1
    threads = {
        name: after["threads"].get(name, 0.0) - before["threads"].get(name, 0.0)
        for name in after["threads"]
    }
    process = after["process"] - before["process"]
    in_app = sum(buckets.values())
    request_threads = sum(v for name, v in threads.items() if name in REQUEST_THREADS)
    ms = 1000 / requests
    out = {name: value * ms for name, value in buckets.items()}
    out["gunicorn (HTTP parse, socket I/O, worker loop)"] = max(0.0, request_threads - in_app) * ms
    for name, value in threads.items():
        if name not in REQUEST_THREADS:
            out[f"background thread {name}"] = value * ms
    accounted = sum(out.values())
    out["unaccounted (exited threads, clock granularity)"] = max(0.0, process * ms - accounted)
    return {
        "requests": requests,
        "process_ms": process * ms,
        "ms": out,
        "gc_frozen": after.get("gc_frozen"),
    }


def table(result: dict[str, Any]) -> str:
    p = result["parts"]
    total = p["process_ms"]
    inproc = result["in_process"]["median_ms"]
    lines = [
        f"{result['workload']}: {result['worker_class']} worker, env {result['env']}, "
        f"wrk {result['connections']} connections, {result['rps']:,.0f} req/s, "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"others' CPU {result['other_cores']:.2f} cores; {p['requests']:,.0f} requests in the "
        f"app; {p['gc_frozen']:,} objects frozen (gc.freeze) in the worker",
        "",
        "| part | CPU ms/request | share |",
        "|---|--:|--:|",
    ]
    for name, value in sorted(p["ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {value:.3f} | {value / total * 100:.1f}% |")
    lines += [
        f"| **worker process, all threads** | **{total:.3f}** | 100% |",
        "",
        f"In-process (same request, CPU time): {inproc:.3f} ms; HTTP adds "
        f"{total - inproc:.3f} ms. Each wrapped call costs about "
        f"{result['wrapper_overhead_us']:.1f} µs of the figures above (about 20 per request).",
    ]
    lines.append(
        "Authentication (off here: wrk repeats one token, whose jti the replay check would "
        "refuse) costs, in process, per call: "
        + ", ".join(f"{alg} {ms:.2f} ms" for alg, ms in result["auth_ms"].items())
        + "."
    )
    if result.get("py_spy"):
        lines += ["", "```", result["py_spy"], "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="S", choices=workloads.all_names())
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--env", action="append", default=[], metavar="KCDS_X=VALUE", help="for gunicorn"
    )
    parser.add_argument("--py-spy", action="store_true", help="also sample the worker")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    result = attribute(args)
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
