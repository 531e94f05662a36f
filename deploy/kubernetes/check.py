#!/usr/bin/env python3
"""Validates the Kubernetes manifests: schemas and how they fit together.

    python3 deploy/kubernetes/check.py

Needs `kubernetes-validate` (and the PyYAML it brings). Every manifest in this directory must be listed in
kustomization.yaml, and each is validated strictly (unknown fields are errors) against the oldest Kubernetes
version the manifests support; then the pieces are checked against each other and against the Dockerfile.
The same goes for the `replicated/` overlay (several replicas on PostgreSQL): its Deployment, what it keeps of
the base and what its patches remove. Exits 1 on the first kind of problem found.
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPLICATED = HERE / "replicated"
DOCKERFILE = HERE.parent.parent / "Dockerfile"
# `preStop: sleep` is on by default from 1.30.
OLDEST_KUBERNETES = "1.30.0"


def fail(message):
    print(f"deploy/kubernetes: {message}")
    sys.exit(1)


def load(path):
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def validated(directory, listed):
    """The resources of the files `listed` in `directory`'s kustomization.yaml, validated strictly."""
    present = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    if sorted(listed) != present:
        fail(f"{directory.name}/kustomization.yaml lists {sorted(listed)}, the directory holds {present}")
    files = [str(directory / name) for name in listed]
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", OLDEST_KUBERNETES, *files], check=False
    )
    if result.returncode != 0:
        fail(f"{directory.name}: kubernetes-validate --strict -k {OLDEST_KUBERNETES} failed")
    resources = {}
    for name in listed:
        for document in load(directory / name):
            resources[(document["kind"], document["metadata"]["name"])] = document
    return resources


def check_pod(workload, pod, services):
    """What every workload's pod must get right: ports, probes, shutdown, user, and the Services selecting it."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    if ports != {"grpc": 50051, "metrics": 9090}:
        fail(f"container ports {ports}, expected grpc 50051 and metrics 9090")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if container.get(probe, {}).get("grpc", {}).get("port") != ports["grpc"]:
            fail(f"{probe} is not a gRPC probe on the grpc port")
    if "sleep" not in container.get("lifecycle", {}).get("preStop", {}):
        fail("no preStop sleep: the endpoint removal would race the shutdown")

    for name, resource in services.items():
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
    return container


def secret_env(container):
    """The container's variables that come from Secrets."""
    return {
        variable["name"]
        for variable in container.get("env", [])
        if "secretKeyRef" in variable.get("valueFrom", {})
    }


def check_replicated(base):
    """The overlay: a Deployment of several replicas on PostgreSQL in place of the base's StatefulSet."""
    kustomization = yaml.safe_load((REPLICATED / "kustomization.yaml").read_text())
    listed = [name for name in kustomization.get("resources", []) if name != ".."]
    if ".." not in kustomization.get("resources", []):
        fail("replicated/kustomization.yaml does not build on the base (`..`)")
    resources = validated(REPLICATED, listed)

    deleted = set()
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load(entry["patch"])
        if isinstance(patch, dict) and patch.get("$patch") == "delete":
            deleted.add((patch["kind"], patch["metadata"]["name"]))
        elif "target" in entry:
            target = (entry["target"]["kind"], entry["target"]["name"])
            if target not in base:
                fail(f"replicated: a patch targets {target}, which the base does not have")
    statefulsets = {key for key in base if key[0] == "StatefulSet"}
    headless = {
        ("Service", name) for (kind, name), r in base.items() if kind == "Service" and r["spec"].get("clusterIP") == "None"
    }
    if deleted != statefulsets | headless:
        fail(f"replicated: deletes {sorted(deleted)}, expected the base's StatefulSet and headless Service")
    kept = {key: r for key, r in base.items() if key not in deleted}
    clash = set(kept) & set(resources)
    if clash:
        fail(f"replicated: {sorted(clash)} are in the base already")

    (deployment,) = [r for (kind, _), r in resources.items() if kind == "Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    if spec["replicas"] < 2:
        fail("the Deployment must run several replicas")
    if any("persistentVolumeClaim" in volume for volume in pod.get("volumes", [])):
        fail("the Deployment's pods must keep nothing on a volume: everything is in PostgreSQL")
    services = {name: r for (kind, name), r in kept.items() if kind == "Service"}
    container = check_pod(deployment, pod, services)
    missing = {"GROOVE_DESTINATION_DATABASE_URL", "GROOVE_DESTINATION_SECRET_KEY"} - secret_env(container)
    if missing:
        fail(f"the Deployment does not take {sorted(missing)} from Secrets")
    labels = spec["template"]["metadata"]["labels"]
    for (kind, name), resource in resources.items():
        if kind == "PodDisruptionBudget":
            wanted = resource["spec"]["selector"]["matchLabels"]
            if any(labels.get(key) != value for key, value in wanted.items()):
                fail(f"PodDisruptionBudget {name} selects {wanted}, not the Deployment's pods")
    return len(resources)


def main():
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    resources = validated(HERE, listed)
    kinds = {kind for kind, _ in resources}
    for kind in ("StatefulSet", "Service", "NetworkPolicy"):
        if kind not in kinds:
            fail(f"no {kind}")

    (statefulset,) = [r for (kind, _), r in resources.items() if kind == "StatefulSet"]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    if spec["replicas"] != 1:
        fail("the StatefulSet must run exactly one replica: the SQLite store is not shared")
    headless = resources.get(("Service", spec["serviceName"]))
    if not headless or headless["spec"].get("clusterIP") != "None":
        fail(f"serviceName {spec['serviceName']} is not a headless Service")

    services = {name: r for (kind, name), r in resources.items() if kind == "Service"}
    check_pod(statefulset, pod, services)

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

    replicated = check_replicated(resources)
    print(
        f"deploy/kubernetes: ok, {len(resources)} resources (and {replicated} in replicated/) valid for "
        f"Kubernetes {OLDEST_KUBERNETES}+"
    )


if __name__ == "__main__":
    main()
