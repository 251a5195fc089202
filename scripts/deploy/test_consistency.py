"""The Dockerfile, docker-compose.yml and the chart against the code (no Docker engine here): binary
names from `cargo metadata`, ports, BANK_* variables that are real settings, files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import settings
import yaml

ROOT = settings.ROOT
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
VALUES = yaml.safe_load((ROOT / "helm" / "bankmesh" / "values.yaml").read_text())
SERVICES = ["identity", "accounts", "ledger", "cards", "notifications", "gateway"]
DEV_SECRETS = (ROOT / "deploy" / "compose" / "dev-secrets.sh").read_text()


def dockerfile_binaries() -> list[str]:
    (line,) = re.findall(r"for bin in ([a-z ]+); do", DOCKERFILE)
    return line.split()


def mesh_services() -> dict[str, dict]:
    return {name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "bankmesh:dev"}


def test_every_service_binary_is_in_the_image():
    bins = settings.binaries()
    shipped = dockerfile_binaries()
    assert set(shipped) <= set(bins), f"not binaries of the workspace: {set(shipped) - set(bins)}"
    # Every binary but the load generator (bench/, ships nothing) goes into the image.
    assert set(shipped) == set(bins) - {"loadgen"}
    assert set(SERVICES) <= set(shipped) and "healthcheck" in shipped


def test_dockerfile_builds_and_runs_as_intended():
    assert re.search(r"cargo chef cook .*--recipe-path recipe\.json", DOCKERFILE), "dependency layer"
    # Dependencies are cooked before the sources are copied in.
    assert DOCKERFILE.index("cargo chef cook") < DOCKERFILE.index("COPY . .", DOCKERFILE.index("cargo chef cook"))
    assert DOCKERFILE.index("COPY . .", DOCKERFILE.index("cargo chef cook")) < DOCKERFILE.index("RUN cargo build")
    assert "--locked" in DOCKERFILE and "SQLX_OFFLINE=true" in DOCKERFILE
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)[-1]
    assert user.split(":")[0] not in {"0", "root"}, "the runtime stage runs as non-root"
    final = DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]
    assert "distroless" in final.splitlines()[1] or "FROM gcr.io/distroless" in final
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["/usr/local/bin/healthcheck", "127\.0\.0\.1:9090"', DOCKERFILE)
    # Nothing fetched from outside the registries at build time (base images and crates.io only).
    for forbidden in ("curl ", "wget ", "git clone", "ADD http", "apt-get install"):
        assert forbidden not in DOCKERFILE, forbidden
    images = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    external = [i for i in images if not i.startswith(("chef", "docker.io/library/rust:", "gcr.io/distroless/"))]
    assert not external, external


def test_sqlx_needs_no_database_at_build_time():
    """ADR 0006: no compile-time-checked sqlx macros, so no .sqlx/ offline data is needed."""
    macros = re.compile(r"\bsqlx::(query|query_as|query_scalar|query_file\w*)!\s*\(|^\s*(query|query_as|query_scalar)!\s*\(", re.M)
    sources = [p for top in ("libs", "services", "bench") for p in (ROOT / top).rglob("*.rs")]
    hits = [p for p in sources if macros.search(p.read_text())]
    assert not hits, f"compile-time sqlx macros need .sqlx/ data for SQLX_OFFLINE builds: {hits}"


def test_docker_context_keeps_what_the_build_reads():
    ignored = [l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "proto", "libs", "services", "bench"]
    for path in needed:
        assert path not in ignored, f".dockerignore drops {path}, which the build needs"
    # include_str!/include_bytes! of files in the tree must stay in the context.
    for src in list((ROOT / "libs").rglob("*.rs")) + list((ROOT / "services").rglob("*.rs")):
        for rel in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', src.read_text()):
            target = (src.parent / rel).resolve()
            assert target.exists(), f"{src}: {rel}"
            top = target.relative_to(ROOT).parts[0]
            assert top not in ignored, f"{rel} is excluded from the Docker context"


def test_exposed_ports_are_the_listeners():
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.M)[0].split()}
    assert {VALUES["ports"]["grpc"], VALUES["ports"]["http"], VALUES["ports"]["admin"]} <= exposed
    # The platform's defaults: listen 0.0.0.0:50051, admin 0.0.0.0:9090 (libs/platform/src/config.rs).
    platform = (ROOT / "libs" / "platform" / "src" / "config.rs").read_text()
    assert "SocketAddr::from(([0, 0, 0, 0], 50051))" in platform and VALUES["ports"]["grpc"] == 50051
    assert "SocketAddr::from(([0, 0, 0, 0], 9090))" in platform and VALUES["ports"]["admin"] == 9090


def test_compose_runs_every_service_from_the_image():
    mesh = mesh_services()
    assert sorted(mesh) == sorted(SERVICES)
    bins = settings.binaries()
    for name, svc in mesh.items():
        assert svc["command"] == [name] and name in bins
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert svc["user"].split(":")[0] not in {"0", "root"}
        assert "no-new-privileges:true" in svc["security_opt"]


def test_compose_variables_are_real_settings():
    for name, svc in mesh_services().items():
        for var in svc["environment"]:
            path = settings.env_to_path(var)
            if path is not None:
                assert settings.path_ok(name, path), f"{name}: {var} is not a setting of {name}"


def test_compose_secret_files_are_generated_and_mounted():
    for name, svc in mesh_services().items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        for var, value in svc["environment"].items():
            if var.endswith("_FILE"):
                directory, file = value.rsplit("/", 1)
                assert mounts.get(directory) == "secrets", f"{name}: {value} is not in the secrets volume"
                stem = re.sub(r"-(identity|accounts|ledger|cards|notifications|gateway)$", "-${svc}", file)
                assert f"/{file}" in DEV_SECRETS or f"/{stem}" in DEV_SECRETS, f"{file} is never generated"
            if re.search(r"(SECRET|KEK|PASSWORD|BOOTSTRAP__ADMIN|CLIENTS)", var):
                assert var.endswith("_FILE"), f"{name}: {var} puts a secret in the environment"
        if "BANK_DATABASE__URL_FILE" in svc["environment"]:
            assert svc["environment"]["BANK_DATABASE__URL_FILE"].endswith(f"database-url-{name}")


def test_compose_ports_urls_and_health():
    mesh = mesh_services()
    listen = {n: int(s["environment"]["BANK_SERVER__LISTEN_ADDR"].rsplit(":", 1)[1]) for n, s in mesh.items()}
    for name, svc in mesh.items():
        env = svc["environment"]
        admin = env["BANK_SERVER__ADMIN_ADDR"].rsplit(":", 1)[1]
        assert svc["healthcheck"]["test"][1:] == ["/usr/local/bin/healthcheck", f"127.0.0.1:{admin}", "/health/ready"]
        for var, value in env.items():
            m = re.fullmatch(r"https?://([a-z-]+):(\d+)", str(value))
            # Links in emails point at the browser's frontend, not at a compose service.
            if m and var != "BANK_EMAIL__LINK_BASE_URL":
                host, port = m.group(1), int(m.group(2))
                assert host in COMPOSE["services"], f"{name}: {var} names no compose service"
                if host in mesh:
                    assert port == listen[host], f"{name}: {var} port {port} != {host}'s {listen[host]}"
        deps = svc["depends_on"]
        for infra in ("postgres", "redis"):
            assert deps[infra]["condition"] == "service_healthy"
        if name != "identity":
            assert deps["identity"]["condition"] == "service_healthy"
    gateway_deps = mesh["gateway"]["depends_on"]
    assert all(gateway_deps[s]["condition"] == "service_healthy" for s in SERVICES if s != "gateway")
    assert any(p.endswith(f":{listen['gateway']}") for p in mesh["gateway"]["ports"])


def test_compose_databases_and_infrastructure():
    initdb = (ROOT / "deploy" / "compose" / "initdb.sql").read_text()
    for name, svc in mesh_services().items():
        if "database" in settings.tree(name):
            assert f"CREATE DATABASE bank_{name};" in initdb
            assert (ROOT / "services" / name / "migrations").is_dir()
        assert (name == "gateway") == ("database" not in settings.tree(name))
    services = COMPOSE["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "mailpit" in services["mailpit"]["image"] and "jaeger" in services["jaeger"]["image"]
    collector = yaml.safe_load((ROOT / "deploy" / "compose" / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    for svc in mesh_services().values():
        assert svc["environment"]["BANK_TELEMETRY__OTLP_ENDPOINT"] == "http://otel-collector:4317"
    for mount in [v for s in services.values() for v in s.get("volumes", [])]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{source} is missing"


def test_chart_secret_files_match_the_settings():
    """Each component's secret files in the chart are settings it reads, and every required secret
    setting of the code is provided (database.url, redis.url, keys.kek, vault.keks, auth.client_secret)."""
    helpers = (ROOT / "helm" / "bankmesh" / "templates" / "_helpers.tpl").read_text()
    block = helpers[helpers.index('define "bankmesh.secretFiles"') :]
    block = block[block.index("\n") + 1 : block.index("{{- end -}}")]
    files = yaml.safe_load(block)
    assert sorted(files) == sorted(SERVICES)
    for name, entries in files.items():
        paths = {settings.env_to_path(e["env"]) for e in entries}
        for path in paths:
            assert settings.path_ok(name, path), f"{name}: {path}"
        tree = settings.tree(name)
        required = {"redis.url"} | ({"database.url"} if "database" in tree else set())
        required |= {"keys.kek"} if "keys" in tree else set()
        required |= {"vault.keks"} if "vault" in tree else set()
        required |= {"auth.client_secret"} if name != "identity" else set()
        assert required <= paths, f"{name} misses {required - paths}"
    assert sorted(VALUES["services"]) == sorted(SERVICES)


def test_config_files_exist_where_the_code_reads_them():
    # BANK_CONFIG_DIR holds <BANK_ENV>.toml; the chart renders it, compose uses `local` (file optional).
    for svc in mesh_services().values():
        assert svc["environment"]["BANK_ENV"] == "local"
    assert "ENV BANK_ENV=production" in DOCKERFILE and "BANK_CONFIG_DIR=/etc/bankmesh/config" in DOCKERFILE
    configmap = (ROOT / "helm" / "bankmesh" / "templates" / "configmap.yaml").read_text()
    assert "{{ $.Values.environment }}.toml" in configmap
    assert Path(ROOT / "libs" / "platform" / "src" / "bin" / "healthcheck.rs").is_file()
