"""The deployment files: each compose configuration runs commands the CLI has and reaches what
it needs (the GPU override, the postgres profile), and every install is pinned by
constraints.txt. Read as Compose reads them (profiles, `required: false`, `$$` and `${…:-…}`);
where a Compose v2 CLI is on PATH, `docker compose config` checks them as well."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import make_url

from service.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
BASE, GPU = "docker-compose.yml", "docker-compose.gpu.yml"
OURS = {"migrate", "api", "worker"}  # built from the Dockerfile, running `python -m service`
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


def compose_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's interpolation of the forms these files use: `$$`, `${NAME}`, `${NAME:-default}`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return environment.get(match.group(1)) or match.group(2) or ""

    return VARIABLE.sub(replace, value)


def enabled(compose: dict[str, Any], profiles: set[str]) -> dict[str, Any]:
    """The services Compose runs with these profiles on: those without profiles, and those
    with one of them."""
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def extras(service: dict[str, Any]) -> set[str]:
    return set(str(service["build"]["args"]["EXTRAS"]).split(","))


@pytest.mark.parametrize("profiles", [set(), {"postgres"}], ids=["plain", "postgres"])
def test_each_configuration_runs_commands_the_package_provides(profiles: set[str]) -> None:
    """Each of our services' commands parses with the CLI's own parser, to the subcommand the
    service is named for; a service only waits for one that is off when it may (Compose
    refuses the project otherwise); the API listens on the port compose publishes; workers
    scale (no container name, no host port)."""
    services = enabled(compose_file(BASE), profiles)
    assert set(services) == OURS | profiles
    parser = build_parser()
    parsed = {}
    for name in OURS:
        command_line = services[name]["command"]
        assert command_line[:3] == ["python", "-m", "service"], name
        try:
            parsed[name] = parser.parse_args(command_line[3:])
        except SystemExit:  # argparse exits on arguments it does not know
            pytest.fail(f"{name}: `{' '.join(command_line)}` does not parse")
        assert parsed[name].command == name
        assert "data:/data" in services[name]["volumes"]
        assert "postgres" in extras(services[name])  # psycopg, for the profile
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services or condition.get("required") is False, (name, dependency)
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    published = {int(mapping.split(":")[-1]) for mapping in services["api"]["ports"]}
    assert published == {parsed["api"].port}
    assert parsed["api"].host == "0.0.0.0"  # reachable from outside the container
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_the_gpu_is_in_the_override_only() -> None:
    """`docker compose up` reserves no GPU; the override gives the worker the gpu extra and
    every NVIDIA GPU, and names no service the base lacks."""
    base, override = compose_file(BASE), compose_file(GPU)
    assert "devices" not in json.dumps(base)
    assert all("gpu" not in extras(base["services"][name]) for name in OURS)
    assert set(override["services"]) == {"worker"}
    worker = override["services"]["worker"]
    assert extras(worker) == {"postgres", "gpu"}
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def run_entrypoint(
    service: dict[str, Any],
    environment: dict[str, str],
    tmp_path: Path,
    *,
    resolves: bool,
    prints: str = "DATABASE_URL",
) -> subprocess.CompletedProcess[str]:
    """The service's entrypoint as its container runs it, with `postgres` resolving or not
    (a stand-in getent), its data volume a folder of `tmp_path`, and `python` printing the
    setting `prints` as the service would read it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    getent = bin_dir / "getent"
    getent.write_text(f'#!/bin/sh\n[ "$2" = postgres. ] && exit {0 if resolves else 2}\nexit 2\n')
    getent.chmod(0o755)
    container_environment = {
        key: interpolate(str(value), environment) for key, value in service["environment"].items()
    }
    assert container_environment["DATA_DIR"] == "/data"
    volume = tmp_path / "data"
    volume.mkdir(exist_ok=True)
    container_environment["DATA_DIR"] = str(volume)  # not this machine's /data
    entrypoint = [interpolate(part, environment) for part in service["entrypoint"]]
    command = ["python3", "-c", f"import os; print(os.environ.get({prints!r}, ''))"]
    return subprocess.run(
        [*entrypoint, *command],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **container_environment},
        capture_output=True,
        text=True,
        check=True,
    )


def chosen_database(
    service: dict[str, Any], environment: dict[str, str], tmp_path: Path, *, resolves: bool
) -> str:
    return run_entrypoint(service, environment, tmp_path, resolves=resolves).stdout.strip()


def test_the_postgres_profile_points_every_process_at_its_server(tmp_path: Path) -> None:
    """With the profile on, `postgres` resolves and each process takes the postgres service's
    database (user, password, name and port as the server is set up); with it off, SQLite;
    a DATABASE_URL from the host wins either way."""
    compose = compose_file(BASE)
    server = compose["services"]["postgres"]
    assert server["profiles"] == ["postgres"]
    assert server["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    for host_environment in ({}, {"POSTGRES_PASSWORD": "s3cret"}):
        settings = {
            key: interpolate(value, host_environment)
            for key, value in server["environment"].items()
        }
        for name in OURS:
            service = compose["services"][name]
            url = make_url(chosen_database(service, host_environment, tmp_path, resolves=True))
            assert url.drivername == "postgresql+psycopg"
            assert (url.host, url.port) == ("postgres", 5432)
            assert url.username == settings["POSTGRES_USER"]
            assert url.password == settings["POSTGRES_PASSWORD"]
            assert url.database == settings["POSTGRES_DB"]
            assert chosen_database(service, host_environment, tmp_path, resolves=False) == ""
            external = {**host_environment, "DATABASE_URL": "postgresql+psycopg://db.example/x"}
            for resolves in (True, False):
                chosen = chosen_database(service, external, tmp_path, resolves=resolves)
                assert chosen == external["DATABASE_URL"]
    migrate_waits_for = compose["services"]["migrate"]["depends_on"]["postgres"]
    assert migrate_waits_for == {"condition": "service_healthy", "required": False}


def test_compose_never_starts_the_api_without_a_key(tmp_path: Path) -> None:
    """The API listens on all the container's interfaces, where the CLI refuses to start
    without API_KEY: so without one from the host, the first container to start (migrate)
    generates one into the data volume, readable by its owner only, and shows it once; every
    container after reads the same. A key from the host's environment wins."""
    from service.__main__ import open_without_key
    from service.config import Settings

    compose = compose_file(BASE)
    api_host = build_parser().parse_args(compose["services"]["api"]["command"][3:]).host
    keyless = Settings(_env_file=None, data_dir=tmp_path, api_key=None)
    assert open_without_key(keyless, api_host) is not None
    first = run_entrypoint(
        compose["services"]["migrate"], {}, tmp_path, resolves=False, prints="API_KEY"
    )
    key = first.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key), first
    assert "generated" in first.stderr and key in first.stderr
    key_file = tmp_path / "data" / "api_key"
    assert key_file.read_text() == key and key_file.stat().st_mode & 0o777 == 0o600
    for name in ("api", "worker"):
        later = run_entrypoint(
            compose["services"][name], {}, tmp_path, resolves=False, prints="API_KEY"
        )
        assert later.stdout.strip() == key and key not in later.stderr, name
    given = run_entrypoint(
        compose["services"]["api"],
        {"API_KEY": "g" * 32},
        tmp_path,
        resolves=False,
        prints="API_KEY",
    )
    assert given.stdout.strip() == "g" * 32


def compose_cli() -> list[str] | None:
    """A Compose v2 command line (`docker compose`, or a v2 `docker-compose`), if there is one."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        version = subprocess.run([*candidate, "version", "--short"], capture_output=True, text=True)
        if version.returncode == 0 and not version.stdout.strip().startswith("1."):
            return candidate
    return None


@pytest.mark.skipif(compose_cli() is None, reason="no Docker Compose v2 CLI on PATH")
@pytest.mark.parametrize(
    ("options", "services"),
    [
        ([], OURS),
        (["--profile", "postgres"], OURS | {"postgres"}),
        (["-f", BASE, "-f", GPU], OURS),
        (["-f", BASE, "-f", GPU, "--profile", "postgres"], OURS | {"postgres"}),
    ],
)
def test_docker_compose_accepts_each_configuration(options: list[str], services: set[str]) -> None:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "POSTGRES_PASSWORD"} and not key.startswith("COMPOSE_")
    }
    result = subprocess.run(
        [*compose_cli(), *options, "config", "--format", "json"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert set(config["services"]) == services
    worker = config["services"]["worker"]
    assert ("deploy" in worker) == (GPU in options)


def pins() -> dict[str, str]:
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    found = {}
    for line in constraints:
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def test_constraints_pin_every_requirement_of_the_project() -> None:
    """Each requirement in pyproject.toml, extras included, is pinned in constraints.txt to a
    version it allows (a dependency added without `.ci/refresh-constraints` fails here), and
    so is each requirement of TensorFlow's and-cuda extra (the gpu extra's CUDA wheels)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        Requirement(text)
        for text in [
            *project["dependencies"],
            *(text for group in project["optional-dependencies"].values() for text in group),
        ]
    ]
    tensorflow = requires("tensorflow") or []
    requirements += [
        requirement
        for requirement in map(Requirement, tensorflow)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": "and-cuda"})
    ]
    pinned = pins()
    for requirement in requirements:
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_the_gpu_extra_is_tensorflow_with_cuda_under_the_same_bound() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [tensorflow] = [
        Requirement(text) for text in project["dependencies"] if text.startswith("tensorflow")
    ]
    [gpu] = map(Requirement, project["optional-dependencies"]["gpu"])
    assert (gpu.name, gpu.extras, gpu.specifier) == (
        "tensorflow",
        {"and-cuda"},
        tensorflow.specifier,
    )


def test_the_image_and_ci_install_from_the_constraints() -> None:
    """Every pip install in the Dockerfile and in .ci/run is constrained by constraints.txt,
    which the image has before its first install, and the image's Python is the one the
    constraints were resolved for; the installed extras come from the EXTRAS build argument."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [python] = re.findall(r"^FROM python:(\d+\.\d+)-slim$", dockerfile, re.MULTILINE)
    resolved_for = re.search(r"CPython (\d+\.\d+)\.", (ROOT / "constraints.txt").read_text())
    assert resolved_for is not None and resolved_for.group(1) == python
    steps = re.sub(r"\\\n", " ", dockerfile).splitlines()
    installs = [step for step in steps if re.search(r"\bpip install\b", step)]
    assert installs and all("-c constraints.txt" in step for step in installs)
    first_install = steps.index(installs[0])
    assert any(
        step.startswith("COPY") and "constraints.txt" in step for step in steps[:first_install]
    )
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.MULTILINE)
    assert '".${EXTRAS:+[$EXTRAS]}"' in installs[0]
    ci = (ROOT / ".ci" / "run").read_text()
    project_installs = [line for line in ci.splitlines() if re.search(r"pip install .*-e ", line)]
    assert project_installs and all("-c constraints.txt" in line for line in project_installs)
