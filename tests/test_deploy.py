"""What schema validation misses in the deployment files: selectors, ports, probe paths, references between
objects, and the settings the manifests pass to the app. Kubernetes checks render the kustomize overlays with
``kubectl kustomize`` (skipped when kubectl is not installed; `.ci/containers.sh` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl")


def _app_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def rendered(request) -> tuple[str, dict[str, dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(REPO / "k8s" / "overlays" / request.param)], capture_output=True, text=True, check=True
    ).stdout
    objects = {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}
    return request.param, objects


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_pods(rendered):
    _, objects = rendered
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(objects["Service"]["spec"]["selector"], pod_labels)
    assert _matches(objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"], objects["Service"]["metadata"]["labels"])


def test_ports_probes_and_scrape_annotations_agree(rendered):
    _, objects = rendered
    pod = objects["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert int(env["SSLIC_PORT"]) == ports["http"]
    service_port = objects["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] in ports
    assert any(e["port"] == service_port["name"] for e in objects["ServiceMonitor"]["spec"]["endpoints"])
    paths = _app_paths()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths and get["port"] in ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] in paths


def test_references_between_objects(rendered):
    variant, objects = rendered
    deployment = objects["Deployment"]
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"][0]["configMapRef"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    fields = set(Settings.model_fields)
    for key in objects["ConfigMap"]["data"]:
        assert key.startswith("SSLIC_") and key[len("SSLIC_"):].lower() in fields, key
    Settings(**{k[len("SSLIC_"):].lower(): v for k, v in objects["ConfigMap"]["data"].items()})


def test_security_and_resources(rendered):
    variant, objects = rendered
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    if variant == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].endswith(":gpu")
        assert spec["tolerations"] and spec["nodeSelector"]
        assert "CUDAExecutionProvider" in objects["ConfigMap"]["data"]["SSLIC_PROVIDERS"]
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_compose_file_and_prometheus_config():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    sslic = compose["services"]["sslic"]
    prometheus = compose["services"]["prometheus"]
    assert prometheus["depends_on"]["sslic"]["condition"] == "service_healthy"
    health = " ".join(sslic["healthcheck"]["test"])
    assert re.search(r"/(readyz|healthz)", health)
    assert sslic["build"]["target"] == "cpu"
    assert "8000:8000" in sslic["ports"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["sslic:8000"]
    assert config["scrape_configs"][0]["metrics_path"] in _app_paths()
    gpu = compose["services"]["sslic-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_dockerfile_stages():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["build", "gpu", "cpu"]  # the last stage is the default target
    cpu = text.split("AS cpu", 1)[1]
    gpu = text.split("AS gpu", 1)[1].split("AS cpu", 1)[0]
    for stage in (cpu, gpu):
        assert re.search(r"^USER 10001$", stage, flags=re.MULTILINE)
        assert "HEALTHCHECK" in stage
        assert 'ENTRYPOINT ["tini", "--", "sslic"]' in stage
        assert 'CMD ["serve"]' in stage
    assert "onnxruntime-gpu" in gpu and "pip uninstall -y onnxruntime" in gpu
    assert "torch" not in cpu
