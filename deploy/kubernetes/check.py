#!/usr/bin/env python3
"""Validates the Kubernetes manifests: schemas and how they fit together.

    python3 deploy/kubernetes/check.py

Needs `kubernetes-validate` (and the PyYAML it brings). Every manifest in this directory must be listed in
kustomization.yaml, and each is validated strictly (unknown fields are errors) against the oldest Kubernetes
version the manifests support; then the pieces are checked against each other and against the Dockerfile.
Exits 1 on the first kind of problem found.
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DOCKERFILE = HERE.parent.parent / "Dockerfile"
# `preStop: sleep` is on by default from 1.30.
OLDEST_KUBERNETES = "1.30.0"


def fail(message):
    print(f"deploy/kubernetes: {message}")
    sys.exit(1)


def load(path):
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def main():
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    present = sorted(p.name for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml")
    if sorted(listed) != present:
        fail(f"kustomization.yaml lists {sorted(listed)}, the directory holds {present}")

    files = [str(HERE / name) for name in listed]
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", OLDEST_KUBERNETES, *files], check=False
    )
    if result.returncode != 0:
        fail(f"kubernetes-validate --strict -k {OLDEST_KUBERNETES} failed")

    resources = {}
    for name in listed:
        for document in load(HERE / name):
            resources[(document["kind"], document["metadata"]["name"])] = document
    kinds = {kind for kind, _ in resources}
    for kind in ("StatefulSet", "Service", "NetworkPolicy"):
        if kind not in kinds:
            fail(f"no {kind}")

    (statefulset,) = [r for (kind, _), r in resources.items() if kind == "StatefulSet"]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if spec["replicas"] != 1:
        fail("the StatefulSet must run exactly one replica: the SQLite store is not shared")
    headless = resources.get(("Service", spec["serviceName"]))
    if not headless or headless["spec"].get("clusterIP") != "None":
        fail(f"serviceName {spec['serviceName']} is not a headless Service")

    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    if ports != {"grpc": 50051, "metrics": 9090}:
        fail(f"container ports {ports}, expected grpc 50051 and metrics 9090")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if container.get(probe, {}).get("grpc", {}).get("port") != ports["grpc"]:
            fail(f"{probe} is not a gRPC probe on the grpc port")
    if "sleep" not in container.get("lifecycle", {}).get("preStop", {}):
        fail("no preStop sleep: the endpoint removal would race the shutdown")

    for (kind, name), resource in resources.items():
        if kind != "Service":
            continue
        selector = resource["spec"]["selector"]
        if any(labels.get(key) != value for key, value in selector.items()):
            fail(f"Service {name} selects {selector}, which the pod labels {labels} do not match")
        for port in resource["spec"]["ports"]:
            protocol = {"grpc": "grpc", "metrics": "http"}.get(port["name"])
            if port["targetPort"] not in ports or port.get("appProtocol") != protocol:
                fail(f"Service {name} port {port['name']}: target or appProtocol does not match the container")

    # The pod runs as the image's user, so the image's data dir and the volume are writable by it.
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    security = pod["securityContext"]
    if not user or (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) != (
        int(user[1]), int(user[2]), int(user[2])
    ):
        fail("runAsUser/runAsGroup/fsGroup do not match the Dockerfile's USER")

    # The optional ServiceMonitor must scrape the Service's metrics port.
    for path in sorted((HERE / "prometheus-operator").glob("*.yaml")):
        for monitor in load(path):
            if monitor.get("kind") != "ServiceMonitor":
                fail(f"{path.name}: not a ServiceMonitor")
            wanted = monitor["spec"]["selector"]["matchLabels"]
            endpoints = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
            scraped = [
                name
                for (kind, name), service in resources.items()
                if kind == "Service"
                and all(service["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
                and endpoints & {port["name"] for port in service["spec"]["ports"]}
            ]
            if len(scraped) != 1:
                fail(f"{path.name}: scrapes Services {scraped}, expected exactly one")

    print(f"deploy/kubernetes: ok, {len(resources)} resources valid for Kubernetes {OLDEST_KUBERNETES}+")


if __name__ == "__main__":
    main()
