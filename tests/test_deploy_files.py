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
from urllib.parse import urlsplit

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
        "Dead letters",
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
        "RelayDestinationCircuitOpen",
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


def test_systemd_reload_checks_the_config_then_sends_sighup() -> None:
    assert _unit_settings()["ExecReload"] == [
        "/opt/relay/.venv/bin/relay check-config --config /etc/relay/relay.toml",
        "/bin/kill -HUP $MAINPID",
    ]


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


# --- PostgreSQL: compose with a load balancer, Kubernetes Deployment -------------------------

COMPOSE_POSTGRES = DEPLOY / "docker-compose.postgres.yml"
POSTGRES_CONTAINER_CONFIG = DEPLOY / "relay.postgres.toml"
HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"
KUBERNETES_POSTGRES = KUBERNETES / "postgresql"
CONFIG_PATH = "/etc/relay/relay.toml"


def _compose_postgres() -> dict[str, Any]:
    compose: dict[str, Any] = _load_yaml(COMPOSE_POSTGRES)
    return compose


def _compose_relays() -> dict[str, dict[str, Any]]:
    """The services that run `relay serve`."""
    return {
        name: service
        for name, service in _compose_postgres()["services"].items()
        if service.get("command", [""])[0] == "serve"
    }


def _haproxy_sections() -> dict[str, list[str]]:
    """'backend relays' -> its lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(" ".join(line.split()))
    return sections


def _grace(toml_text: str) -> float:
    server = tomllib.loads(toml_text).get("server", {})
    return float(server.get("shutdown_grace", 10.0))


def _seconds(duration: str) -> int:
    return int(duration.removesuffix("s"))


def test_postgres_compose_bind_mounts_and_the_secret_file_path_are_in_deploy() -> None:
    compose = _compose_postgres()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_POSTGRES.parent / source).exists(), f"{name}: {source}"
    secret_file = compose["secrets"]["postgres_password"]["file"]
    assert (COMPOSE_POSTGRES.parent / secret_file).resolve().is_relative_to(DEPLOY)
    # Made by the operator, never committed.
    assert "secrets/" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_postgres_compose_runs_relay_migrate_once_before_two_relays_start() -> None:
    services = _compose_postgres()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate", "--config", CONFIG_PATH]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (COMPOSE_POSTGRES.parent / migrate["build"]["context"]).resolve() == ROOT
    relays = _compose_relays()
    assert len(relays) >= 2
    for name, relay in relays.items():
        assert relay["command"] == ["serve", "--config", CONFIG_PATH], name
        assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert relay["image"] == migrate["image"] and relay["volumes"] == migrate["volumes"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in relay["volumes"]}
        assert (COMPOSE_POSTGRES.parent / mounts[CONFIG_PATH]).resolve() == (
            POSTGRES_CONTAINER_CONFIG
        )
    assert "healthcheck" in services["postgres"]


def test_postgres_compose_load_balancer_routes_to_every_relay_that_passes_readyz() -> None:
    compose = _compose_postgres()
    lb = compose["services"]["lb"]
    assert lb["image"].startswith("haproxy:")
    assert f"./{HAPROXY.relative_to(DEPLOY)}:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    relays = _compose_relays()
    assert set(lb["depends_on"]) == set(relays)
    config = tomllib.loads(POSTGRES_CONTAINER_CONFIG.read_text(encoding="utf-8"))
    public_port = config["server"]["listen"].rsplit(":", 1)[1]
    admin_port = config["admin"]["listen"].rsplit(":", 1)[1]
    sections = _haproxy_sections()

    def backend_of(frontend: str) -> list[str]:
        (name,) = [
            line.split()[1] for line in sections[f"frontend {frontend}"]
            if line.startswith("default_backend")
        ]  # fmt: skip
        return sections[f"backend {name}"]

    for frontend, port in (("webhooks", public_port), ("admin", admin_port)):
        backend = backend_of(frontend)
        assert "option httpchk GET /readyz" in backend
        assert "http-check expect status 200" in backend
        assert any(line.startswith("default-server check ") for line in backend)
        servers = {line.split()[2] for line in backend if line.startswith("server ")}
        assert servers == {f"{name}:{port}" for name in relays}, frontend
    # The public side lets through only what Mailchimp and health checks need; the operator
    # side is published on the host's loopback only.
    public = sections["frontend webhooks"]
    assert any(
        line.startswith("http-request deny") and "path_beg /hooks/" in line for line in public
    )
    assert f"bind :{public_port}" in public and f"bind :{admin_port}" in sections["frontend admin"]
    assert f"{public_port}:{public_port}" in lb["ports"]
    assert f"127.0.0.1:{admin_port}:{admin_port}" in lb["ports"]


def test_postgres_compose_keeps_the_database_password_in_a_secret_file() -> None:
    compose = _compose_postgres()
    config = tomllib.loads(POSTGRES_CONTAINER_CONFIG.read_text(encoding="utf-8"))
    assert urlsplit(config["storage"]["url"]).password is None
    password_file = config["storage"]["postgresql"]["password_file"]
    assert password_file == "/run/secrets/postgres_password"
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == password_file
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert not [key for key in environment if "PASSWORD" in key and not key.endswith("_FILE")]
        for value in environment.values():
            # Every secret comes from the operator's .env, none is written here.
            assert (
                "${" in str(value)
                or not any(word in str(value).lower() for word in ("secret", "token", "password"))
                or str(value).startswith("/run/secrets/")
            ), (name, value)
        if name in _compose_relays() or name == "migrate":
            assert service["secrets"] == ["postgres_password"]
            needed = _env_references(POSTGRES_CONTAINER_CONFIG.read_text(encoding="utf-8"))
            assert needed <= environment.keys()


def test_postgres_compose_gives_relays_longer_than_twice_their_shutdown_grace() -> None:
    grace = _grace(POSTGRES_CONTAINER_CONFIG.read_text(encoding="utf-8"))
    for name, relay in _compose_relays().items():
        assert _seconds(relay["stop_grace_period"]) > 2 * grace, name


def _kubernetes_postgres(name: str) -> dict[str, Any]:
    (document,) = _kubernetes(f"postgresql/{name}")
    return document


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def _postgres_relay_toml() -> str:
    text: str = _kubernetes_postgres("configmap.yaml")["data"]["relay.toml"]
    return text


def test_postgres_deployment_runs_several_replicas_spread_over_nodes() -> None:
    deployment = _kubernetes_postgres("deployment.yaml")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod(deployment)
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert (
        spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"].items() <= labels.items()
    )
    (anti,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False


@pytest.mark.parametrize("name", ["deployment.yaml", "migrate-job.yaml", "copy-store-job.yaml"])
def test_postgres_pods_are_hardened(name: str) -> None:
    pod = _pod(_kubernetes_postgres(name))
    image_user = [arguments for keyword, arguments in _final_stage() if keyword == "USER"][-1]
    security = pod["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == image_user
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"]


def test_every_postgres_relay_container_probes_readyz_and_healthz() -> None:
    (container,) = _pod(_kubernetes_postgres("deployment.yaml"))["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"] == ["serve", "--config", CONFIG_PATH]


def test_postgres_pods_get_longer_than_twice_the_shutdown_grace_and_the_prestop_pause() -> None:
    pod = _pod(_kubernetes_postgres("deployment.yaml"))
    (container,) = pod["containers"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = _grace(_postgres_relay_toml())
    assert pod["terminationGracePeriodSeconds"] > 2 * grace + pause


def test_pdb_keeps_all_but_one_replica_of_the_deployment() -> None:
    pdb = _kubernetes_postgres("pdb.yaml")
    deployment = _kubernetes_postgres("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 < deployment["spec"]["replicas"]


def test_postgres_services_route_to_the_deployment_pods_and_not_to_jobs() -> None:
    services = {s["metadata"]["name"]: s for s in _kubernetes("postgresql/service.yaml")}
    assert services.keys() == {"relay", "relay-admin"}
    deployment = _kubernetes_postgres("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = _pod(deployment)["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = tomllib.loads(_postgres_relay_toml())
    assert ports["http"] == int(config["server"]["listen"].rsplit(":", 1)[1])
    assert ports["admin"] == int(config["admin"]["listen"].rsplit(":", 1)[1])
    for name, target in (("relay", "http"), ("relay-admin", "admin")):
        selector = services[name]["spec"]["selector"].items()
        assert selector <= labels, name
        assert services[name]["spec"]["ports"][0]["targetPort"] == target
        for job in ("migrate-job.yaml", "copy-store-job.yaml"):
            job_labels = _kubernetes_postgres(job)["spec"]["template"]["metadata"]["labels"]
            assert not selector <= job_labels.items(), (name, job)
    # The ServiceMonitor scrapes the operator Service as it does the StatefulSet's.
    (monitor,) = _kubernetes("servicemonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    assert [n for n, s in services.items() if selector <= s["metadata"]["labels"].items()] == [
        "relay-admin"
    ]
    assert services["relay-admin"]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "relay"


def test_migrate_job_runs_relay_migrate_with_the_deployments_image_config_and_secrets() -> None:
    job = _kubernetes_postgres("migrate-job.yaml")
    deployment = _kubernetes_postgres("deployment.yaml")
    (migrate,) = _pod(job)["containers"]
    (relay,) = _pod(deployment)["containers"]
    assert migrate["args"] == ["migrate", "--config", CONFIG_PATH]
    assert migrate["image"] == relay["image"]
    assert migrate["envFrom"] == relay["envFrom"]
    assert _pod(job)["restartPolicy"] in {"Never", "OnFailure"}
    assert job["spec"]["backoffLimit"] >= 1

    def mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        return {
            m["mountPath"]: {k: v for k, v in volumes[m["name"]].items() if k != "name"}
            for m in container["volumeMounts"]
            if m["mountPath"] != "/tmp"
        }

    assert mounts(_pod(job), migrate) == mounts(_pod(deployment), relay)


def test_the_database_password_is_a_mounted_secret_file_never_inline() -> None:
    config = tomllib.loads(_postgres_relay_toml())
    assert config["storage"]["url"].startswith("postgresql://")
    assert urlsplit(config["storage"]["url"]).password is None
    password_file = Path(config["storage"]["postgresql"]["password_file"])
    secret = _kubernetes_postgres("secret.example.yaml")
    assert password_file.name in secret["stringData"]
    for name in ("deployment.yaml", "migrate-job.yaml", "copy-store-job.yaml"):
        pod = _pod(_kubernetes_postgres(name))
        (container,) = pod["containers"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (mount,) = [
            m for m in container["volumeMounts"] if m["mountPath"] == str(password_file.parent)
        ]
        assert volumes[mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"], name
        assert volumes[mount["name"]]["secret"]["defaultMode"] == 0o440, name
        assert not [env for env in container.get("env", []) if "PASSWORD" in env["name"]], name
    (sqlite_secret,) = _kubernetes("secret.example.yaml")
    assert _env_references(_postgres_relay_toml()) <= sqlite_secret["stringData"].keys()


def test_copy_store_job_copies_the_statefulsets_volume_into_the_configured_database() -> None:
    job = _kubernetes_postgres("copy-store-job.yaml")
    pod = _pod(job)
    (container,) = pod["containers"]
    words = " ".join(container["command"]).split()
    assert "copy-store" in words
    source, target = words[words.index("--from") + 1], words[words.index("--to") + 1]
    (statefulset,) = _kubernetes("statefulset.yaml")
    (configmap,) = _kubernetes("configmap.yaml")
    assert source == tomllib.loads(configmap["data"]["relay.toml"])["storage"]["url"]
    assert target == tomllib.loads(_postgres_relay_toml())["storage"]["url"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data = volumes[mounts["/var/lib/relay"]]["persistentVolumeClaim"]["claimName"]
    assert data == f"{claim['metadata']['name']}-{statefulset['metadata']['name']}-0"
    assert "PGPASSWORD=" in container["command"][-1]  # from the mounted file, not the spec


def _shipped_configs() -> list[tuple[str, str]]:
    (configmap,) = _kubernetes("configmap.yaml")
    return [
        ("relay.docker.toml", CONTAINER_CONFIG.read_text(encoding="utf-8")),
        ("relay.postgres.toml", POSTGRES_CONTAINER_CONFIG.read_text(encoding="utf-8")),
        ("kubernetes/configmap.yaml", configmap["data"]["relay.toml"]),
        ("kubernetes/postgresql/configmap.yaml", _postgres_relay_toml()),
    ]


@pytest.mark.parametrize(("name", "text"), _shipped_configs(), ids=lambda v: str(v)[:40])
def test_every_shipped_config_passes_check_config(tmp_path: Path, name: str, text: str) -> None:
    # The password file is mounted at run time; here a stand-in file takes its place.
    config = tomllib.loads(text)
    password_file = config["storage"].get("postgresql", {}).get("password_file")
    if password_file is not None:
        (tmp_path / "password").write_text("pw\n", encoding="utf-8")
        text = text.replace(password_file, str(tmp_path / "password"))
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin"} | dict.fromkeys(_env_references(text), "x")
    env["CRM_URL"] = "https://crm.example.com/hooks"
    done = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path}: ok:")


needs_haproxy = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy not installed (Debian: haproxy)"
)


@needs_haproxy
def test_haproxy_accepts_the_load_balancer_config() -> None:
    # The relays' names resolve only inside compose's network; init-addr lets HAProxy start
    # (and this check pass) without them.
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
