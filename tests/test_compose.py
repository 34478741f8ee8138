"""compose.yaml and the Dockerfile stay valid: the services, health checks, named volumes and
start-up order are there, every backup service runs a command (with options) that the
``backup`` CLI really has, settings come from the environment, no secret key is anywhere,
and the image's entry point is ``backup``. No container engine is needed; when Debian's
``docker-compose`` is installed, it validates the file too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
BACKUP_SERVICES = {"worker", "poller", "scheduler"}


def load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR}`` with an empty environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def backup_group() -> click.Group:
    import backup.cli

    group = backup.cli.main if isinstance(backup.cli.main, click.Group) else backup.cli.cli
    assert isinstance(group, click.Group)
    return group


def test_services_and_images() -> None:
    services = load()["services"]
    assert {"redis", "postgres", "minio", *BACKUP_SERVICES} <= set(services)
    for name in BACKUP_SERVICES:
        svc = services[name]
        assert svc["build"] == "." or svc["build"]["context"] == "."
        assert "container_name" not in svc  # `--scale worker=N` needs generated names
    assert "ports" not in services["worker"]  # a published port would clash when scaled


def test_backup_commands_exist_in_the_cli() -> None:
    group = backup_group()
    services = load()["services"]
    for name in sorted(BACKUP_SERVICES | {"restorer"}):
        command = services[name]["command"]
        args = command.split() if isinstance(command, str) else [str(a) for a in command]
        # walk sub-groups, then let click parse the options: unknown ones fail here
        cmd: click.Command = group
        path = ["backup"]
        while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
            looked_up = click.Context(cmd)
            sub = cmd.get_command(looked_up, args[0])
            assert sub is not None, (
                f"service {name!r}: {' '.join(path)} has no command {args[0]!r} "
                f"(it has: {', '.join(cmd.list_commands(looked_up))})"
            )
            path.append(args.pop(0))
            cmd = sub
        assert cmd is not group, f"service {name!r} names no command"
        ctx = cmd.make_context(" ".join(path), list(args))
        ctx.close()
    worker = services["worker"]["command"]
    assert worker[:2] == ["worker", "--queues"] and worker[2] == "pack"
    assert "poll" in services["poller"]["command"][2].split(",")
    assert "notify" in services["poller"]["command"][2].split(",")
    assert services["scheduler"]["command"] == ["scheduler"]


def test_health_checks_and_start_order() -> None:
    services = load()["services"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = spec["condition"]
            assert cond in ("service_healthy", "service_completed_successfully")
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health check"
    for name in BACKUP_SERVICES:
        deps = services[name]["depends_on"]
        for needed in ("redis", "postgres", "minio"):
            assert deps[needed]["condition"] == "service_healthy", (name, needed)


def test_named_volumes_declared_and_used() -> None:
    data = load()
    declared = set(data["volumes"])
    used = set()
    for name, svc in data["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0] if isinstance(spec, str) else spec["source"]
            if not source.startswith(("/", ".", "$", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
    assert used == declared
    assert {"redis", "postgres", "minio", "vault"} <= declared


def test_settings_from_environment_and_no_secret_key() -> None:
    services = load()["services"]
    for name in sorted(BACKUP_SERVICES):
        svc = services[name]
        env = {k: interpolate(str(v)) for k, v in svc["environment"].items()}
        assert env["BACKUP_BROKER_URL"] == "redis://redis:6379/0"
        assert env["BACKUP_INVENTORY_URL"] == (
            "postgresql+psycopg://backup:backup@postgres:5432/backup"
        )
        assert env["BACKUP_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
        assert env["BACKUP_CONFIG"] == "/etc/backup/policies.toml"
        mounts = [interpolate(v) for v in svc["volumes"]]
        assert any(m.endswith(":/etc/backup/policies.toml:ro") for m in mounts)
        # backing up needs recipients only: no identity in any service's environment
        assert "BACKUP_IDENTITY" not in env
        assert not any("AGE-SECRET-KEY" in v for v in env.values())
    # MinIO and the workers agree on the credentials
    minio = {k: interpolate(str(v)) for k, v in services["minio"]["environment"].items()}
    worker = {k: interpolate(str(v)) for k, v in services["worker"]["environment"].items()}
    assert worker["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert worker["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    for path in (COMPOSE, DOCKERFILE):
        assert "AGE-SECRET-KEY" not in path.read_text()


def test_only_the_restorer_holds_the_identity_and_it_takes_the_restore_queue() -> None:
    """Starting a restore proves the identity and extraction needs it, so the ``restore``
    queue has a service, the only one given the key, as a secret file (never its content),
    and only when its profile is asked for."""
    data = load()
    services = data["services"]
    restorer = services["restorer"]
    assert restorer["profiles"] == ["restore"]
    assert restorer["command"][:3] == ["worker", "--queues", "restore"]
    assert restorer["environment"]["BACKUP_IDENTITY"] == "/run/secrets/backup-identity"
    assert restorer["secrets"] == ["backup-identity"]
    assert "file" in data["secrets"]["backup-identity"]
    for name, svc in services.items():
        queues = svc.get("command", [])[2:3] if name in BACKUP_SERVICES else []
        assert not any("restore" in q.split(",") for q in queues), name
        assert "BACKUP_IDENTITY" not in svc.get("environment", {}) or name == "restorer"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            stages.append([])
        assert stages, "the Dockerfile starts with FROM"
        stages[-1].append((word, rest))
    return stages


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or a directory above it, decides."""

    def regex(pattern: str) -> str:
        out = re.escape(pattern.rstrip("/"))
        out = out.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return out.replace(r"\?", "[^/]")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = regex(line.removeprefix("!"))
        if any(re.fullmatch(pattern, p) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerfile() -> None:
    build, runtime = dockerfile_stages()  # exactly two stages
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert runtime[0] == ("FROM", "python:3.11-slim")
    (entry,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["backup"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["backup"] == "backup.cli:main"  # the entry point the image runs
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert re.search(r"apt-get install [^&]*\bage\b[^&]*\bzstd\b[^&]*\btar\b", runs)
    for stage in (build, runtime):
        assert not any(word == "ENV" and "IDENTITY" in rest for word, rest in stage)


def test_dockerfile_builds_the_native_parts_and_the_image_runs_them() -> None:
    """The image runs the C parts: compiled in the build stage only, with setup.py and the C
    sources in its context; the runtime stage installs the wheel and fails to build unless
    the C parts import."""
    build, runtime = dockerfile_stages()
    build_runs = " ".join(rest for word, rest in build if word == "RUN")
    runtime_runs = " ".join(rest for word, rest in runtime if word == "RUN")
    compiler = r"\b(build-essential|gcc|clang|cc)\b"
    assert re.search(r"apt-get install [^&]*" + compiler, build_runs)
    assert not re.search(compiler, runtime_runs)  # no compiler where the image runs
    copied = [rest.split() for word, rest in build if word == "COPY"]
    sources = {src for args in copied for src in args[:-1] if not src.startswith("--")}
    assert "setup.py" in sources and "backup" in sources
    c_sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "backup").rglob("*.c"))
    assert c_sources == ["backup/archive/_fastwalk.c", "backup/archive/_speedups.c"]
    for path in ["setup.py", *c_sources]:
        assert not dockerignored(path), f".dockerignore leaves {path} out of the build"
    assert dockerignored("backup/archive/_fastwalk.cpython-311-x86_64-linux-gnu.so")
    assert re.search(r"\bpip wheel --no-deps\b", build_runs)
    assert any(word == "COPY" and rest.startswith("--from=build ") for word, rest in runtime)
    assert re.search(r"\bpip install [^&]*/wheels/backup-\*\.whl", runtime_runs)
    (check,) = [rest for word, rest in runtime if word == "RUN" and "python -c" in rest]
    imported = re.search(r'python -c "import ([^"]+)"', check)
    assert imported is not None
    assert sorted(m.strip() for m in imported.group(1).split(",")) == [
        "backup.archive._fastwalk",
        "backup.archive._speedups",
    ]
    # the check runs after the install, before the image is finished
    assert runtime.index(("RUN", check)) > next(
        i for i, (word, rest) in enumerate(runtime) if word == "RUN" and "pip install" in rest
    )


# a program a documented shell command calls -> the Debian package the image installs for it;
# None: in python:3.11-slim already (Debian's essential packages)
DRILL_PROGRAMS = {"aws": "awscli", "grep": None, "test": None, "sh": None, "sha256sum": None,
                  "diff": None, "cmp": None, "cat": None, "age": "age", "zstd": "zstd",
                  "tar": "tar"}  # fmt: skip


def test_the_image_carries_what_the_documented_drill_checks_call() -> None:
    """Each `check = "..."` of a [policy.drill] in the docs runs through the shell in the
    image's worker: every program it calls is one the runtime stage installs (or the base
    image has), so the documented drill works as written inside the image."""
    _, runtime = dockerfile_stages()
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    installed = set()
    for line in re.findall(r"apt-get install ([^&]*)", runs):
        installed |= {w for w in line.split() if not w.startswith("-") and w != "\\"}
    checks = [
        c for doc in (ROOT / "docs").glob("*.md")
        for c in re.findall(r'^check = "([^"]+)"', doc.read_text(), re.M)
    ]  # fmt: skip
    assert checks, "docs/snapshots.md documents a drill check"
    for check in checks:
        programs = re.findall(r"(?:^|[|;&]+)\s*([A-Za-z0-9_.-]+)", check)
        assert programs, check
        for program in programs:
            assert program in DRILL_PROGRAMS, f"{program} (in {check!r}): which package?"
            package = DRILL_PROGRAMS[program]
            assert package is None or package in installed, f"the image lacks {package}"
    # and the image fails to build if the CLI is not there
    (check_run,) = [rest for word, rest in runtime if word == "RUN" and "python -c" in rest]
    assert "aws --version" in check_run


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_it() -> None:
    r = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
