"""What the snooze lookup (spec §7 v2) costs a hook request, on a filled registry.

A registry is filled with a year of evaluations (``--evaluations`` over ``--patients``; each
with a warning, a critical and an info card, a tenth of the warnings overridden with a snooze
reason and a fifth with another reason), plus one heavy patient with an evaluation every
day for the last 92 days (a twice-weekly course is a third of that). Then the lookup a hook
makes is timed as the hook makes it (``SnoozeIndex.overrides`` through its pool: pseudonym,
query, rows → overrides) for random patients and for the heavy one, and the engine's part
(``snooze.look_up``: the since-date, the call, which snoozes still run) around it.

    .venv/bin/python bench/snooze.py                    # SQLite, and PostgreSQL if it answers
    .venv/bin/python bench/snooze.py --evaluations 1000000 --database sqlite

Prints a markdown table; no test asserts these times.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import insert, text

from service.engine.overrides import catalogue
from service.engine.snooze import look_up
from service.registry import schema
from service.registry.snooze import SnoozeIndex
from service.registry.store import open_store

POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
NOW = datetime.now(UTC)
SYSTEM = catalogue().system
SNOOZES = [s.coding.code for s in catalogue().snooze]
DRUGS = ("ketamine", "esketamine")
HEAVY = "heavy-patient"
CHUNK = 5_000


def rows_for(patient: str, when: datetime, rng: random.Random) -> dict:
    eid = uuid.uuid4().hex
    drug = rng.choice(DRUGS)
    out = {
        schema.evaluation: [
            {
                "id": eid,
                "recorded_at": when,
                "service_id": "ketamine-order-sign",
                "hook": "order-sign",
                "hook_instance": str(uuid.uuid4()),
                "patient_key": patient,
                "policy_version": "bench",
                "service_version": "bench",
            }
        ],
        schema.card: [],
        schema.card_rule: [],
        schema.feedback: [],
    }
    for position, (indicator, rule) in enumerate(
        (
            ("critical", "R09"),
            ("warning", rng.choice(["R20", "R05", "R08", "R21"])),
            ("info", "R38"),
        )
    ):
        card = str(uuid.uuid4())
        out[schema.card].append(
            {
                "card_uuid": card,
                "evaluation_id": eid,
                "position": position,
                "indicator": indicator,
                "drug": drug,
            }
        )
        out[schema.card_rule].append({"card_uuid": card, "position": 0, "rule_id": rule})
        if indicator == "warning" and rng.random() < 0.3:
            snooze = rng.random() < 1 / 3
            out[schema.feedback].append(
                {
                    "received_at": when + timedelta(minutes=2),
                    "service_id": "ketamine-order-sign",
                    "card_uuid": card,
                    "outcome": "overridden",
                    "outcome_time": when + timedelta(minutes=1),
                    "reason_system": SYSTEM,
                    "reason_code": rng.choice(SNOOZES) if snooze else "benefit-outweighs-risk",
                }
            )
    return out


def fill(store, evaluations: int, patients: int, rng: random.Random) -> None:
    tables = (schema.evaluation, schema.card, schema.card_rule, schema.feedback)
    batch: dict = {t: [] for t in tables}

    def flush() -> None:
        def work(conn):
            for table in tables:
                if batch[table]:
                    conn.execute(insert(table), batch[table])

        store.write(work, within=60)
        for table in tables:
            batch[table].clear()

    plan = [
        (f"p{rng.randrange(patients)}", NOW - timedelta(days=rng.uniform(0, 365)))
        for _ in range(evaluations)
    ]
    plan += [(HEAVY, NOW - timedelta(days=d, hours=1)) for d in range(92)]
    for i, (patient, when) in enumerate(plan, 1):
        for table, rows in rows_for(patient, when, rng).items():
            batch[table].extend(rows)
        if i % CHUNK == 0:
            flush()
    flush()


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def row(label: str, ms: list[float]) -> str:
    ordered = sorted(ms)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"| {label} | {len(ms)} | {statistics.median(ms):.3f} | {p(0.95):.3f} | {p(0.99):.3f} |"


def bench(url: str, label: str, args: argparse.Namespace) -> list[str]:
    rng = random.Random(7)
    store = open_store(url)
    started = time.monotonic()
    fill(store, args.evaluations, args.patients, rng)
    with store.engine.connect() as conn:  # the statistics a long-running registry has
        conn.execute(text("ANALYZE"))
        conn.commit()
    filled = time.monotonic() - started
    index = SnoozeIndex(store, lambda patient_id: patient_id, within=10)
    since = NOW - timedelta(days=100)
    warm = [f"p{rng.randrange(args.patients)}" for _ in range(50)]
    for patient in warm:  # connections and the pool up, pages cached
        index.overrides(patient, DRUGS, SYSTEM, SNOOZES, since)
    random_patient = lambda: f"p{rng.randrange(args.patients)}"  # noqa: E731
    lines = [
        f"**{label}**: {args.evaluations:,} evaluations of {args.patients:,} patients "
        f"(+92 of one heavy patient), filled in {filled:.0f} s",
        "",
        "| lookup | n | median ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
        row(
            "registry: a random patient",
            timed(lambda: index.overrides(random_patient(), DRUGS, SYSTEM, SNOOZES, since), args.n),
        ),
        row(
            "registry: the heavy patient",
            timed(lambda: index.overrides(HEAVY, DRUGS, SYSTEM, SNOOZES, since), args.n),
        ),
        row(
            "engine look_up (what a hook adds), random patient",
            timed(lambda: look_up(index, random_patient(), {"esketamine"}, NOW), args.n),
        ),
    ]
    index.close()
    store.engine.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("-n", type=int, default=2_000, help="lookups timed per line")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    out: list[str] = []
    if args.database in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            out += [*bench(f"sqlite:///{tmp}/bench.db", "SQLite", args), ""]
    if args.database in ("postgres", "both"):
        name = f"kcds_bench_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3) as admin:
                admin.execute(f"CREATE DATABASE {name}")
        except psycopg.OperationalError as exc:
            out.append(f"PostgreSQL skipped: {str(exc).strip()}")
        else:
            try:
                out += bench(POSTGRES.rsplit("/", 1)[0] + f"/{name}", "PostgreSQL", args)
            finally:
                with psycopg.connect(POSTGRES, autocommit=True) as admin:
                    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    print("\n".join(out))


if __name__ == "__main__":
    main()
