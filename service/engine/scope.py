"""What a rule applies to (spec §5 'applies'): which orders, and so which hooks run it."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .orders import DraftOrder

ORDER_HOOKS = ("order-select", "order-sign")
COURSE_HOOKS = ("patient-view",)


class Scope(StrEnum):
    """The specification's 'applies' vocabulary, each with its words and its hooks."""

    description: str
    hooks: tuple[str, ...]

    def __new__(cls, value: str, description: str, hooks: tuple[str, ...]) -> Scope:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        member.hooks = hooks
        return member

    ANY = "any", "every evaluation", ORDER_HOOKS + COURSE_HOOKS
    ALL = "all", "ketamine and esketamine orders", ORDER_HOOKS
    K = "K", "ketamine orders (any route), and esketamine injected IV/IM", ORDER_HOOKS
    KIV = "KIV", "IV ketamine orders (or no route stated), and IV esketamine", ORDER_HOOKS
    E = "E", "esketamine (Spravato) orders", ORDER_HOOKS
    COURSE = "course", "a ketamine/esketamine course on record", COURSE_HOOKS

    def covers(self, order: DraftOrder | None) -> bool:
        """Whether a rule of this scope is about ``order`` (``None``: the course, patient-view)."""
        if order is None:
            return True
        if self is Scope.K:  # ketamine, and esketamine injected (not Spravato: spec §2)
            return not order.spravato
        if self is Scope.KIV:
            return order.is_iv
        if self is Scope.E:  # Spravato
            return order.spravato
        return True
