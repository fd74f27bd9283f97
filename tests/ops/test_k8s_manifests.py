"""The Kubernetes manifests in deploy/kubernetes: valid against the Kubernetes schemas (the
kubernetes-validate package bundles them: no network, no cluster), locked down as the README
says, and consistent with the service (probes, secrets, policy, graceful stop)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.engine import policy
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
#: the oldest Kubernetes still commonly run, and the newest the package knows
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text("utf-8")):
            if doc:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def pod_specs() -> list[dict]:
    deployment = by_kind("Deployment")[0]
    cronjob = by_kind("CronJob")[0]
    return [
        deployment["spec"]["template"]["spec"],
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    kinds = set()
    for name, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name} ({doc['kind']}) on Kubernetes {version}: {exc.message} at {list(exc.path)}"
            )
        kinds.add(doc["kind"])
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "CronJob",
    }


def test_a_broken_manifest_is_caught():
    """The validation is real: a misspelt field and a wrong type are refused."""
    deployment = by_kind("Deployment")[0]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, VERSIONS[-1], strict=True)


def test_kustomization_applies_everything_but_the_example_secret():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text("utf-8"))
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files


def test_pods_run_locked_down():
    for spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
        assert spec["automountServiceAccountToken"] is False
        mounts_needed = {"/tmp"}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"] and "requests" in container["resources"]
            mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts_needed <= set(mounted)
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounted["/tmp"]]


def test_deployment_probes_and_graceful_stop_match_the_service():
    deployment = by_kind("Deployment")[0]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["readinessProbe"]["timeoutSeconds"] > 2  # service.web.health.CHECK_WITHIN
    env = {e["name"]: e for e in container["env"]}
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]["value"]
    assert metrics_dir.startswith("/tmp/")  # on the emptyDir
    config = by_kind("ConfigMap")
    settings = next(c for c in config if c["metadata"]["name"] == "ketamine-cds")["data"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = int(settings["KCDS_GRACEFUL_TIMEOUT"])
    assert spec["terminationGracePeriodSeconds"] > graceful + pre_stop
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa, pdb = by_kind("HorizontalPodAutoscaler")[0], by_kind("PodDisruptionBudget")[0]
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["minAvailable"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        pdb["spec"]["selector"]["matchLabels"],
        by_kind("Service")[0]["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()


def test_secrets_come_from_the_secret_and_every_key_exists():
    secret = by_kind("Secret")[0]
    keys = set(secret["stringData"])
    referenced = set()
    for spec in pod_specs():
        for container in spec["containers"]:
            for e in container.get("env", ()):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    referenced.add((e["name"], ref["key"]))
                elif e["name"] in {
                    "KCDS_PSEUDONYM_KEY",
                    "KCDS_DATABASE_URL",
                    "KCDS_ADMIN_TOKEN",
                    "KCDS_TRUSTED_ISSUERS",
                }:
                    pytest.fail(f"{e['name']} must come from the Secret, not a plain value")
    names = {name for name, _ in referenced}
    assert names >= {
        "KCDS_PSEUDONYM_KEY",
        "KCDS_DATABASE_URL",
        "KCDS_ADMIN_TOKEN",
        "KCDS_TRUSTED_ISSUERS",
    }
    assert {key for _, key in referenced} <= keys


def test_the_policy_configmap_is_a_valid_site_policy(tmp_path):
    config = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "ketamine-cds-policy")
    site = tmp_path / "policy.yaml"
    site.write_text(config["data"]["policy.yaml"], "utf-8")
    loaded = policy.load(site)
    assert loaded.version == "example-hospital-2026.1"


def test_every_setting_in_the_manifests_is_documented():
    readme = (ROOT / "README.md").read_text("utf-8")
    text = "\n".join(p.read_text("utf-8") for p in DEPLOY.glob("*.yaml"))
    for name in sorted(set(re.findall(r"\bKCDS_[A-Z_]+\b", text))):
        assert f"`{name}`" in readme, f"{name} is not in the README's configuration table"


def test_settings_in_the_configmap_are_accepted_by_the_service():
    from service.config import Settings

    settings = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "ketamine-cds")
    env = dict(settings["data"])
    env["KCDS_DATABASE_URL"] = "postgresql://kcds:x@db.example.org/kcds"  # from the Secret
    parsed = Settings.from_env(env)
    assert parsed.replay_cache == env["KCDS_DATABASE_URL"]
    assert parsed.public_url == env["KCDS_PUBLIC_URL"]


def test_manifests_directory_exists():
    assert Path(DEPLOY).is_dir()
