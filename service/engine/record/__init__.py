"""A typed, indexed view of one patient's FHIR data (ketamine-rules.md §3): the model
(:mod:`.model`), how it is built from prefetch (:mod:`.builder`) and the FHIR value parsing
both use (:mod:`.values`)."""

from .builder import RecordBuilder, ketamine_kind
from .model import (
    Administration,
    BloodPressure,
    Condition,
    Fact,
    Medication,
    MedicationHit,
    MedState,
    Observation,
    PatientRecord,
    PregnancyStatus,
)
from .values import (
    Quantity,
    dose_in_mg,
    medication_concept,
    parse_datetime,
    quantity,
    weight_kg,
)

__all__ = [
    "Administration",
    "BloodPressure",
    "Condition",
    "Fact",
    "MedState",
    "Medication",
    "MedicationHit",
    "Observation",
    "PatientRecord",
    "PregnancyStatus",
    "Quantity",
    "RecordBuilder",
    "dose_in_mg",
    "ketamine_kind",
    "medication_concept",
    "parse_datetime",
    "quantity",
    "weight_kg",
]
