"""The service's prefetch (spec §3): one table, read by the hooks (their templates), the
converter (which key a resource goes under) and the tests (the FHIR server double)."""

from __future__ import annotations

from collections.abc import Iterable

PATIENT = "{{context.patientId}}"
OBSERVATION_CODES = "{observation codes}"  # filled with the LOINC codes the rules read

#: prefetch key → (resource type, FHIR query), in template order. Searches by patient only.
PREFETCH: dict[str, tuple[str, str]] = {
    "patient": ("Patient", f"Patient/{PATIENT}"),
    "conditions": ("Condition", f"Condition?patient={PATIENT}"),
    "medicationRequests": ("MedicationRequest", f"MedicationRequest?patient={PATIENT}"),
    "medicationStatements": ("MedicationStatement", f"MedicationStatement?patient={PATIENT}"),
    "medicationAdministrations": (
        "MedicationAdministration",
        f"MedicationAdministration?patient={PATIENT}",
    ),
    "observations": (
        "Observation",
        f"Observation?patient={PATIENT}&code=http://loinc.org|{OBSERVATION_CODES}",
    ),
    "allergies": ("AllergyIntolerance", f"AllergyIntolerance?patient={PATIENT}"),
    "procedures": ("Procedure", f"Procedure?patient={PATIENT}"),
}

#: resource type → the prefetch key whose query returns it
KEY_OF_TYPE = {kind: key for key, (kind, _) in PREFETCH.items()}


def templates(observation_codes: Iterable[str]) -> dict[str, str]:
    """The prefetch templates of the services; observations restricted to the codes read."""
    codes = ",".join(observation_codes)
    return {key: query.replace(OBSERVATION_CODES, codes) for key, (_, query) in PREFETCH.items()}
