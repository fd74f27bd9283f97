"""The benchmark's workloads: real hook requests as the bytes an EHR would POST.

* S   the clean fixture (``clean-iv-ketamine-sign``), a few KB;
* M   the Synthea sample whose file is closest to 0.9 MB (the median patient of SOURCES.md),
      converted to prefetch with an IV ketamine order;
* L   the largest Synthea sample (Fletcher_Hyatt, 3.9 MB);
* XL  every sample merged into one patient's record (``service.tools.convert.one_patient``);
* obs-N  the clean patient with N observations (10 … 10,000), cycled from a Synthea sample's
      observations with fresh ids and dates, to show how the cost grows with record size.

Converted requests carry every observation of the patient (as a server that ignores the
observation search's ``code`` filter would); the other resource types a Synthea file holds
(Encounter, Claim, ExplanationOfBenefit, ...) are not prefetched by the service and drop out,
so a converted request is smaller than its source file. Both sizes are reported.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from service.tools import convert
from service.tools.fixtures import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("KCDS_BENCH_SAMPLES") or ROOT.parent / "shared" / "fhir-r4-samples")
SERVICE = "ketamine-order-sign"
M_TARGET_BYTES = 900_000
OBSERVATION_SERIES = (10, 100, 1_000, 10_000)


@dataclass
class Workload:
    name: str
    description: str
    raw: bytes  # the request body
    service_id: str = SERVICE
    source_bytes: int | None = None  # size of the FHIR file(s) it was converted from
    resources: int = 0  # resources in prefetch
    group: str = "size"  # "size" (S/M/L/XL) or "series" (obs-N)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        return orjson.loads(self.raw)


def _count(body: dict[str, Any]) -> int:
    n = 0
    for value in (body.get("prefetch") or {}).values():
        if isinstance(value, dict):
            n += len(value.get("entry") or ()) if value.get("resourceType") == "Bundle" else 1
    return n


def _order(patient_id: str) -> dict[str, Any]:
    return convert.ketamine_order(35, "iv", 40, patient_id=patient_id)


def sample_files(samples: Path = SAMPLES) -> list[Path]:
    files = sorted(samples.glob("*.json"))
    if not files:
        raise FileNotFoundError(
            f"no Synthea samples in {samples}; set KCDS_BENCH_SAMPLES to their folder"
        )
    return files


def from_files(name: str, description: str, files: list[Path], merge: bool = False) -> Workload:
    resources = convert.resources_from(files)
    patient_id = None
    if merge:
        patient_id = f"bench-{name.lower()}"
        resources = convert.one_patient(resources, patient_id)
    pid = patient_id or next(r["id"] for r in resources if r["resourceType"] == "Patient")
    body = convert.to_hook_request(
        resources, hook="order-sign", orders=[_order(pid)], instance=f"bench-{name}"
    )
    return Workload(
        name,
        description,
        orjson.dumps(body),
        source_bytes=sum(f.stat().st_size for f in files),
        resources=_count(body),
        meta={"files": [f.name for f in files] if len(files) < 4 else len(files)},
    )


def small() -> Workload:
    body, _ = load("clean-iv-ketamine-sign")
    return Workload(
        "S",
        "clean fixture clean-iv-ketamine-sign",
        orjson.dumps(body),
        resources=_count(body),
    )


def observation_series(
    n: int, templates: list[dict[str, Any]], now: datetime | None = None
) -> Workload:
    """The clean fixture's patient with ``n`` observations (its own, then Synthea's)."""
    body, _ = load("clean-iv-ketamine-sign")
    pid = body["context"]["patientId"]
    own = [e["resource"] for e in body["prefetch"]["observations"]["entry"]]
    now = now or datetime.now(UTC)
    observations = []
    for i in range(n):
        o = copy.deepcopy(own[i] if i < len(own) else templates[i % len(templates)])
        if i >= len(own):
            o["id"] = f"bench-obs-{i}"
            o["subject"] = {"reference": f"Patient/{pid}"}
            o.pop("encounter", None)
            o.pop("issued", None)
            when = now - timedelta(hours=6 * i)
            o["effectiveDateTime"] = when.replace(microsecond=0).isoformat()
        observations.append(o)
    body["prefetch"]["observations"] = convert.searchset(observations)
    body["hookInstance"] = f"bench-obs-{n}"
    return Workload(
        f"obs-{n}",
        f"clean patient with {n:,} observations",
        orjson.dumps(body),
        resources=_count(body),
        group="series",
    )


def build(samples: Path = SAMPLES, names: set[str] | None = None) -> list[Workload]:
    """Every workload (or those in ``names``), in table order."""
    files = sample_files(samples)
    by_size = sorted(files, key=lambda f: f.stat().st_size)
    medium = min(files, key=lambda f: abs(f.stat().st_size - M_TARGET_BYTES))
    large = by_size[-1]

    def wanted(name: str) -> bool:
        return names is None or name in names

    out = []
    if wanted("S"):
        out.append(small())
    if wanted("M"):
        out.append(from_files("M", f"{medium.name.split('_')[0]} (closest to 0.9 MB)", [medium]))
    if wanted("L"):
        out.append(from_files("L", f"{large.name.split('_')[0]} (largest sample)", [large]))
    if wanted("XL"):
        out.append(from_files("XL", f"all {len(files)} samples as one patient", files, True))
    series = [n for n in OBSERVATION_SERIES if wanted(f"obs-{n}")]
    if series:
        templates = [
            r for r in convert.resources_from(medium) if r["resourceType"] == "Observation"
        ]
        out.extend(observation_series(n, templates) for n in series)
    return out


def all_names() -> list[str]:
    return ["S", "M", "L", "XL", *(f"obs-{n}" for n in OBSERVATION_SERIES)]
