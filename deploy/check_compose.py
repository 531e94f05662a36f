#!/usr/bin/env python3
"""Checks docker-compose.yaml without a container engine: how its services fit together.

    python3 deploy/check_compose.py

Needs PyYAML (in CI, the .venv that kubernetes-validate brings it into). CI cannot run the file: its machine
has no container engine, and cannot reach the registries for the base images (README, "Deploy"). Checks that
PostgreSQL, the sandbox and at least two replicas are there; that every replica is built from the Dockerfile,
reaches PostgreSQL and the sandbox by their service names and ports, waits for PostgreSQL to be healthy, shares
one secret key, and publishes its ports on distinct host ports; and that the sandbox's build target exists.
Exits 1 on the first problem found.
"""

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def fail(message):
    print(f"docker-compose.yaml: {message}")
    sys.exit(1)


def container_port(mapping):
    """`127.0.0.1:50051:50051` → ("127.0.0.1:50051", 50051)."""
    host, _, container = str(mapping).rpartition(":")
    return host, int(container)


def main():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose.get("services", {})
    for name in ("postgres", "sandbox"):
        if name not in services:
            fail(f"no {name} service")
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE))

    postgres = services["postgres"]
    if "healthcheck" not in postgres:
        fail("postgres has no healthcheck: the replicas would start before it accepts connections")
    pg_env = postgres.get("environment", {})

    sandbox = services["sandbox"]
    if sandbox.get("build", {}).get("target") not in stages:
        fail(f"sandbox builds target {sandbox.get('build', {}).get('target')}, not a stage of the Dockerfile {sorted(stages)}")
    command = sandbox.get("command", [])
    listen = command[command.index("--listen") + 1] if "--listen" in command else ""
    sandbox_port = int(listen.rpartition(":")[2] or 0)
    if not listen.startswith("0.0.0.0:"):
        fail("the sandbox must listen on 0.0.0.0 so the replicas reach it")

    replicas = {name: service for name, service in services.items() if name.startswith("replica")}
    if len(replicas) < 2:
        fail(f"{len(replicas)} replicas, expected at least two")
    host_ports = []
    secret_keys = set()
    for name, replica in replicas.items():
        build = replica.get("build", {})
        if build.get("context") != "." or build.get("target"):
            fail(f"{name} is not built from the Dockerfile's default target")
        env = replica.get("environment", {})
        database = urlsplit(env.get("GROOVE_DESTINATION_DATABASE_URL", ""))
        if database.scheme not in ("postgres", "postgresql") or database.hostname != "postgres":
            fail(f"{name}: GROOVE_DESTINATION_DATABASE_URL does not point at the postgres service")
        if (database.username, database.password, database.path.lstrip("/")) != (
            pg_env.get("POSTGRES_USER"),
            pg_env.get("POSTGRES_PASSWORD"),
            pg_env.get("POSTGRES_DB"),
        ):
            fail(f"{name}: the database URL's user, password or database is not what postgres is given")
        groove = urlsplit(env.get("GROOVE_DESTINATION_GROOVE_URL", ""))
        if groove.hostname != "sandbox" or groove.port != sandbox_port:
            fail(f"{name}: GROOVE_DESTINATION_GROOVE_URL does not point at the sandbox on port {sandbox_port}")
        if replica.get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
            fail(f"{name} does not wait for postgres to be healthy")
        secret_keys.add(env.get("GROOVE_DESTINATION_SECRET_KEY"))
        ports = [container_port(mapping) for mapping in replica.get("ports", [])]
        if 50051 not in {container for _, container in ports}:
            fail(f"{name} does not publish the gRPC port 50051")
        host_ports.extend(host for host, _ in ports)
    if len(secret_keys) != 1 or None in secret_keys:
        fail("every replica needs the same GROOVE_DESTINATION_SECRET_KEY")
    if len(set(host_ports)) != len(host_ports):
        fail(f"host ports clash: {host_ports}")
    print(f"docker-compose.yaml: ok, postgres, sandbox and {len(replicas)} replicas")


if __name__ == "__main__":
    main()
