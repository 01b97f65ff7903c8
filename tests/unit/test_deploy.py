"""deploy/ is checked by linting and rendering (no container engine here): the compose file
through docker-compose's own validation, Prometheus config and rules through promtool, the
Kubernetes manifests against the API's JSON schemas (kubernetes-validate, strict), the Grafana
dashboard and alert rules against the metrics the app really exports, and the Dockerfile's
shape (multi-stage, non-root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
MISSING = "{} missing: 'make test' installs it (scripts/system-deps.sh)"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(MISSING.format(name))
    return path


def test_compose_file_is_valid_and_runs_two_workers_with_the_stack():
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "CONTROL_TOKEN": "y", "GRAFANA_ADMIN_PASSWORD": "z"}
    out = subprocess.run([tool("docker-compose"), "-f", str(DEPLOY / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, env=env, cwd=DEPLOY)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    brokers = ("kafka-1", "kafka-2", "kafka-3")
    assert {*brokers, "timescaledb", "worker-1", "worker-2", "prometheus", "grafana", "migrate"} <= set(services)
    envs = [services[b]["environment"] for b in brokers]
    assert all("KAFKA_PROCESS_ROLES" in e for e in envs), "KRaft, no ZooKeeper"
    assert len({e["KAFKA_NODE_ID"] for e in envs}) == 3 and len({e["CLUSTER_ID"] for e in envs}) == 1
    assert {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs} == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert all(e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3" and e["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
               for e in envs)
    for w in ("worker-1", "worker-2"):
        env_w = services[w]["environment"]
        assert (env_w["TOPIC_REPLICATION_FACTOR"], env_w["TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert [b.split("://")[1] for b in env_w["KAFKA_BROKER"].split(";")] == [f"{b}:9092" for b in brokers]
        assert set(brokers) <= set(services[w]["depends_on"])
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb")
    hosts = {services[w]["environment"]["WEB_HOST"] for w in ("worker-1", "worker-2")}
    assert hosts == {"worker-1", "worker-2"}, "each worker advertises its own host for table routing"
    volumes = [v.split(":")[0] if isinstance(v, str) else v["source"]
               for w in ("worker-1", "worker-2") for v in services[w]["volumes"]]
    assert len(set(volumes)) == 2, "a RocksDB volume per worker"
    # secrets are required from the environment, never defaulted in the file
    missing = subprocess.run([tool("docker-compose"), "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                             capture_output=True, text=True, cwd=DEPLOY,
                             env={k: v for k, v in env.items() if k != "CONTROL_TOKEN"})
    assert missing.returncode != 0 and "CONTROL_TOKEN" in missing.stderr


def test_prometheus_config_and_alert_rules_pass_promtool():
    promtool = tool("promtool")
    rules = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                           capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run([promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.mark.parametrize("manifest", K8S, ids=[p.name for p in K8S])
def test_kubernetes_manifests_validate_against_the_api_schemas(manifest):
    import kubernetes_validate

    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc.get("kind") == "Kustomization":
            assert {(DEPLOY / "k8s" / r).exists() for r in doc["resources"]} == {True}
            continue
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_statefulset_has_a_volume_per_worker_probes_on_health_views_and_config_from_a_secret():
    sts = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    spec = sts["spec"]
    assert sts["kind"] == "StatefulSet" and spec["replicas"] >= 2
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = spec["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready/"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live/"
    assert {"secretRef": {"name": "moondev-secrets"}} in c["envFrom"]
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    assert (config["TOPIC_REPLICATION_FACTOR"], config["TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    pdb = yaml.safe_load((DEPLOY / "k8s" / "pdb.yaml").read_text())
    assert pdb["kind"] == "PodDisruptionBudget"
    assert pdb["spec"]["selector"] == spec["selector"]


def _exported_metric_names() -> set[str]:
    import app  # noqa: F401  (registers every metric, Faust's sensors included)
    from core.metrics import REGISTRY

    names: set[str] = set()
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
                "gauge": [""], "summary": ["_count", "_sum"]}
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def _referenced(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in re.findall(r"\b((?:moondev|faust)_[a-z0-9_]+)", e)}


def test_grafana_dashboard_and_alerts_only_use_metrics_the_app_exports():
    exported = _exported_metric_names()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "moondev.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alert_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = _referenced(exprs + alert_exprs)
    assert len(used) >= 15
    assert used - exported == set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {t["datasource"]["uid"] for t in dashboard["panels"]} == {prov["datasources"][0]["uid"]}


def test_dockerfile_is_multi_stage_and_runs_as_non_root():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.M)
    assert len(stages) >= 2
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    runtime = text.split(f"AS {stages[-1]}", 1)[1]
    assert "build-essential" not in runtime, "compilers stay in the build stage"
    assert "COPY --from=build" in runtime
    packages = re.search(r'packages = \[(.*?)\]', (ROOT / "pyproject.toml").read_text()).group(1)
    for pkg in re.findall(r'"(\w+)"', packages):
        assert f"COPY {pkg} ./{pkg}" in text, f"package {pkg} is copied into the build"


def test_compose_cluster_id_is_a_kraft_cluster_id():
    import base64
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    cid = compose["x-broker"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16, "kafka-storage format needs a 16-byte id"


def test_kafka_acls_render_per_role_and_give_ingest_no_order_path():
    """deploy/kafka/acls.json renders to kafka-acls arguments; the feed role writes market data
    only, the reader writes nothing, and an empty TOPIC_PREFIX becomes the literal wildcard."""
    import json

    from app.commands import ACL_SPEC, acl_bindings

    spec = json.loads(ACL_SPEC.read_text())
    rendered = acl_bindings(spec, "prod.", "moondev")
    by = {}
    for principal, args in rendered:
        by.setdefault(principal, []).append(args)
    assert set(by) == {"moondev", "ingest", "reader"}
    ingest_topics = {a[a.index("--topic") + 1] for a in by["ingest"] if "--topic" in a}
    assert ingest_topics == {"prod.price.ticks", "prod.liquidation.events", "prod.sentiment.updates",
                             "prod.dead.letters"}
    assert not any("Read" in a for a in by["ingest"])
    assert not any(op in a for a in by["reader"] for op in ("Write", "Create", "All"))
    wide = acl_bindings(spec, "", "moondev")
    assert ["--topic", "*", "--resource-pattern-type", "literal"] == [
        x for x in wide[0][1] if x in ("--topic", "*", "--resource-pattern-type", "literal")]
