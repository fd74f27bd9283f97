"""``ketamine-cds request build``: a valid hook request from a patient's FHIR data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import toolkit
from . import render
from .common import InputError, dumps, engine

NDJSON_SUFFIXES = (".json", ".ndjson", ".jsonl")


@click.group()
def request() -> None:
    """Hook requests from your own patient data."""


@request.command("build")
@click.option(
    "--patient",
    "patients",
    multiple=True,
    required=True,
    metavar="BUNDLE.json",
    type=click.Path(exists=True, allow_dash=True),
    help="A FHIR R4 Bundle (Synthea, an EHR export), an NDJSON file, or a folder of them "
    "(a Bulk Data export); repeat for several files; - reads standard input.",
)
@click.option("--patient-id", help="Which patient, when the data holds several.")
@click.option("--ketamine", type=click.FloatRange(min=0), metavar="MG", help="Ketamine dose, mg.")
@click.option(
    "--route",
    type=click.Choice(toolkit.ROUTES),
    help="Ketamine route (default iv).",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0),
    metavar="N",
    help="Ketamine infusion time (default 40 for iv; not stated otherwise).",
)
@click.option(
    "--esketamine", type=click.FloatRange(min=0), metavar="MG", help="Esketamine dose, mg."
)
@click.option(
    "--hook",
    type=click.Choice(toolkit.HOOKS),
    default="order-sign",
    show_default=True,
    help="The hook the request is for (patient-view takes no drug).",
)
@click.option(
    "--all-observations",
    is_flag=True,
    help="Keep every Observation (default: only the LOINC codes the service's search asks "
    "for, as an EHR answering the prefetch template would send).",
)
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write; - is standard output.",
)
def build(
    patients: tuple[str, ...],
    patient_id: str | None,
    ketamine: float | None,
    route: str | None,
    minutes: float | None,
    esketamine: float | None,
    hook: str,
    all_observations: bool,
    output: str,
) -> None:
    """Turn a patient's FHIR data into a valid hook request, with all eight prefetch keys.

    Give the drug and dose: --ketamine MG [--route iv|im|oral|nasal] [--minutes N], or
    --esketamine MG. The request is written as JSON, ready for `ketamine-cds evaluate -`,
    the preview page, or curl.

    \b
    Examples:
      ketamine-cds request build --patient ../shared/fhir-r4-samples/Addie_Tremblay_*.json \\
          --ketamine 35 --minutes 40 -o request.json
      ketamine-cds request build --patient export/ --patient-id 123 --esketamine 56
    """
    if hook == "patient-view":
        if ketamine is not None or esketamine is not None:
            raise click.UsageError(
                "patient-view takes no draft order: drop --ketamine/--esketamine"
            )
        orders = []
    else:
        if (ketamine is None) == (esketamine is None):
            raise click.UsageError("give exactly one of --ketamine MG or --esketamine MG")
        if esketamine is not None and (route or minutes is not None):
            raise click.UsageError("--route and --minutes go with --ketamine only")
        drug, mg = ("ketamine", ketamine) if ketamine is not None else ("esketamine", esketamine)
        orders = [toolkit.draft_order(drug, mg, route, minutes)]
    resources = _read_patient_data(patients)
    codes = None if all_observations else sorted(engine().builder.observation_codes)
    try:
        body = toolkit.build_request(
            resources, hook=hook, orders=orders, patient_id=patient_id, observation_codes=codes
        )
    except toolkit.ToolError as exc:
        raise InputError(str(exc)) from None
    with click.open_file(output, "w", encoding="utf-8") as out:
        out.write(dumps(body) + "\n")
    kept = sum(
        len(v.get("entry") or ()) for v in body["prefetch"].values() if v.get("type") == "searchset"
    )
    service = {"order-sign": "ketamine-order-sign", "order-select": "ketamine-order-select"}.get(
        hook, "ketamine-patient-view"
    )
    click.echo(
        f"{hook} request for Patient/{body['context']['patientId']}: {kept} resources in "
        f"{len(body['prefetch'])} prefetch keys; POST it to /cds-services/{service}",
        err=True,
    )


def _patient_files(patients: tuple[str, ...]) -> list[str]:
    files: list[str] = []
    for item in patients:
        path = Path(item)
        if item != "-" and path.is_dir():
            found = sorted(
                str(p) for p in path.iterdir() if p.is_file() and p.suffix in NDJSON_SUFFIXES
            )
            if not found:
                raise InputError(f"no .json, .ndjson or .jsonl file in {item}")
            files += found
        else:
            files.append(item)
    return files


def _read_patient_data(patients: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every resource of the files, with a progress bar (by size) on a terminal."""
    from ..convert import ConversionError, resources_from

    files = _patient_files(patients)
    sizes = {f: (Path(f).stat().st_size if f != "-" else 0) for f in files}
    resources: list[dict[str, Any]] = []
    with render.progress() as progress:
        task = progress.add_task("reading patient data", total=sum(sizes.values()) or None)
        for f in files:
            progress.update(task, description=f"reading {Path(f).name if f != '-' else 'stdin'}")
            try:
                resources += resources_from(sys.stdin.buffer.read() if f == "-" else f)
            except ConversionError as exc:
                raise InputError(f"{f}: {exc}") from None
            except OSError as exc:
                raise InputError(f"cannot read {f}: {exc.strerror}") from None
            progress.advance(task, sizes[f])
    return resources
