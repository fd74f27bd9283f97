"""The rule catalogue. Importing this package registers every rule module's rules: adding a
rule is one decorated function in the module of its concern."""

from . import (  # noqa: F401  (imported to register their rules)
    completeness,
    contraindications,
    dosing,
    interactions,
    monitoring,
    regimen,
    surveillance,
)
from .base import RULES, Evaluation, Finding, evaluate

__all__ = ["RULES", "Evaluation", "Finding", "evaluate"]
