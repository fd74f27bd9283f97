"""The rule catalogue. Importing this package registers every rule module's rules."""

from . import completeness, monitoring  # noqa: F401  (registers their rules)
from .base import COURSE_SCOPES, ORDER_SCOPES, RULES, Evaluation, Finding, evaluate

__all__ = ["COURSE_SCOPES", "ORDER_SCOPES", "RULES", "Evaluation", "Finding", "evaluate"]
