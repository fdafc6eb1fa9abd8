"""deploy/k8s/ holds valid Kubernetes objects whose commands the real CLI accepts and whose names, ports and
selectors agree with one another, so that the manifests cannot drift from the code or from themselves.

No cluster is needed: kubernetes-validate checks every object against the Kubernetes API's schemas, which
it bundles, and each container's arguments go through `splitspec`'s own parser.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from command_flags import flags_of

from splitspec.entrypoints.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# Strict schemas (an unknown field fails) of Kubernetes 1.30: the newest that every kubernetes-validate which
# pyproject.toml allows (>=1.30) ships, and old enough that what the manifests use exists on any cluster still
# supported (native gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.30.0"
TIERS = ["verifier", "proposer", "gateway"]
SUBCOMMANDS = {"verifier": "serve-verifier", "proposer": "serve-proposer", "gateway": "serve-gateway"}
HEALTH_SERVICES = {
    "verifier": "splitspec.v1.Verifier",
    "proposer": "splitspec.v1.Proposer",
    "gateway": "splitspec.v1.Gateway",
}
GATEWAY_TARGET_FLAGS = {"--verifiers": "verifier", "--proposers": "proposer"}
DNS_SCHEME = "dns:///"
PROBES = ["startupProbe", "readinessProbe", "livenessProbe"]


def _documents() -> list[tuple[str, dict]]:
    docs = [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]
    assert docs, f"no manifests in {K8S}"
    return docs


DOCUMENTS = _documents()


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    """Every object by (kind, name); a name given twice to one kind is an error."""
    found: dict[tuple[str, str], dict] = {}
    for filename, doc in DOCUMENTS:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in found, f"{filename}: {key} is defined twice"
        found[key] = doc
    return found


def _name(tier: str) -> str:
    return f"splitspec-{tier}"


def _pod(objects, tier: str) -> dict:
    return objects[("Deployment", _name(tier))]["spec"]["template"]


def _container(objects, tier: str) -> dict:
    [container] = _pod(objects, tier)["spec"]["containers"]
    return container


def _parse(container: dict) -> argparse.Namespace:
    """The container's arguments as the CLI parses them in the pod: with its environment, and no other
    SPLITSPEC_* variable (the parser reads them for its defaults)."""
    argv = [str(a) for a in container["args"]]
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("SPLITSPEC_")]:
            mp.delenv(name)
        for var in container.get("env", []):
            mp.setenv(var["name"], str(var["value"]))
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`splitspec {' '.join(argv)}` does not parse (the parser's message is above)")


def _container_port(container: dict, port) -> int:
    """A port given by number or by the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def _probe_port(container: dict, probe: dict) -> int:
    [(kind, action)] = [(k, v) for k, v in probe.items() if k in ("grpc", "tcpSocket", "httpGet", "exec")]
    assert kind in ("grpc", "tcpSocket"), f"{kind} probe: the servers speak only gRPC"
    return _container_port(container, action["port"])


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.removeprefix(DNS_SCHEME).rpartition(":")
    return host, int(port)


@pytest.mark.parametrize(
    "filename, doc", DOCUMENTS, ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCUMENTS]
)
def test_every_object_is_valid_kubernetes(filename, doc):
    error = None
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        error = f"at {'.'.join(str(p) for p in exc.path) or 'the top level'}: {exc.message}"
    if error is not None:  # failed outside the except block: the schema in the traceback would fill screens
        pytest.fail(f"{filename} {doc['kind']}/{doc['metadata']['name']} {error}", pytrace=False)


def test_each_tier_has_a_deployment_and_a_service_and_the_proposers_an_autoscaler(objects):
    expected = {(kind, _name(tier)) for tier in TIERS for kind in ("Deployment", "Service")}
    assert set(objects) == expected | {("HorizontalPodAutoscaler", _name("proposer"))}


@pytest.mark.parametrize("tier", TIERS)
def test_every_object_carries_the_app_and_component_labels(objects, tier):
    for (_, name), obj in objects.items():
        if name == _name(tier):
            labels = obj["metadata"]["labels"]
            assert labels == {"app.kubernetes.io/name": "splitspec", "app.kubernetes.io/component": tier}, name
    assert _pod(objects, tier)["metadata"]["labels"] == objects[("Deployment", _name(tier))]["metadata"]["labels"]


@pytest.mark.parametrize("tier", TIERS)
def test_each_container_runs_the_composed_image_through_its_entrypoint(objects, tier):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    container = _container(objects, tier)
    assert {container["image"]} == {s["image"] for s in compose["services"].values()}
    assert container["command"] == ["splitspec"]  # the Dockerfile's ENTRYPOINT, pyproject.toml's script
    assert container["args"][0] == SUBCOMMANDS[tier]


@pytest.mark.parametrize("tier", TIERS)
def test_each_command_parses_with_the_cli(objects, tier):
    assert _parse(_container(objects, tier)).command == SUBCOMMANDS[tier]


@pytest.mark.parametrize("tier", TIERS)
def test_each_command_spells_out_only_flags_the_cli_defines(objects, tier):
    """argparse accepts any unambiguous prefix (`--grace 10`); a manifest must not rely on that."""
    argv = [str(a) for a in _container(objects, tier)["args"]]
    [subparsers] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    known = subparsers.choices[argv[0]]._option_string_actions
    assert [f for f in flags_of(argv) if f not in known] == [], f"`splitspec {argv[0]}` has no such flag"


@pytest.mark.parametrize("tier", TIERS)
def test_each_server_listens_on_all_interfaces_on_its_containers_and_services_ports(objects, tier):
    container = _container(objects, tier)
    args = _parse(container)
    assert args.host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [args.port, args.metrics_port]
    assert _container_port(container, "metrics") == args.metrics_port
    annotations = _pod(objects, tier)["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port), "Prometheus scrapes the metrics port"
    [service_port] = objects[("Service", _name(tier))]["spec"]["ports"]
    assert service_port["port"] == args.port, "the gateway's dns:/// targets reach the pods on the Service's port"
    assert _container_port(container, service_port["targetPort"]) == args.port


@pytest.mark.parametrize("tier", TIERS)
def test_every_probe_checks_the_servers_port_and_health_names(objects, tier):
    container = _container(objects, tier)
    port = _parse(container).port
    for name in PROBES:
        probe = container[name]
        assert _probe_port(container, probe) == port, name
        if "grpc" in probe:
            assert probe["grpc"].get("service", "") in ("", HEALTH_SERVICES[tier]), name
    # readiness must follow the health status, which turns NOT_SERVING during the drain
    assert container["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICES[tier]


@pytest.mark.parametrize("tier", TIERS)
def test_the_drain_ends_before_the_kill_and_liveness_cannot_end_it_sooner(objects, tier):
    pod = _pod(objects, tier)["spec"]
    container = _container(objects, tier)
    assert "--grace-seconds" in flags_of(container["args"]), "pass the drain time explicitly"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > _parse(container).grace_seconds
    liveness = container["livenessProbe"]
    assert liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3) > grace


@pytest.mark.parametrize("tier", TIERS)
def test_service_links_are_off_because_their_variables_share_the_clis_prefix(objects, tier):
    assert _pod(objects, tier)["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("tier", TIERS)
def test_every_container_requests_cpu_and_memory_and_is_limited(objects, tier):
    resources = _container(objects, tier)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("tier", TIERS)
def test_each_service_and_deployment_select_exactly_their_tiers_pods(objects, tier):
    deployments = {name: d for (kind, name), d in objects.items() if kind == "Deployment"}

    def selected(selector: dict) -> set[str]:
        return {
            n for n, d in deployments.items() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        }

    assert selected(objects[("Service", _name(tier))]["spec"]["selector"]) == {_name(tier)}
    assert selected(deployments[_name(tier)]["spec"]["selector"]["matchLabels"]) == {_name(tier)}


def test_verifiers_and_proposers_have_headless_services_and_the_gateway_a_cluster_ip(objects):
    for tier in GATEWAY_TARGET_FLAGS.values():
        assert objects[("Service", _name(tier))]["spec"].get("clusterIP") == "None", tier
    gateway = objects[("Service", _name("gateway"))]["spec"]
    assert gateway.get("type", "ClusterIP") == "ClusterIP" and gateway.get("clusterIP") != "None"


def test_the_gateway_finds_each_tier_through_its_headless_service(objects):
    flags = flags_of(_container(objects, "gateway")["args"])
    for flag, tier in GATEWAY_TARGET_FLAGS.items():
        [target] = flags[flag].split(",")
        assert target.startswith(DNS_SCHEME), f"{flag} {target}: a fixed address would miss pods that come later"
        [service_port] = objects[("Service", _name(tier))]["spec"]["ports"]
        assert _host_port(target) == (_name(tier), service_port["port"]), flag
    assert float(flags["--resolve-interval-s"]) > 0


def test_the_verifier_may_call_the_proposers_the_gateway_names(objects):
    """Direct drafts: the verifier calls the proposers the gateway names, and only those its --proposers lists."""
    verifier, gateway = (flags_of(_container(objects, tier)["args"]) for tier in ("verifier", "gateway"))
    assert verifier["--proposers"] == gateway["--proposers"]


def test_the_gateway_uses_the_verifiers_model_and_the_proposers_method_and_k(objects):
    gateway, verifier, proposer = (_parse(_container(objects, tier)) for tier in ("gateway", "verifier", "proposer"))
    assert gateway.model == verifier.model, "the gateway tokenizes with the verifier's model"
    assert gateway.method == proposer.method
    assert gateway.num_speculative_tokens == proposer.num_speculative_tokens


def test_the_verifier_runs_on_the_one_gpu_it_gets(objects):
    container = _container(objects, "verifier")
    args = _parse(container)
    assert args.device == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == args.tensor_parallel_size == 1


def test_the_autoscaler_scales_the_proposer_deployment_on_cpu_utilization(objects):
    hpa = objects[("HorizontalPodAutoscaler", _name("proposer"))]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": _name("proposer")}
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in _container(objects, "proposer")["resources"]["requests"], "utilization is relative to the request"
    assert "replicas" not in objects[("Deployment", _name("proposer"))]["spec"], "the autoscaler owns the count"
