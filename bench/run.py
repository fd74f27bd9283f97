"""ketamine-cds benchmark (issues 6 and 15): one command, a markdown table, JSON results.

    .venv/bin/python bench/run.py            # full run, about 6-7 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # about 2 minutes: fewer runs, shorter loads
    .venv/bin/python bench/run.py --only inprocess --workloads S,M

Prints markdown tables (in-process, per stage, growth with record size, HTTP, cold start,
memory, FHIR fetch, targets) and writes ``bench/results/<UTC time>.json`` (+ ``.md``) and
``bench/results/latest.json``. Needs the Synthea samples (``../shared/fhir-r4-samples`` or
``KCDS_BENCH_SAMPLES``) and, for the HTTP figures, ``wrk`` (``apt-get install wrk``).
Run it on an otherwise idle machine: the load average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import fetch  # noqa: E402
import inprocess  # noqa: E402
import loadtest  # noqa: E402
import machine  # noqa: E402
import orjson  # noqa: E402
import workloads  # noqa: E402

RESULTS = HERE / "results"
SECTIONS = ("inprocess", "http", "fetch")


# -- the machine ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import gunicorn

    return {**machine.describe(), "orjson": orjson.__version__, "gunicorn": gunicorn.__version__}


# -- targets (issues 6 and 15) ---------------------------------------------------------------------


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: what was measured, met or not, and the factor to the limit."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, limit: float, unit: str, higher: bool = False):
        if measured is None:
            out.append({"target": name, "measured": None, "limit": limit, "met": None})
            return
        met = measured >= limit if higher else measured <= limit
        factor = (limit / measured if higher else measured / limit) if measured else 0.0
        out.append(
            {
                "target": name,
                "measured": measured,
                "limit": limit,
                "unit": unit,
                "met": met,
                "factor": factor,  # > 1: missed by this factor
            }
        )

    inproc = {r["workload"]: r for r in results.get("inprocess", []) if "error" not in r}
    if "S" in inproc:
        add("in-process S median ≤ 2 ms", inproc["S"]["median_ms"], 2.0, "ms")
    for name, limit in (("M", 2.0), ("L", 2.0), ("XL", 3.0)):
        if name in inproc:
            add(
                f"in-process {name} ≤ {limit:g}× orjson.loads",
                inproc[name]["ratio"],
                limit,
                "×",
            )
    series = [r for r in results.get("inprocess", []) if r["workload"].startswith("obs-")]
    series = [r for r in series if "error" not in r]
    for a, b in itertools.pairwise(series):
        growth = b["median_ms"] / a["median_ms"]
        data = b["resources"] / a["resources"]
        add(f"linear: {a['workload']}→{b['workload']} time ≤ data ×{data:.1f}", growth, data, "×")

    http = results.get("http", {})
    load = {(r["workload"], r["connections"]): r for r in http.get("load", []) if "error" not in r}
    floor = {(r["workload"], r["connections"]): r for r in http.get("floor", [])}
    for name, limit in (("M", 3.0), ("L", 2.5)):  # issue 15
        if (name, 1) in load and (name, 1) in floor:
            add(
                f"HTTP {name} p50 ≤ {limit:g}× the floor's (1 connection)",
                load[(name, 1)]["p50_ms"] / floor[(name, 1)]["p50_ms"],
                limit,
                "×",
            )
    if ("S", 8) in load:
        s8 = load[("S", 8)]
        add("HTTP S c=8 ≥ 1,600 req/s (2 workers)", s8["rps"], 1600.0, "req/s", higher=True)
        add("HTTP S c=8 p99 ≤ 15 ms", s8["p99_ms"], 15.0, "ms")
        if "S" in inproc and s8.get("server_cores"):
            add(
                f"service CPU per S request over HTTP ≤ in-process "
                f"({inproc['S']['median_ms']:.2f} ms) + 0.5 ms",
                _cpu_per_request(s8),
                inproc["S"]["median_ms"] + 0.5,
                "ms",
            )
    cold = http.get("cold") or []
    if cold:
        add("cold first request ≤ 250 ms (worst)", max(c["first_ms"] for c in cold), 250.0, "ms")
    rss = [
        v
        for label, per in http.get("rss_mb", {}).items()
        if label != "master" and isinstance(per, dict)
        for v in per.values()
        if v
    ]
    if rss:
        add("RSS per worker ≤ 150 MB (max seen)", max(rss), 150.0, "MB")
    for f in results.get("fetch", []):
        if "error" not in f:
            add(
                f"FHIR fetch {f['workload']}: 8 keys ≤ 1.5 × one round trip "
                f"({f['round_trip_ms']:.1f} ms)",
                f["fetch_median_ms"],
                1.5 * f["round_trip_ms"],
                "ms",
            )
    return out


def _cpu_per_request(row: dict[str, Any]) -> float | None:
    """CPU ms the gunicorn processes used per request in one wrk row."""
    if not row.get("server_cores") or not row["rps"]:
        return None
    return row["server_cores"] * 1000 / row["rps"]


# -- tables --------------------------------------------------------------------------------


def _kb(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1024:,.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _unparsed(r: dict[str, Any]) -> float:
    """Median ms of every stage but the JSON parse (the service's own work)."""
    return r["stages_sum_ms"] - r["stages_ms"].get("parse", 0.0)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['nproc']} × {m['cpu']}, Python {m['python']}, orjson {m['orjson']}, "
        f"gunicorn {m['gunicorn']}; load average at start {m['loadavg_start'][0]:.2f}"
        + (f", at end {m['loadavg_end'][0]:.2f}" if m.get("loadavg_end") else "")
        + f"; {results['mode']} run, {results['started']}. Speed index (ms for a fixed "
        "Python loop; lower is faster; it grows when other work shares the CPU): "
        + ", ".join(
            [
                f"{_f(m.get('calibration_ms_start'), 1)} at start",
                *(
                    f"{_f(q['calibration_ms'], 1)} before {what}"
                    for what, q in results.get("quiet", {}).items()
                ),
                f"{_f(m.get('calibration_ms_end'), 1)} at end.",
            ]
        ),
        "",
    ]
    inproc = results.get("inprocess")
    if inproc:
        lines += [
            "**In-process** (request bytes → response bytes: orjson parse, validation, "
            "prefetch, record, rules, cards, serialise; ratio = median ÷ median "
            "`orjson.loads` of the same bytes, same run)",
            "",
            "| workload | request (source) | resources | cards | runs | median ms | p99 ms "
            "| orjson.loads ms | ratio | others' CPU | speed index |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in inproc:
            if "error" in r:
                lines.append(
                    f"| {r['workload']} | {_kb(r['request_bytes'])} | error: "
                    f"{r['error'][:120]} ||||||"
                )
                continue
            source = f" ({_kb(r['source_bytes'])})" if r.get("source_bytes") else ""
            lines.append(
                f"| {r['workload']} | {_kb(r['request_bytes'])}{source} | {r['resources']:,} "
                f"| {r['cards']} | {r['runs']:,} | {_f(r['median_ms'])} | {_f(r['p99_ms'])} "
                f"| {_f(r['loads_median_ms'])} | {_f(r['ratio'], 1)}× "
                f"| {_f(r.get('other_cores'))} | {_f(r.get('speed_index_ms'), 1)} |"
            )
        lines += [
            "",
            "**Time per stage** (median ms, stage functions called directly)",
            "",
            "| workload | " + " | ".join(inprocess.STAGES) + " | sum |",
            "|---|" + "--:|" * (len(inprocess.STAGES) + 1),
        ]
        for r in inproc:
            if "error" in r:
                continue
            stages = r["stages_ms"]
            warn = "" if r.get("stage_mirror_ok", True) else " ⚠ mirror differs from handle()"
            lines.append(
                f"| {r['workload']}{warn} | "
                + " | ".join(_f(stages.get(s), 3) for s in inprocess.STAGES)
                + f" | {_f(r['stages_sum_ms'], 2)} |"
            )
        series = [r for r in inproc if r["workload"].startswith("obs-") and "error" not in r]
        if len(series) > 1:
            lines += [
                "",
                "**Growth with record size** (observations; × = ratio to the previous row; "
                "the parse itself grows faster than the data: memory and garbage collection)",
                "",
                "| workload | resources | median ms | × time | × data | × time without the parse "
                "| ratio to orjson |",
                "|---|--:|--:|--:|--:|--:|--:|",
            ]
            prev = None
            for r in series:
                grow = f"{r['median_ms'] / prev['median_ms']:.1f}" if prev else "–"
                data = f"{r['resources'] / prev['resources']:.1f}" if prev else "–"
                own = f"{_unparsed(r) / _unparsed(prev):.1f}" if prev else "–"
                lines.append(
                    f"| {r['workload']} | {r['resources']:,} | {_f(r['median_ms'])} | {grow} "
                    f"| {data} | {own} | {_f(r['ratio'], 1)}× |"
                )
                prev = r
    http = results.get("http")
    if http and http.get("load"):
        lines += [
            "",
            f"**HTTP** (gunicorn, {http['settings']['KCDS_WORKERS']} "
            f"{http['settings'].get('effective', {}).get('worker_class', '')} workers × "
            f"{http['settings']['KCDS_THREADS']} threads, {http['settings']['config']}"
            + (
                f" with {http['settings']['extra environment']}"
                if http["settings"].get("extra environment")
                else ""
            )
            + f", loopback; wrk -t1, {results['http_seconds']:g} s per row; CPU in cores: "
            "the service (master + workers), wrk, and other processes on the machine; "
            "CPU ms/req = service CPU per request (floor CPU ms/req: the floor's); "
            "workers' shares: how that CPU fell on the workers; the floor is "
            "`bench/floor.py`, a bare WSGI app that reads and parses the body, under the same "
            "gunicorn settings, measured right after each row)",
            "",
            "| workload | concurrency | req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
            "| service CPU | CPU ms/req | workers' shares | floor req/s | floor p50 ms "
            "| p50 × floor | floor CPU ms/req | wrk CPU | others' CPU | speed index |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        floors = {(f["workload"], f["connections"]): f for f in http.get("floor", [])}
        for r in http["load"]:
            if "error" in r:
                lines.append(f"| {r['workload']} | error: {r['error'][:120]} ||||||||||||")
                continue
            f = floors.get((r["workload"], r["connections"]))
            floor_cells = (
                f"{f['rps']:,.0f} | {_f(f['p50_ms'])} | {r['p50_ms'] / f['p50_ms']:.1f}× "
                f"| {_f(_cpu_per_request(f))}"
                if f
                else "– | – | – | –"
            )
            lines.append(
                f"| {r['workload']} | {r['connections']} | {r['rps']:,.0f} | {_f(r['p50_ms'])} "
                f"| {_f(r['p90_ms'])} | {_f(r['p99_ms'])} | {_f(r['max_ms'])} | {r['errors']} "
                f"| {_f(r.get('server_cores'))} | {_f(_cpu_per_request(r))} "
                f"| {' / '.join(f'{x:.0%}' for x in r.get('worker_shares') or ())} "
                f"| {floor_cells} "
                f"| {_f(r.get('wrk_cores'))} | {_f(r.get('other_cores'))} "
                f"| {_f(r.get('speed_index_ms'), 1)} |"
            )
        if http.get("workers_booted", 0) > int(http["settings"]["KCDS_WORKERS"]):
            lines.append(
                f"\n{http['workers_booted']} workers booted in all: some were recycled "
                "(KCDS_MAX_REQUESTS) or restarted during the load."
            )
    extra = []
    if http and http.get("cold"):
        cold = http["cold"]
        extra.append(
            f"| cold first request ({cold[0]['workload']}, fresh worker, {len(cold)} starts) "
            f"| worst {max(c['first_ms'] for c in cold):.0f} ms, median "
            f"{statistics.median(c['first_ms'] for c in cold):.0f} ms (second request "
            f"{statistics.median(c['second_ms'] for c in cold):.1f} ms) |"
        )
    if http and http.get("rss_mb"):
        for label, per in http["rss_mb"].items():
            if isinstance(per, dict):
                values = ", ".join(f"{v:.0f}" for v in per.values() if v)
                extra.append(f"| RSS per worker, {label} | {values} MB |")
            elif per:
                extra.append(f"| RSS of the gunicorn master | {per:.0f} MB |")
    for f in results.get("fetch", []):
        if "error" in f:
            extra.append(f"| FHIR fetch {f['workload']} | error: {f['error'][:120]} |")
            continue
        extra.append(
            f"| FHIR fetch {f['workload']}, no prefetch, {f['delay_ms']:.0f} ms per response "
            f"| {f['keys']} keys in {f['fetch_median_ms']:.1f} ms "
            f"({f['fetch_over_delay']:.2f}× the delay; one round trip "
            f"{f['round_trip_ms']:.1f} ms; one after another ≈ "
            f"{f['sequential_estimate_ms']:.0f} ms); whole request {f['total_median_ms']:.1f} ms |"
        )
    if extra:
        lines += ["", "| measure | result |", "|---|---|", *extra]
    targets = results.get("targets")
    if targets:
        lines += ["", "**Targets**", "", "| target | measured | met |", "|---|--:|---|"]
        for t in targets:
            if t["met"] is None:
                lines.append(f"| {t['target']} | – | not measured |")
                continue
            verdict = "yes" if t["met"] else f"**no** ({t['factor']:.2f}× the limit)"
            lines.append(f"| {t['target']} | {_f(t['measured'], 1)} {t['unit']} | {verdict} |")
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter loads")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {SECTIONS}"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(workloads.all_names()),
        help="in-process workloads, comma-separated (default: all)",
    )
    parser.add_argument("--http-seconds", type=float, help="seconds per wrk run (10; quick 3)")
    parser.add_argument(
        "--http-env",
        action="append",
        default=[],
        metavar="KCDS_X=VALUE",
        help="extra environment for gunicorn, to try a setting (repeatable)",
    )
    parser.add_argument(
        "--http-config",
        default=loadtest.CONFIG,
        help="gunicorn --config for the HTTP figures (default: the production settings)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=20.0,
        help="seconds to wait, at most, for other processes to leave the CPU before each "
        "section (a fifth of it before each wrk run; 0: do not wait)",
    )
    parser.add_argument("--samples", type=Path, default=workloads.SAMPLES)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)

    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    names = {n.strip() for n in args.workloads.split(",") if n.strip()}
    quick = args.quick
    http_env = dict(item.split("=", 1) for item in args.http_env)
    http_seconds = args.http_seconds or (3.0 if quick else 10.0)
    args.out.mkdir(parents=True, exist_ok=True)

    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "mode": ("quick" if quick else "full")
        + ("" if sections == set(SECTIONS) else f" ({', '.join(sorted(sections))} only)"),
        "machine": machine_info(),
        "http_seconds": http_seconds,
    }
    results["machine"]["calibration_ms_start"] = machine.calibrate()
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr)  # noqa: E731

    log("building workloads")
    needed = set(names)
    if "http" in sections:
        needed |= {"S", "M", "L"}
    if "fetch" in sections:
        needed |= {"S", "M"}
    built = {w.name: w for w in workloads.build(args.samples, needed)}

    bench = inprocess.Bench()

    def settle(what: str) -> None:
        if args.max_wait:
            seen = machine.wait_quiet(args.max_wait)
            seen["calibration_ms"] = machine.calibrate()
            results.setdefault("quiet", {})[what] = seen
            if seen["waited_s"] > 1.5:
                log(
                    f"waited {seen['waited_s']:.0f} s for a quiet machine "
                    f"(others now {seen['other_cores']:.2f} cores)"
                )

    if "inprocess" in sections:
        settle("inprocess")
        results["inprocess"] = []
        for name in workloads.all_names():
            if name not in names or name not in built:
                continue
            w = built[name]
            budget = (0.6 if quick else 3.0) * (2 if name in ("XL", "obs-10000") else 1)
            log(f"in-process {name} ({len(w.raw):,} bytes)")
            results["inprocess"].append(
                inprocess.measure(bench, w, budget, min_runs=10 if quick else 30)
            )
    if "fetch" in sections:
        results["fetch"] = []
        settle("fetch")
        for name in ("S", "M"):
            log(f"FHIR fetch {name}")
            results["fetch"].append(fetch.measure(bench, built[name], 8 if quick else 30))
    if "http" in sections:
        if not loadtest.wrk_available():
            log("wrk not found (apt-get install wrk): skipping the HTTP figures")
            results["http"] = {"error": "wrk not installed"}
        else:
            settle("http")
            log(f"HTTP: gunicorn + wrk, {http_seconds:g} s per run")
            results["http"] = loadtest.run(
                [built[n] for n in ("S", "M", "L") if n in built],
                args.out,
                http_seconds,
                cold_starts=1 if quick else 3,
                cold_workload=built["S"],
                env=http_env,
                max_wait=args.max_wait / 5,
                config=args.http_config,
            )
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["calibration_ms_end"] = machine.calibrate()
    results["targets"] = check_targets(results)
    results["seconds"] = time.perf_counter() - t0
    log(f"done in {results['seconds']:.0f} s")

    table = markdown(results)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    data = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    (args.out / f"{stamp}.json").write_bytes(data)
    (args.out / "latest.json").write_bytes(data)
    (args.out / f"{stamp}.md").write_text(table, "utf-8")
    print(table)
    print(f"results: {args.out / (stamp + '.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
