"""deploy/fleet: what can be checked without Docker or a Kubernetes cluster. Every YAML file
parses; every ``iceward`` command in them parses with the real command line and its settings
validate; the nodes use the host's network, are ready on ``/readyz`` of their own HTTP port,
drain before they stop, with a grace period matching the drain timeout; region maps load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
import yaml

from iceward.cli import app
from iceward.config import load_settings
from iceward.fleet.regions import RegionMap

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "fleet"
#: --drain-timeout's default (the spec's 3600 s), which the grace period must cover.
DRAIN_TIMEOUT = 3600


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def parse_serve(args: list[str], env: dict[str, str], regions: Path) -> dict[str, Any]:
    """``iceward serve ARGS`` parsed by the real command line and validated as settings (the
    environment given applied, the region map mounted from ``regions``)."""
    assert args[0] == "serve", args
    args = [str(regions) if a == "/etc/iceward/regions.txt" else a for a in args[1:]]
    group: Any = typer.main.get_command(app)
    with group.make_context("iceward", ["serve", "--help"], resilient_parsing=True) as ctx:
        serve = group.get_command(ctx, "serve")
        assert serve is not None
        parsed = serve.make_context("serve", args).params
    # as Typer hands them to serve(): repeatable options as lists
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in parsed.items()}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = load_settings(params.pop("config"), **params)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert settings.cluster and settings.region and settings.region_map
    RegionMap.load(settings.region_map)
    http_port = settings.http_bind[1] if settings.http_bind else 0
    return {"settings": settings, "http_port": http_port}


def test_compose_example_parses_and_its_node_commands_are_valid_serve_commands() -> None:
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"redis", "postgres"} <= set(services)
    nodes = {name: s for name, s in services.items() if name.startswith("node-")}
    regions = set()
    for name, service in nodes.items():
        assert service["network_mode"] == "host", name
        parsed = parse_serve(service["command"], service["environment"], DEPLOY / "regions.txt")
        settings = parsed["settings"]
        regions.add(settings.region)
        assert settings.database.startswith("postgresql+psycopg://")
        assert settings.secret, "the shared secret from the environment"
        assert f"127.0.0.1:{parsed['http_port']}/readyz" in " ".join(service["healthcheck"]["test"])
    assert len(nodes) == 2 and len(regions) == 2
    ports = [set(range(*parse_range(s["command"]))) for s in nodes.values()]
    assert not ports[0] & ports[1], "nodes on one host need their own relay ranges"


def parse_range(args: list[str]) -> tuple[int, int]:
    lo, hi = args[args.index("--relay-ports") + 1].split("-")
    return int(lo), int(hi) + 1


def test_kubernetes_nodes_use_host_network_readiness_and_drain_before_stopping(
    tmp_path: Path,
) -> None:
    manifests = [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in documents(f)]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests}
    assert ("Service", "iceward-redis") in kinds and ("Secret", "iceward") in kinds
    (configmap,) = [d for d in manifests if d["kind"] == "ConfigMap"]
    regions = tmp_path / "regions.txt"
    regions.write_text(configmap["data"]["regions.txt"])
    (secret,) = [d for d in manifests if d["kind"] == "Secret"]
    env = {k: v for k, v in secret["stringData"].items()}
    daemonsets = [d for d in manifests if d["kind"] == "DaemonSet"]
    assert len(daemonsets) == 2
    for ds in daemonsets:
        pod = ds["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        assert pod["terminationGracePeriodSeconds"] == DRAIN_TIMEOUT
        (container,) = pod["containers"]
        args = [a.replace("$(NODE_NAME)", "k8s-node-1") for a in container["args"]]
        parsed = parse_serve(args, env, regions)
        settings = parsed["settings"]
        assert settings.node_id == "k8s-node-1"
        assert settings.cluster.startswith("redis://iceward-redis:")
        assert settings.region == ds["metadata"]["labels"]["region"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": "/readyz", "port": parsed["http_port"]}
        stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert f"iceward drain --admin-url http://127.0.0.1:{parsed['http_port']}" in stop
        assert "ICEWARD_ADMIN_KEY" in env


def test_the_image_installs_iceward_with_its_postgresql_driver() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "'/src[postgresql]'" in text and 'ENTRYPOINT ["iceward"]' in text
    pyproject = (DEPLOY.parents[1] / "pyproject.toml").read_text()
    assert "postgresql = [" in pyproject
