"""Site policy: thresholds, per-rule switches and local codes, validated at start-up.

The default (``data/policy.yaml``) carries the specification's values. A site supplies its
own file through ``KCDS_POLICY_FILE``; it is merged over the default and validated by
``data/policy.schema.json``. Every evaluation records ``Policy.version``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from .terminology import DATA, load_yaml


class PolicyError(ValueError):
    """The policy file is unusable; the message names every bad key."""


@cache
def schema() -> dict[str, Any]:
    return json.loads(DATA.joinpath("policy.schema.json").read_text("utf-8"))


def problems(document: Any) -> list[str]:
    """Every schema violation of a policy document, each naming its key path."""
    validator = Draft202012Validator(schema())
    out = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        out.append(f"{path}: {error.message}")
    return out


@dataclass(frozen=True)
class Policy:
    version: str
    thresholds: dict[str, Any]
    rules: dict[str, dict[str, Any]]
    rating_scale_loinc: tuple[str, ...]
    extra_codes: dict[str, list[dict[str, Any]]]
    extra_drugs: dict[str, list[str]]

    def __getattr__(self, name: str) -> Any:
        # policy.bp_window_days reads as in the specification
        try:
            return self.__dict__["thresholds"][name]
        except KeyError:
            raise AttributeError(name) from None

    def enabled(self, rule_id: str) -> bool:
        return self.rules.get(rule_id, {}).get("enabled", True)

    def severity(self, rule_id: str, default: str) -> str:
        return self.rules.get(rule_id, {}).get("severity", default)


def merge(default: dict[str, Any], site: dict[str, Any]) -> dict[str, Any]:
    """A site policy over the default: top-level keys replace, thresholds merge one by one."""
    thresholds = site.get("thresholds", {})
    if isinstance(thresholds, dict):
        thresholds = {**default["thresholds"], **thresholds}
    return {**default, **site, "thresholds": thresholds}


def site_problems(default: dict[str, Any], site: dict[str, Any]) -> list[str]:
    """Every problem of a site policy: its own thresholds checked as written (so a bad value
    is named even where the default would fill in), then the document merged over the
    default."""
    found = problems({**default, **site, "thresholds": site.get("thresholds", {})})
    return found + [p for p in problems(merge(default, site)) if p not in found]


def load(path: str | Path | None = None) -> Policy:
    """The default policy, or a site file merged over it; raise PolicyError if invalid."""
    document = load_yaml("policy.yaml")
    if path:
        try:
            site = yaml.safe_load(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy file {path} is not valid YAML/JSON: {exc}") from None
        if not isinstance(site, dict):
            raise PolicyError(f"policy file {path} must hold a mapping at the top level")
        found = site_problems(document, site)
        if found:
            raise PolicyError(f"policy file {path} is invalid: " + "; ".join(found))
        document = merge(document, site)
    found = problems(document)
    if found:
        raise PolicyError("policy is invalid: " + "; ".join(found))
    return Policy(
        version=document["version"],
        thresholds=document["thresholds"],
        rules=document.get("rules") or {},
        rating_scale_loinc=tuple(document.get("rating_scale_loinc") or ()),
        extra_codes=document.get("extra_codes") or {},
        extra_drugs=document.get("extra_drugs") or {},
    )
