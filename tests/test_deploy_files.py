"""The operational files in deploy/ and grafana/ parse, agree with each other, and with relay.

Every metric the dashboard and the alert rules query is checked against what a real relay
process exports on /metrics, so renaming a metric in relay without updating them fails here
instead of leaving an empty panel or an alert that can never fire.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "relay.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
CONTAINER_CONFIG = DEPLOY / "relay.docker.toml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "relay.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "relay.toml"
KUBERNETES = DEPLOY / "kubernetes"

YAML_FILES = sorted(
    path
    for folder in (DEPLOY, GRAFANA)
    for pattern in ("*.yml", "*.yaml")
    for path in folder.rglob(pattern)
)

# Metric names as PromQL writes them: relay's own and the default process/python collectors.
METRIC_IN_PROMQL = re.compile(r"(?<![\w:$])((?:relay|process|python)_[a-zA-Z0-9_:]*)")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
METRICS_DEADLINE_SECONDS = 20.0


# --- the metric names a real relay exports ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_metric_names(exposition: str) -> set[str]:
    """Metric family and sample names in Prometheus' text format.

    Counters appear as `x_total` in samples (and in the TYPE line of the classic format, but
    not in OpenMetrics'); a labelled metric that has seen no traffic has a TYPE line and no
    samples. Both kinds of line are read so that either format and either case is covered.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind.strip() == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        elif line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            if match:
                names.add(match.group(0))
    return names


def _wait_for_metrics(url: str, process: subprocess.Popen[bytes]) -> str | None:
    deadline = time.monotonic() + METRICS_DEADLINE_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    body: bytes = response.read()
                    return body.decode()
        except OSError:  # not listening yet (URLError and connection errors are OSErrors)
            pass
        time.sleep(0.1)
    return None


def exported_metric_names(workdir: Path) -> set[str]:
    """Start `python -m relay serve` on a free port and read the names on its /metrics."""
    port = _free_port()
    config = workdir / "relay.toml"
    database = workdir / "relay.db"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"

[storage]
url = "sqlite:///{database}"

[[inbound]]
name = "audience"
path = "/hooks/a"
kind = "mailchimp"
secret = "s"
source = "user"

[[destination]]
name = "crm"
url = "http://127.0.0.1:9/"
""",
        encoding="utf-8",
    )
    log = workdir / "relay.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            exposition = _wait_for_metrics(f"http://127.0.0.1:{port}/metrics", process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if exposition is None:
        output_text = log.read_text(encoding="utf-8", errors="replace")
        pytest.fail(
            f"relay did not serve /metrics within {METRICS_DEADLINE_SECONDS:.0f} s "
            f"(exit code {process.returncode}); its output:\n{output_text}"
        )
    return parse_metric_names(exposition)


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return exported_metric_names(tmp_path_factory.mktemp("relay"))


def _unknown_metrics(exprs: list[str], exported: set[str]) -> dict[str, list[str]]:
    unknown: dict[str, list[str]] = {}
    for expr in exprs:
        for name in METRIC_IN_PROMQL.findall(expr):
            if name not in exported and HISTOGRAM_SUFFIX.sub("", name) not in exported:
                unknown.setdefault(name, []).append(expr)
    return unknown


def test_parse_metric_names_reads_type_lines_and_samples() -> None:
    exposition = (
        "# HELP relay_deliveries_dead_total Deliveries that gave up.\n"
        "# TYPE relay_deliveries_dead_total counter\n"
        "# TYPE relay_replays counter\n"
        "relay_replays_total 3.0\n"
        "# TYPE relay_ingest_duration_seconds histogram\n"
        'relay_ingest_duration_seconds_bucket{inbound="a",le="+Inf"} 1.0\n'
    )
    assert parse_metric_names(exposition) == {
        "relay_deliveries_dead_total",
        "relay_replays",
        "relay_replays_total",
        "relay_ingest_duration_seconds",
        "relay_ingest_duration_seconds_bucket",
    }


# --- YAML ------------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_deploy_and_grafana_have_yaml_files() -> None:
    assert len(YAML_FILES) >= 10


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_file_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert documents
    assert all(isinstance(document, dict) for document in documents)


# --- Grafana dashboard -----------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside a collapsed row
    return panels


def _dashboard_exprs() -> list[str]:
    exprs = [target["expr"] for panel in _dashboard_panels() for target in panel.get("targets", [])]
    exprs += [
        variable["definition"]
        for variable in _dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]
    return exprs


def test_dashboard_selects_its_data_source_through_a_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert {"datasource", "inbound", "destination"} <= variables.keys()
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == "prometheus"
    for panel in _dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_has_a_panel_for_each_operational_question() -> None:
    titles = {panel["title"] for panel in _dashboard_panels()}
    assert {
        "Up",
        "Ready",
        "Ingest rate by inbound and outcome",
        "Ingest errors (not accepted)",
        "Ack latency p50 / p99",
        "Store commit latency p50 / p99",
        "Store commit batch size",
        "Delivery success ratio",
        "Attempt latency p50 / p99",
        "End-to-end latency p50 / p99",
        "Backlog by destination and state",
        "Oldest pending delivery age",
        "Dead deliveries",
        "Deliveries given up",
        "Replays",
        "Replayed deliveries",
        "Paused destinations",
    } <= titles


def test_ingest_errors_panel_leaves_out_mailchimps_url_checks() -> None:
    # An empty POST (outcome "validation") is Mailchimp checking the URL, answered 200.
    (panel,) = [p for p in _dashboard_panels() if p["title"] == "Ingest errors (not accepted)"]
    (expr,) = [target["expr"] for target in panel["targets"]]
    assert 'outcome!~"accepted|validation"' in expr


def test_dashboard_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = _dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_filter_by_the_template_variables() -> None:
    exprs = _dashboard_exprs()
    assert any('inbound=~"$inbound"' in expr for expr in exprs)
    assert any('destination=~"$destination"' in expr for expr in exprs)
    for expr in exprs:
        if "inbound" in expr and "relay_requests_received_total" in expr:
            assert "$inbound" in expr or expr.startswith("label_values("), expr
        if "by (destination" in expr:
            assert "$destination" in expr, expr


@pytest.mark.slow
def test_dashboard_queries_only_metrics_relay_exports(exported_names: set[str]) -> None:
    assert _unknown_metrics(_dashboard_exprs(), exported_names) == {}


# --- Prometheus alert rules and config -------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    groups = _load_yaml(ALERTS)["groups"]
    assert [group["name"] for group in groups] == ["relay"]
    rules: list[dict[str, Any]] = groups[0]["rules"]
    return rules


def test_alert_rules_cover_the_documented_failures() -> None:
    names = {rule["alert"] for rule in _alert_rules()}
    assert {
        "RelayDown",
        "RelayNotReady",
        "RelayDeliveryBacklogOld",
        "RelayDeadLettersRising",
        "RelayIngestErrors",
        "RelayIngestAuthRejected",
        "RelayIngestSlow",
    } <= names


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), rule["alert"]


def _readme_anchors() -> set[str]:
    """The anchors GitHub makes for README headings: lower case, punctuation dropped,
    spaces as hyphens."""
    anchors = set()
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_links_to_its_own_runbook_section_in_the_readme() -> None:
    anchors = _readme_anchors()
    assert "operating-relay" in anchors and "dead-letters" in anchors  # the slugging works
    for rule in _alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://github.com/relay/relay#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, rule["alert"]


@pytest.mark.slow
def test_alert_rules_query_only_metrics_relay_exports(exported_names: set[str]) -> None:
    exprs = [rule["expr"] for rule in _alert_rules()]
    assert _unknown_metrics(exprs, exported_names) == {}


def test_prometheus_scrapes_relay_as_job_relay_and_loads_the_rules() -> None:
    config = _load_yaml(PROMETHEUS_CONFIG)
    rule_files = [PROMETHEUS_CONFIG.parent / name for name in config["rule_files"]]
    assert ALERTS in rule_files
    assert all(path.is_file() for path in rule_files)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "relay"]
    assert job["metrics_path"] == "/metrics"
    # /metrics is served on the operator address only.
    admin_port = _port(tomllib.loads(CONTAINER_CONFIG.read_text(encoding="utf-8"))["admin"])
    assert job["static_configs"][0]["targets"] == [f"relay:{admin_port}"]
    # The alert rules select on this job name.
    assert all('job="relay"' in rule["expr"] for rule in _alert_rules())


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


# promtool is not a Python package and relay's CI does not install it, so the tests below
# skip where it is missing (Debian's `prometheus` package has it). The YAML, metric name and
# cross-reference checks above do not depend on it.
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)"
)


@needs_promtool
def test_promtool_accepts_the_alert_rules_and_their_unit_tests() -> None:
    for args in (
        ("check", "rules", str(ALERTS)),
        ("check", "config", str(PROMETHEUS_CONFIG)),
        ("test", "rules", str(ALERT_TESTS)),
    ):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    substitutions = {
        "$__rate_interval": "1m",
        "$job": "relay",
        "$instance": ".*",
        "$inbound": ".*",
        "$destination": ".*",
    }
    rules = []
    for number, expr in enumerate(_dashboard_exprs()):
        if expr.startswith("label_values("):
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = _promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


# --- docker compose and the container --------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _load_yaml(COMPOSE)
    return compose


def _env_references(toml_text: str) -> set[str]:
    """The ${NAME} variables a relay config reads (in its values, not its comments)."""

    def walk(value: object) -> set[str]:
        if isinstance(value, str):
            return set(ENV_REFERENCE.findall(value))
        if isinstance(value, dict):
            return set().union(*map(walk, value.values()))
        if isinstance(value, list):
            return set().union(*map(walk, value))
        return set()

    return walk(tomllib.loads(toml_text))


def test_compose_builds_relay_from_the_dockerfile() -> None:
    build = _compose()["services"]["relay"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def test_compose_gives_relay_every_variable_its_config_reads() -> None:
    relay = _compose()["services"]["relay"]
    needed = _env_references(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    assert needed == {"MC_HOOK_SECRET", "RELAY_ADMIN_TOKEN", "CRM_URL"}
    assert needed <= relay["environment"].keys()
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in relay["volumes"]}
    assert mounts["/var/lib/relay"] == "relay-data"
    assert (COMPOSE.parent / mounts["/etc/relay/relay.toml"]).resolve() == CONTAINER_CONFIG


def test_compose_publishes_the_operator_address_on_loopback_only() -> None:
    config = tomllib.loads(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    ports = _compose()["services"]["relay"]["ports"]
    assert ports == [
        f"{_port(config['server'])}:{_port(config['server'])}",
        f"127.0.0.1:{_port(config['admin'])}:{_port(config['admin'])}",
    ]


def test_systemd_example_config_keeps_operators_on_loopback() -> None:
    env = {"RELAY_ADMIN_TOKEN": "t", "MC_HOOK_SECRET": "s", "CRM_URL": "https://crm.example/"}
    settings = parse_config(SYSTEMD_CONFIG.read_text(encoding="utf-8"), env)
    assert settings.admin.listen == ("127.0.0.1", 8081)
    assert settings.storage.url == "sqlite:////var/lib/relay/relay.db"
    assert "deploy/systemd/relay.toml" in SYSTEMD_UNIT.read_text(encoding="utf-8")


def test_compose_gives_relay_longer_than_its_graceful_shutdown() -> None:
    grace = _compose()["services"]["relay"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > 30


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in grafana["volumes"]}
    assert (COMPOSE.parent / "../grafana/dashboards").resolve() == DASHBOARD.parent
    provider = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "relay.yml")["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mounts["../grafana/dashboards"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (prometheus,) = datasource["datasources"]
    assert prometheus["uid"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]


def _port(table: dict[str, Any]) -> int:
    return int(table["listen"].rsplit(":", 1)[1])


def test_container_config_listens_on_all_interfaces_and_stores_on_the_volume() -> None:
    config = tomllib.loads(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    assert config["server"]["listen"] == "0.0.0.0:8080"
    assert config["admin"]["listen"] == "0.0.0.0:8081"
    assert config["storage"]["url"] == "sqlite:////var/lib/relay/relay.db"
    assert config["inbound"][0]["path"] == "/hooks/mailchimp/audience"
    assert config["destination"][0]["url"] == "${CRM_URL}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_builds_a_wheel_in_a_separate_stage() -> None:
    froms = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert any(
        "pip wheel" in arguments
        for keyword, arguments in _dockerfile_instructions()
        if keyword == "RUN"
    )


def test_dockerfile_final_stage_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in _final_stage() if keyword == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_has_a_healthcheck_on_healthz_and_stops_with_sigterm() -> None:
    stage = dict(_final_stage())
    assert "/healthz" in stage["HEALTHCHECK"]
    assert "curl" not in stage["HEALTHCHECK"]  # python:3.11-slim has none
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert stage["EXPOSE"] == "8080 8081"  # the public and the operator address
    assert "/var/lib/relay" in stage["VOLUME"]
    assert json.loads(stage["ENTRYPOINT"]) == ["relay"]
    assert json.loads(stage["CMD"]) == ["serve", "--config", "/etc/relay/relay.toml"]


def test_dockerfile_copies_files_that_exist() -> None:
    for keyword, arguments in _dockerfile_instructions():
        if keyword == "COPY" and "--from" not in arguments:
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), source


# --- systemd ---------------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_is_hardened() -> None:
    settings = _unit_settings()
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "relay",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert "@system-service" in settings["SystemCallFilter"]


def test_systemd_unit_runs_relay_with_secrets_and_a_stop_timeout() -> None:
    settings = _unit_settings()
    assert settings["ExecStart"] == [
        "/opt/relay/.venv/bin/relay serve --config /etc/relay/relay.toml"
    ]
    assert settings["EnvironmentFile"] == ["-/etc/relay/relay.env"]
    assert settings["TimeoutStopSec"] == ["45"]
    assert settings["Restart"] == ["on-failure"]
    # ProcSubset=pid hides /proc/stat, and prometheus-client then drops every process_* metric.
    assert "ProcSubset" not in settings


# --- Kubernetes ------------------------------------------------------------------------------


def _kubernetes(name: str) -> list[dict[str, Any]]:
    text = (KUBERNETES / name).read_text(encoding="utf-8")
    return [document for document in yaml.safe_load_all(text) if document]


def test_statefulset_runs_one_hardened_replica() -> None:
    (statefulset,) = _kubernetes("statefulset.yaml")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1  # SQLite has one writer
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 45
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_statefulset_uid_matches_the_image_user() -> None:
    (statefulset,) = _kubernetes("statefulset.yaml")
    pod_security = statefulset["spec"]["template"]["spec"]["securityContext"]
    image_user = [arguments for keyword, arguments in _final_stage() if keyword == "USER"][-1]
    assert f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}" == image_user


def test_statefulset_mounts_its_volume_config_and_secret() -> None:
    (statefulset,) = _kubernetes("statefulset.yaml")
    (configmap,) = _kubernetes("configmap.yaml")
    (secret,) = _kubernetes("secret.example.yaml")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert mounts["/var/lib/relay"] == claim["metadata"]["name"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes[mounts["/etc/relay"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    relay_toml = configmap["data"]["relay.toml"]
    assert _env_references(relay_toml) <= secret["stringData"].keys()
    config = tomllib.loads(relay_toml)
    assert config["storage"]["url"] == "sqlite:////var/lib/relay/relay.db"
    assert container["ports"] == [
        {"name": "http", "containerPort": _port(config["server"]), "protocol": "TCP"},
        {"name": "admin", "containerPort": _port(config["admin"]), "protocol": "TCP"},
    ]


def test_services_route_to_the_statefulset_pods() -> None:
    (statefulset,) = _kubernetes("statefulset.yaml")
    services = {service["metadata"]["name"]: service for service in _kubernetes("service.yaml")}
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    named_ports = {port["name"] for port in container["ports"]}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] in named_ports
    # One Service per port: the public one never routes to the operator address.
    assert [p["targetPort"] for p in services["relay"]["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in services["relay-admin"]["spec"]["ports"]] == ["admin"]


def test_servicemonitor_scrapes_only_the_operator_service() -> None:
    (monitor,) = _kubernetes("servicemonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    matching = [
        service["metadata"]["name"]
        for service in _kubernetes("service.yaml")
        if selector.items() <= service["metadata"]["labels"].items()
    ]
    # /metrics is on the operator port, so the operator Service is scraped; its jobLabel gives
    # the job name the alert rules select on.
    assert matching == ["relay-admin"]
    (service,) = [s for s in _kubernetes("service.yaml") if s["metadata"]["name"] == "relay-admin"]
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "relay"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")


def test_readme_writes_the_relay_command_one_way_and_says_how_to_run_and_stop_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # Said once, where make run is explained; everywhere else the command is plain `relay`.
    assert readme.count(".venv/bin/relay") == 1
    assert "`make run` installs the `relay` command into `.venv/bin`" in readme
    assert "make run CONFIG=" in readme
    assert "Ctrl-C" in readme
