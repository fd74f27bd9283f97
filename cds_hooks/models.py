"""The CDS Hooks 2.0 response model.

Serialisation follows the spec's rule that optional fields without a value are omitted:
never ``null``, ``""``, ``[]`` or ``{}`` (the only exception is the top-level ``cards``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Indicator = Literal["info", "warning", "critical"]
INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}


def _compact(pairs: dict[str, Any]) -> dict[str, Any]:
    """Drop optional members that have no value, as the spec requires."""
    return {k: v for k, v in pairs.items() if v is not None and v != "" and v != [] and v != {}}


@dataclass(frozen=True, slots=True)
class Coding:
    code: str
    system: str
    display: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact({"code": self.code, "system": self.system, "display": self.display})


@dataclass(frozen=True, slots=True)
class Source:
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            {
                "label": self.label,
                "url": self.url,
                "icon": self.icon,
                "topic": self.topic.to_json() if self.topic else None,
            }
        )


@dataclass(frozen=True, slots=True)
class Action:
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resource_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            {
                "type": self.type,
                "description": self.description,
                "resource": self.resource,
                "resourceId": self.resource_id,
            }
        )


@dataclass(frozen=True, slots=True)
class Suggestion:
    label: str
    uuid: str | None = None
    is_recommended: bool | None = None
    actions: tuple[Action, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return _compact(
            {
                "label": self.label,
                "uuid": self.uuid,
                "isRecommended": self.is_recommended,
                "actions": [a.to_json() for a in self.actions],
            }
        )


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"
    app_context: str | None = None
    autolaunchable: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            {
                "label": self.label,
                "url": self.url,
                "type": self.type,
                "appContext": self.app_context,
                "autolaunchable": self.autolaunchable,
            }
        )


@dataclass(frozen=True, slots=True)
class Card:
    summary: str
    indicator: Indicator
    source: Source
    uuid: str | None = None
    detail: str | None = None
    suggestions: tuple[Suggestion, ...] = ()
    selection_behavior: Literal["at-most-one", "any"] | None = None
    override_reasons: tuple[Coding, ...] = ()
    links: tuple[Link, ...] = ()
    extension: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.summary) >= 140:
            raise ValueError(f"card summary must be under 140 characters: {self.summary!r}")
        if self.suggestions and self.selection_behavior is None:
            raise ValueError("a card with suggestions needs a selectionBehavior")
        if any(not r.display for r in self.override_reasons):
            raise ValueError("every override reason needs a display")

    def to_json(self) -> dict[str, Any]:
        return _compact(
            {
                "uuid": self.uuid,
                "summary": self.summary,
                "detail": self.detail,
                "indicator": self.indicator,
                "source": self.source.to_json(),
                "suggestions": [s.to_json() for s in self.suggestions],
                "selectionBehavior": self.selection_behavior if self.suggestions else None,
                "overrideReasons": [r.to_json() for r in self.override_reasons],
                "links": [link.to_json() for link in self.links],
                "extension": self.extension,
            }
        )


@dataclass(frozen=True, slots=True)
class Response:
    cards: tuple[Card, ...] = ()
    system_actions: tuple[Action, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cards": [c.to_json() for c in self.cards]}
        if self.system_actions:
            body["systemActions"] = [a.to_json() for a in self.system_actions]
        return body
