"""Where does a workload's time go? Samples the in-process path with py-spy.

    .venv/bin/python bench/profile.py M                 # top functions, own and inclusive
    .venv/bin/python bench/profile.py XL --seconds 15 --top 40
    .venv/bin/python bench/profile.py L --svg bench/results/l.svg   (needs flamegraph.pl: no)

The workload runs in a loop (``orjson.loads`` → ``handle`` → ``orjson.dumps``, the
in-process path of ``run.py``) in a child process that py-spy samples from outside (no
instrumentation overhead, so the shares are the real ones). Only samples inside the timed
call count. Prints the functions with the most own time and with the most inclusive time, as
a share of the whole path. Time spent in C (orjson, regular expressions, ``isinstance`` ...)
is charged to the Python function that called it: ``Bench.call`` own time is orjson.

``pip install py-spy`` (it is in the ``test`` extra). For a gunicorn worker under load:
``py-spy record --pid <worker pid> --duration 10 --format speedscope -o worker.json``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import inprocess  # noqa: E402
import workloads  # noqa: E402

TIMED = "Bench.call ("
FRAME = re.compile(r"^(?P<name>.+?) \((?P<where>[^()]*)\)$")


def loop(name: str, seconds: float) -> None:
    """The profiled child: build the workload, warm up, then call it for ``seconds``."""
    (w,) = workloads.build(names={name})
    bench = inprocess.Bench()
    for _ in range(3):
        bench.call(w.service_id, w.raw)
    runs = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        bench.call(w.service_id, w.raw)
        runs += 1
    print(f"RUNS {runs} {len(w.raw)}", flush=True)


def analyse(raw_file: Path, top: int) -> str:
    """Own and inclusive shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        start = next((i for i, f in enumerate(frames) if f.startswith(TIMED)), None)
        if start is None:
            continue  # set-up, warm-up, the profiler's own threads
        n = int(count)
        total += n
        timed = frames[start:]
        own[timed[-1]] += n
        for frame in set(timed):
            inclusive[frame] += n
    if not total:
        return "no samples inside the timed call"
    out = [f"{total} samples in the timed path", "", f"Top {top} by own time:"]
    out += [f"{n / total * 100:6.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", f"Top {top} by inclusive time:"]
    out += [f"{n / total * 100:6.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="profile one workload in process (py-spy)")
    parser.add_argument("workload", choices=workloads.all_names())
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--keep", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        loop(args.workload, args.seconds)
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        parser.error("py-spy is not installed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw_file = args.keep or Path(tmp) / "stacks.txt"
        cmd = [
            spy,
            "record",
            "--format",
            "raw",
            "--function",
            "--nonblocking",
            "--rate",
            str(args.rate),
            "--output",
            str(raw_file),
            "--",
            sys.executable,
            str(Path(__file__).resolve()),
            args.workload,
            "--seconds",
            str(args.seconds),
            "--loop",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        runs = re.search(r"RUNS (\d+) (\d+)", done.stdout)
        if done.returncode or not raw_file.exists():
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return 1
        if runs:
            n, size = int(runs.group(1)), int(runs.group(2))
            print(
                f"{args.workload}: {size:,} bytes, {n} runs in {args.seconds:g} s "
                f"(≈ {args.seconds / n * 1000:.2f} ms/run while sampled)\n"
            )
        print(analyse(raw_file, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
