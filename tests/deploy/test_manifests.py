"""deploy/: strictly schema-valid for Kubernetes 1.32 (kubernetes-validate, offline), and
consistent with the image (Dockerfile) and the service (routes, settings)."""

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from models.checkpoint import save_checkpoint
from models.mlp import MLPConfig, build_model
from service import __version__
from service.app import create_app
from service.settings import Settings
from training.data import LABELS

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
VALIDATE = [str(Path(sys.executable).with_name("kubernetes-validate")), "-k", "1.32.0", "--strict"]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}  # beside the PodSpec


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VALIDATE, str(path)], capture_output=True, text=True, check=False)


def dockerfile_value(pattern: str) -> str:
    match = re.search(pattern, (ROOT / "Dockerfile").read_text())
    assert match, pattern
    return match.group(1)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_passes_strict_validation(path: Path) -> None:
    result = validate(path)
    assert result.returncode == 0, result.stdout
    kind = load(path)["kind"].lower()
    assert f"passed for resource {kind}/mcdropout against version 1.32" in result.stdout


def test_strict_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    doc = load(K8S / "deployment.yaml")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # capital S: not a field
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = validate(bad)
    assert result.returncode == 1
    assert "readOnlyRootFileSystem" in result.stdout
    assert "ERROR" in result.stdout


def test_kserve_predictor_is_a_valid_pod_spec(tmp_path: Path) -> None:
    isvc = load(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    # No schema for KServe's CRD offline: its predictor is a PodSpec plus KServe's scaling fields,
    # so the PodSpec part is validated as a Pod.
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) >= KSERVE_ONLY
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "mcdropout"},
        "spec": {k: v for k, v in predictor.items() if k not in KSERVE_ONLY},
    }
    path = tmp_path / "predictor.yaml"
    path.write_text(yaml.safe_dump(pod))
    result = validate(path)
    assert result.returncode == 0
    assert "passed for resource pod/mcdropout" in result.stdout

    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    env = env_of(container)
    port = container["ports"][0]["containerPort"]
    assert int(env["MCDROPOUT_PORT"]) == port
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port
    # The storage initializer downloads STORAGE_URI to /mnt/models: that is what is served.
    assert env["STORAGE_URI"]
    assert env["MCDROPOUT_MODEL_PATH"] == "/mnt/models"


def probe_paths(probe: str) -> set[str]:
    containers = [
        pod_template()["spec"]["containers"][0],
        load(KSERVE)["spec"]["predictor"]["containers"][0],
    ]
    return {c[probe]["httpGet"]["path"] for c in containers if probe in c}


def statuses(model_path: Path, paths: set[str]) -> dict[str, int]:
    """Each path's status once the app has finished loading what model_path holds."""
    with TestClient(create_app(Settings(model_path=model_path))) as client:
        deadline = time.monotonic() + 30
        while client.get("/health/ready").json().get("reason") == "loading models":
            assert time.monotonic() < deadline, "the app did not finish loading"
            time.sleep(0.01)
        return {path: client.get(path).status_code for path in paths}


def test_probes_follow_the_service_health(tmp_path: Path) -> None:
    live = probe_paths("livenessProbe") | probe_paths("startupProbe")
    ready = probe_paths("readinessProbe")
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=(8,), dropout=(0.5,)))
    save_checkpoint(tmp_path / "tiny.safetensors", model, LABELS, {"created_at": "2026-01-01"})
    assert set(statuses(tmp_path, live | ready).values()) == {200}
    # Without a model the pod stays alive but gets no traffic.
    empty = tmp_path / "empty"
    empty.mkdir()
    answers = statuses(empty, live | ready)
    assert {answers[p] for p in live} == {200}
    assert {answers[p] for p in ready} == {503}


def pod_template() -> dict[str, Any]:
    spec: dict[str, Any] = load(K8S / "deployment.yaml")["spec"]["template"]
    return spec


@pytest.mark.parametrize(
    "container",
    [
        pod_template()["spec"]["containers"][0],
        load(KSERVE)["spec"]["predictor"]["containers"][0],
    ],
    ids=["deployment", "kserve"],
)
def test_containers_set_only_real_settings_with_valid_values(
    container: dict[str, Any], tmp_path: Path
) -> None:
    env = env_of(container)
    settings = {
        k.removeprefix("MCDROPOUT_").lower(): v for k, v in env.items() if k.startswith("MCDROPOUT")
    }
    assert set(settings) <= set(Settings.model_fields), set(settings) - set(Settings.model_fields)
    parsed = Settings(**settings)  # type: ignore[arg-type]  # strings, as from the environment
    limit = container["resources"]["limits"]["cpu"]
    assert parsed.torch_threads is not None
    assert parsed.torch_threads <= int(limit)


def test_deployment_runs_the_image_confined_and_probes_the_health_routes() -> None:
    pod = pod_template()
    spec = pod["spec"]
    (container,) = spec["containers"]
    uid = int(dockerfile_value(r"ARG UID=(\d+)"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert spec["automountServiceAccountToken"] is False
    confined = container["securityContext"]
    assert confined["readOnlyRootFilesystem"] is True
    assert confined["allowPrivilegeEscalation"] is False
    assert confined["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp: an emptyDir.
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume

    (port,) = container["ports"]
    assert port["containerPort"] == int(dockerfile_value(r"MCDROPOUT_PORT=(\d+)"))
    for probe in PROBES:
        assert container[probe]["httpGet"]["port"] == port["name"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])

    # SIGTERM comes after preStop; the service then keeps listening for its delay and drains
    # for its grace, all within the pod's.
    env = env_of(container)
    drain = float(env["MCDROPOUT_SHUTDOWN_GRACE_SECONDS"])
    default_delay = Settings.model_fields["shutdown_delay_seconds"].default
    delay = float(env.get("MCDROPOUT_SHUTDOWN_DELAY_SECONDS", default_delay))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + delay + drain < spec["terminationGracePeriodSeconds"]


def test_service_hpa_and_budget_point_at_the_deployment() -> None:
    deployment = load(K8S / "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]

    service = load(K8S / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}

    hpa = load(K8S / "hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # Utilization is relative to the CPU request: without one the HPA cannot scale.
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in container["resources"]["requests"]

    budget = load(K8S / "pdb.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # drains can proceed


def test_one_document_per_file() -> None:
    # The checks above read one document per file: a second one would go unchecked.
    for path in [*K8S.glob("*.yaml"), KSERVE]:
        assert len(list(yaml.safe_load_all(path.read_text()))) == 1, path


def test_the_manifests_deploy_this_version() -> None:
    """Their image tags name the package's version (pyproject.toml): a release that bumps it and
    not them fails here."""
    tags = [
        match.group(1)
        for path in (K8S / "deployment.yaml", KSERVE)
        for match in re.finditer(r"image: \S+/mcdropout-service:(\S+)", path.read_text())
    ]
    assert len(tags) == 2
    assert [tag.removesuffix("-baked") for tag in tags] == [__version__, __version__]
