"""docker-compose.yml, the Dockerfile and the image's entrypoint against the code: every service
runs a real `lowtide` command, its variables are ones the CLI reads, and the ports it listens
on, checks and publishes are the ones the code and the SDK default to. A drift fails here;
scripts/compose-smoke runs the cluster for real.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from lowtide import _home
from lowtide.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
LOWTIDE_SERVICES = ["platform", "platform-2", "activator", "agent", "agent-gpu"]
AGENTS = ["agent", "agent-gpu"]
# Read by home_dir() rather than through build_parser's env lookups.
VARIABLES_READ_ELSEWHERE = {"LOWTIDE_HOME"}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
REQUIRED_VALUE = "value-of-a-required-variable"


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with nothing set in the shell: the default (or empty); a
    required ${VAR:?message} as if set to REQUIRED_VALUE."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(
            lambda m: REQUIRED_VALUE if m.group(2) == "?" else m.group(3) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return dict(interpolate(data))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


class RecordingEnv(dict[str, str]):
    """An environment that remembers which keys the parser looked up."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def variables_read_by_cli() -> set[str]:
    env = RecordingEnv()
    parser = build_parser(env)
    assert env.read, "build_parser no longer reads its defaults through env.get"
    del parser
    return env.read | VARIABLES_READ_ELSEWHERE


def service_args(service: dict[str, Any]) -> argparse.Namespace:
    """The service's command parsed as the container would: its environment as the defaults."""
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    env.setdefault("LOWTIDE_HOME", "/var/lib/lowtide")
    return build_parser(env).parse_args(service["command"])


def healthcheck_port(service: dict[str, Any]) -> int:
    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", "lowtide-healthcheck"], test
    return int(test[2])


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) of a service's `ports`."""
    result = {}
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = str(spec).split(":")
        result[int(container_port)] = (host_ip, int(host_port))
    return result


# ---- services and commands ------------------------------------------------------------
def test_the_cluster_has_redis_and_every_component(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", *LOWTIDE_SERVICES}


@pytest.mark.parametrize("name", LOWTIDE_SERVICES)
def test_each_component_runs_a_cli_command_that_parses(services: dict[str, Any],
                                                       name: str) -> None:
    service = services[name]
    command = service["command"]
    assert command[0] in COMMANDS
    assert service_args(service).command == command[0]


@pytest.mark.parametrize("name", LOWTIDE_SERVICES)
def test_components_share_one_image_built_from_this_repo(services: dict[str, Any],
                                                         name: str) -> None:
    service = services[name]
    assert service["image"] == services["platform"]["image"]
    assert service["build"]["context"] == "."


@pytest.mark.parametrize("name", LOWTIDE_SERVICES)
def test_configuration_is_only_lowtide_variables_the_cli_reads(services: dict[str, Any],
                                                               name: str) -> None:
    known = variables_read_by_cli()
    for key in services[name]["environment"]:
        assert key.startswith("LOWTIDE_"), f"{name}: {key} is not a LOWTIDE_* variable"
        assert key in known, f"{name}: {key} is read by no `lowtide` flag ({sorted(known)})"


@pytest.mark.parametrize("name", LOWTIDE_SERVICES)
def test_components_reach_the_redis_service(services: dict[str, Any], name: str) -> None:
    url = urlsplit(service_args(services[name]).redis_url)
    assert url.scheme == "redis"
    assert url.password == REQUIRED_VALUE  # LOWTIDE_REDIS_PASSWORD, required
    assert url.hostname in services
    assert url.port == 6379


# ---- ports ----------------------------------------------------------------------------
def test_platform_listens_checks_and_publishes_the_sdk_default(services: dict[str, Any]) -> None:
    platform = services["platform"]
    args = service_args(platform)
    assert args.host == "0.0.0.0"
    assert healthcheck_port(platform) == args.port
    sdk = urlsplit(_home.DEFAULT_PLATFORM_URL)
    assert published(platform)[args.port] == (sdk.hostname, sdk.port)


def test_activator_listens_checks_and_publishes_the_sdk_default(services: dict[str, Any]
                                                                ) -> None:
    activator = services["activator"]
    args = service_args(activator)
    assert args.host == "0.0.0.0"
    assert healthcheck_port(activator) == args.port == 8080
    sdk = urlsplit(_home.DEFAULT_ACTIVATOR_URL)
    assert published(activator)[args.port] == (sdk.hostname, sdk.port)


def test_invoke_urls_point_at_the_published_activator(services: dict[str, Any]) -> None:
    public = urlsplit(service_args(services["platform"]).public_url)
    activator = services["activator"]
    host_ip, host_port = published(activator)[service_args(activator).port]
    assert (public.hostname, public.port) == (host_ip, host_port)


@pytest.mark.parametrize("name", AGENTS)
def test_agents_advertise_an_address_the_activator_can_reach(services: dict[str, Any],
                                                             name: str) -> None:
    agent = services[name]
    args = service_args(agent)
    assert args.advertise_address == name  # the service's name on the compose network
    assert args.bind_host == "0.0.0.0"
    assert healthcheck_port(agent) == args.port


def test_agents_have_distinct_host_ids_and_state(services: dict[str, Any]) -> None:
    ids = [service_args(services[name]).host_id for name in AGENTS]
    assert len(set(ids)) == len(ids)
    volumes = [services[name]["volumes"][0] for name in AGENTS]
    assert len(set(volumes)) == len(volumes)
    for volume in volumes:
        assert volume.endswith(":/var/lib/lowtide")


# ---- start order, health, durability, GPU ---------------------------------------------
@pytest.mark.parametrize("name", LOWTIDE_SERVICES)
def test_components_wait_for_a_healthy_redis(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["redis", *LOWTIDE_SERVICES])
def test_every_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    assert services[name]["healthcheck"]["test"]


def test_redis_keeps_an_append_only_file_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1]
    volume, _, path = redis["volumes"][0].partition(":")
    assert path == data_dir
    assert volume in compose["volumes"]


def test_platform_keeps_its_generated_token_on_a_named_volume(compose: dict[str, Any]) -> None:
    platform = compose["services"]["platform"]
    assert platform["environment"]["LOWTIDE_TOKEN"] == ""  # from the shell, else generated
    volume, _, path = platform["volumes"][0].partition(":")
    assert volume in compose["volumes"]
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert 'token_file="$LOWTIDE_HOME/token"' in entrypoint
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"LOWTIDE_HOME={path} " in dockerfile  # the entrypoint keeps the token there


def test_gpu_agent_is_a_profile_with_an_nvidia_reservation(services: dict[str, Any]) -> None:
    gpu = services["agent-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for name in ["redis", "platform", "activator", "agent"]:
        assert "profiles" not in services[name]


def test_a_second_platform_is_a_profile_sharing_the_token_with_its_own_id(
        services: dict[str, Any]) -> None:
    one, two = services["platform"], services["platform-2"]
    assert two["profiles"] == ["ha"]
    assert two["volumes"][0] == one["volumes"][0]  # the generated token
    assert two["depends_on"]["platform"]["condition"] == "service_healthy"
    assert service_args(one).instance_id != service_args(two).instance_id
    assert set(published(two).values()).isdisjoint(published(one).values())
    assert service_args(two).public_url == service_args(one).public_url


# ---- the image ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_base_image_is_a_slim_python_the_package_supports(dockerfile: str,
                                                          services: dict[str, Any]) -> None:
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)
    assert default, "the Dockerfile takes its base image as the BASE_IMAGE build argument"
    match = re.fullmatch(r"python:3\.(\d+)-slim", default.group(1))
    assert match, default.group(1)
    assert 10 <= int(match.group(1)) <= 12  # requires-python >=3.10,<3.13
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert services["platform"]["build"]["args"]["BASE_IMAGE"] == default.group(1)


def test_dependencies_are_installed_before_the_source_is_copied(dockerfile: str) -> None:
    deps = dockerfile.index("pip install -r requirements.txt")
    assert dockerfile.index("COPY pyproject.toml") < deps < dockerfile.index("COPY lowtide")


def test_image_runs_as_a_non_root_user_with_a_healthcheck(dockerfile: str) -> None:
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*lowtide-healthcheck", dockerfile, re.M)


@pytest.mark.parametrize(("command", "flag_port"), [("platform", 8081), ("activator", 8080),
                                                    ("agent", 8082)])
def test_entrypoint_health_ports_are_the_cli_defaults(command: str, flag_port: int) -> None:
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    match = re.search(rf"^\s*{command}\) health_port=\$\{{(\w+):-(\d+)\}}", entrypoint, re.M)
    assert match, f"the entrypoint records no /healthz port for {command}"
    variable, default = match.groups()
    assert variable in variables_read_by_cli()
    args = build_parser({"LOWTIDE_HOME": "/tmp/x"}).parse_args([command])
    assert args.port == int(default) == flag_port


@pytest.mark.parametrize("name", LOWTIDE_SERVICES)
def test_components_run_under_an_init_that_reaps_replica_processes(services: dict[str, Any],
                                                                    name: str) -> None:
    assert services[name]["init"] is True


def test_redis_requires_the_password_the_components_use(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == REQUIRED_VALUE
    assert redis["environment"]["REDISCLI_AUTH"] == REQUIRED_VALUE  # for its healthcheck
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
