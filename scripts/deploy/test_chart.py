"""Security and operability properties of every rendered manifest set: the chart with its default
values, with the production-like values, k8s/base and (when kubectl is present) the dev overlay."""

from __future__ import annotations

import re
import tomllib

import settings

COMPONENTS = ["identity", "accounts", "ledger", "cards", "notifications", "gateway"]
SECRET_WORDS = re.compile(r"(URL|SECRET|KEK|PASSWORD|TOKEN|BOOTSTRAP__ADMIN|CLIENTS)", re.I)
SECRET_SETTINGS = {"url", "kek", "keks", "client_secret", "admin", "service_clients", "password"}


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def component(obj) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def pod(deploy):
    return deploy["spec"]["template"]["spec"]


def toml_of(docs, comp) -> dict:
    (cm,) = [c for c in kinds(docs, "ConfigMap") if component(c) == comp]
    (text,) = cm["data"].values()
    return tomllib.loads(text)


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    assert m, f"unexpected duration {text!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def expected_callees() -> dict[str, set[str]]:
    """Who calls whom, from the settings in the code: every binary with an [auth] section verifies
    tokens against identity; accounts and cards have ledger_url; cards has accounts_url; the gateway
    has one upstream per service."""
    calls = {}
    for comp in COMPONENTS:
        tree = settings.tree(comp)
        callees = set()
        if "auth" in tree and comp != "identity":
            callees.add("identity")
        if "ledger_url" in tree:
            callees.add("ledger")
        if "accounts_url" in tree:
            callees.add("accounts")
        if "upstreams" in tree:
            callees |= {k for k in tree["upstreams"] if k in COMPONENTS}
        calls[comp] = callees
    return calls


def test_every_component_is_deployed(docs):
    assert sorted(component(d) for d in kinds(docs, "Deployment")) == sorted(COMPONENTS)
    assert sorted(component(d) for d in kinds(docs, "Service")) == sorted(COMPONENTS)


def test_containers_run_non_root_read_only_without_privileges(docs):
    for deploy in kinds(docs, "Deployment"):
        spec = pod(deploy)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key)
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc.get("privileged", False) is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), c["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]


def test_resources_and_topology_spread(docs):
    for deploy in kinds(docs, "Deployment"):
        for c in pod(deploy)["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]
        keys = {t["topologyKey"] for t in pod(deploy)["topologySpreadConstraints"]}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys


def test_probes_use_the_platform_health_names(docs):
    """ADR 0004: `liveness` stays SERVING while the process runs; "" follows PostgreSQL and Redis."""
    for deploy in kinds(docs, "Deployment"):
        (c,) = pod(deploy)["containers"]
        probes = {p: c[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        if component(deploy) == "gateway":
            assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
            assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
            assert probes["startupProbe"]["httpGet"]["path"] == "/health/live"
            assert all(p["httpGet"]["port"] == "admin" for p in probes.values())
        else:
            assert probes["livenessProbe"]["grpc"]["service"] == "liveness"
            assert probes["startupProbe"]["grpc"]["service"] == "liveness"
            assert probes["readinessProbe"]["grpc"]["service"] == ""
            grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
            assert all(p["grpc"]["port"] == grpc_port for p in probes.values())


def test_grace_period_outlasts_the_drain(docs):
    for deploy in kinds(docs, "Deployment"):
        server = toml_of(docs, component(deploy))["server"]
        (c,) = pod(deploy)["containers"]
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = pre_stop + seconds(server["shutdown_delay"]) + seconds(server["shutdown_grace"])
        assert pod(deploy)["terminationGracePeriodSeconds"] > drain, component(deploy)
        assert seconds(server["shutdown_delay"]) > 0, "behind a Service the drain needs a delay"


def test_no_secret_value_is_inlined(docs):
    assert not kinds(docs, "Secret"), "the chart never creates Secrets (existingSecret only)"
    for deploy in kinds(docs, "Deployment"):
        volumes = {v["name"]: v for v in pod(deploy)["volumes"]}
        for c in pod(deploy)["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            items = {i["key"] for i in volumes["secrets"]["secret"]["items"]}
            for env in c["env"]:
                assert "valueFrom" not in env, f"{env['name']}: secrets come as files, not env"
                if SECRET_WORDS.search(env["name"]):
                    assert env["name"].endswith("_FILE"), f"{env['name']} would carry a secret in env"
                if env["name"].endswith("_FILE"):
                    path = env["value"]
                    assert path.startswith(mounts["secrets"] + "/"), path
                    assert path.rsplit("/", 1)[1] in items, f"{path} is not mounted"
    for comp in COMPONENTS:
        paths = settings.flatten(toml_of(docs, comp))
        leaked = [p for p in paths if p.split(".")[-1] in SECRET_SETTINGS]
        assert not leaked, f"{comp}: secret settings in a ConfigMap: {leaked}"


def test_rendered_settings_are_real_settings(docs):
    """The TOML and the BANK_* variables name settings of the binary the container runs."""
    bins = settings.binaries()
    for deploy in kinds(docs, "Deployment"):
        comp = component(deploy)
        (c,) = pod(deploy)["containers"]
        binary = c["command"][0].rsplit("/", 1)[1]
        assert binary == comp and binary in bins
        for path in settings.flatten(toml_of(docs, comp)):
            assert settings.path_ok(binary, path), f"{comp}: {path} is not a setting"
        for env in c["env"]:
            path = settings.env_to_path(env["name"])
            if path:
                assert settings.path_ok(binary, path), f"{comp}: {env['name']} is not a setting"
        names = {e["name"] for e in c["env"]}
        assert {"BANK_ENV", "BANK_CONFIG_DIR"} <= names
        config_dir = next(e["value"] for e in c["env"] if e["name"] == "BANK_CONFIG_DIR")
        env = next(e["value"] for e in c["env"] if e["name"] == "BANK_ENV")
        assert any(m["mountPath"] == config_dir and m["name"] == "config" for m in c["volumeMounts"])
        (cm,) = [m for m in kinds(docs, "ConfigMap") if component(m) == comp]
        assert f"{env}.toml" in cm["data"], "config/<BANK_ENV>.toml must exist outside `local`"


def test_listeners_match_ports_and_services(docs):
    for deploy in kinds(docs, "Deployment"):
        comp = component(deploy)
        server = toml_of(docs, comp)["server"]
        (c,) = pod(deploy)["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        main = "http" if comp == "gateway" else "grpc"
        assert int(server["listen_addr"].rsplit(":", 1)[1]) == ports[main]
        assert int(server["admin_addr"].rsplit(":", 1)[1]) == ports["admin"]
        (svc,) = [s for s in kinds(docs, "Service") if component(s) == comp]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} == {main, "admin"}


def test_urls_point_at_the_services(docs):
    services = {s["metadata"]["name"]: s for s in kinds(docs, "Service")}
    for comp in COMPONENTS:
        cfg = toml_of(docs, comp)
        urls = [cfg.get("auth", {}).get("identity_url"), cfg.get("ledger_url")]
        urls += [v for k, v in cfg.get("upstreams", {}).items() if k in COMPONENTS]
        for url in filter(None, urls):
            host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()
            assert host in services, f"{comp}: {url} names no Service"
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


def test_network_policies_allow_only_what_the_code_calls(docs):
    policies = {component(n): n for n in kinds(docs, "NetworkPolicy")}
    assert set(policies) == set(COMPONENTS), "every pod has a NetworkPolicy"
    expected = expected_callees()
    for comp, np in policies.items():
        spec = np["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        egress_to = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in spec["egress"] for peer in rule.get("to", [])
            if "app.kubernetes.io/component" in peer.get("podSelector", {}).get("matchLabels", {})
        }
        assert egress_to == expected[comp], f"{comp} may reach {egress_to}, calls {expected[comp]}"
        callers = {c for c, callees in expected.items() if comp in callees}
        for rule in spec.get("ingress") or []:
            ports = {p["port"] for p in rule["ports"]}
            if comp == "gateway" and ports == {"http"}:
                continue  # the one entry point
            if ports == {"admin"}:
                assert rule.get("from"), "metrics scrapers must be named"
                continue
            assert ports == {"grpc"}, f"{comp}: unexpected ingress ports {ports}"
            sources = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]}
            assert sources == callers, f"{comp} takes calls from {sources}, callers are {callers}"


def test_pdb_and_hpa_target_real_deployments(docs):
    deployments = {d["metadata"]["name"]: d for d in kinds(docs, "Deployment")}
    for pdb in kinds(docs, "PodDisruptionBudget"):
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert any(pod_labels(d) | labels == pod_labels(d) for d in deployments.values())
        assert "maxUnavailable" in pdb["spec"]
    for hpa in kinds(docs, "HorizontalPodAutoscaler"):
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "an HPA-managed Deployment sets no replicas"
        assert hpa["spec"]["minReplicas"] >= 2


def pod_labels(deploy) -> dict:
    return deploy["spec"]["template"]["metadata"]["labels"]


def test_production_case_pins_the_image_and_exports_traces():
    from conftest import CASES

    docs = CASES["production"]
    for deploy in kinds(docs, "Deployment"):
        assert "@sha256:" in pod(deploy)["containers"][0]["image"]
        assert toml_of(docs, component(deploy))["telemetry"]["otlp_endpoint"].startswith("http")
    assert kinds(docs, "Ingress")[0]["spec"]["tls"], "the production ingress terminates TLS"
    assert kinds(docs, "ServiceMonitor") and kinds(docs, "PrometheusRule")


def test_alerts_use_metrics_the_code_exports():
    from conftest import CASES, ROOT

    exported = set()
    for path in list((ROOT / "libs").rglob("*.rs")) + list((ROOT / "services").rglob("*.rs")):
        exported |= set(re.findall(r'(?:counter|histogram|gauge)!\(\s*"([a-z_]+)"', path.read_text()))
    (rule,) = kinds(CASES["production"], "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            names = set(re.findall(r"\b([a-z]+(?:_[a-z0-9]+)+)\b", alert["expr"]))
            metrics = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names if n.split("_")[0] in
                       {"grpc", "gateway", "auth", "identity", "ledger", "accounts", "dependency"}}
            assert metrics, alert["alert"]
            assert metrics <= exported, f"{alert['alert']}: {metrics - exported} not exported by the code"


def test_monitoring_resources_are_well_formed():
    """ServiceMonitor and PrometheusRule are CRDs (no schema in kubernetes-validate): check them here."""
    from conftest import CASES

    docs = CASES["production"]
    (monitor,) = kinds(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = kinds(docs, "Service")
    assert all(s["metadata"]["labels"] | selector == s["metadata"]["labels"] for s in services)
    assert monitor["spec"]["endpoints"] == [monitor["spec"]["endpoints"][0]]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert all("admin" in {p["name"] for p in s["spec"]["ports"]} for s in services)
    (rule,) = kinds(docs, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len({a["alert"] for a in alerts}) == len(alerts) >= 10
    for a in alerts:
        assert a["labels"]["severity"] in {"warning", "critical"} and a["annotations"]["summary"]


def test_schema_refuses_unsafe_values():
    import helm_python as helm
    import pytest
    import render

    bad = [
        {"containerSecurityContext": {"allowPrivilegeEscalation": True, "readOnlyRootFilesystem": True}},
        {"containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"environment": "local"},
        {"image": {"repository": "x", "digest": "latest"}},
        {"services": {"ledger": {"enabled": True, "resources": {}, "password": "x"}}},
        {"shutdown": {"preStopSleepSeconds": 0, "delaySeconds": 5, "graceSeconds": 20, "marginSeconds": 10}},
    ]
    with helm.Chart.load(str(render.CHART)) as chart:
        for values in bad:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(values)


def test_disabled_components_leave_no_trace():
    """Disabling components removes their objects, the gateway's readiness stops waiting for them and
    no NetworkPolicy names them."""
    import render

    values = {"services": {"cards": {"enabled": False}, "notifications": {"enabled": False}}}
    docs = render.documents(render.render(values))
    assert {component(d) for d in docs if "component" in str(d["metadata"].get("labels", {}))} == {
        "identity", "accounts", "ledger", "gateway"}
    assert toml_of(docs, "gateway")["upstreams"]["required_for_readiness"] == ["identity", "accounts", "ledger"]
    for np in kinds(docs, "NetworkPolicy"):
        assert "cards" not in str(np["spec"]) and "notifications" not in str(np["spec"])
