"""Fixtures that give every test a clean environment: no BACKUP_* variables from the
caller, config and data directories under the test's tmp_path, a fresh inventory on SQLite
and, when BACKUP_TEST_POSTGRES_URL is set, the same tests again on PostgreSQL in a schema of
their own."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup.crypto.age import X25519Identity
from backup.inventory import Inventory
from backup.policy import Policy, load_policies

POSTGRES_URL = os.environ.get("BACKUP_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if (
            k.startswith("BACKUP_")
            and k != "BACKUP_TEST_POSTGRES_URL"
            and not k.startswith("BACKUP_AGE_CCTV")
        ):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def require_tools(*names: str) -> None:
    """Fail (not skip) when a program the suite needs is missing: the test command installs them."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"missing programs {missing}: run ./scripts/test, which installs them")


def require_built(fn: Any, python_side: str) -> Any:
    """Return ``fn`` (a function of backup/archive/_speedups.c); skip when no C compiler is
    here (``python_side`` is then all Python), fail when one is and the build was lost."""
    if fn is None:
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip(f"no C compiler here: {python_side} is all Python")
        pytest.fail("a C compiler is here but backup/archive/_speedups.c was not built")
    return fn


@dataclass
class Key:
    """A generated age key pair written to a file."""

    path: Path
    recipient: str
    identity: X25519Identity


@pytest.fixture
def key(tmp_path: Path) -> Key:
    ident = X25519Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(ident.to_string() + "\n")
    path.chmod(0o600)
    return Key(path, ident.recipient().to_string(), ident)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def inventory_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty inventory database URL: SQLite always, PostgreSQL when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'inventory.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(
            "BACKUP_TEST_POSTGRES_URL not set (./scripts/test sets it when PostgreSQL answers)"
        )
    yield from postgres_schema_url()


def postgres_schema_url() -> Iterator[str]:
    """Yield the URL of a fresh schema in the test PostgreSQL database, dropped afterwards:
    every test gets an empty inventory without a database of its own."""
    import sqlalchemy as sa

    assert POSTGRES_URL
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def inventory(inventory_url: str) -> Iterator[Inventory]:
    inv = Inventory(inventory_url)
    yield inv
    inv.close()


@dataclass
class Env:
    """A policy file, a source tree, a vault and an inventory, ready for `backup` runs."""

    tmp: Path
    config: Path
    source: Path
    vault: Path
    key: Key
    inventory_url: str

    def policy(self, name: str = "p") -> Policy:
        return load_policies(self.config)[name]

    def environ(self) -> dict[str, str]:
        """Environment for running the CLI as a subprocess."""
        env = dict(os.environ)
        env.update(
            BACKUP_CONFIG=str(self.config),
            BACKUP_INVENTORY_URL=self.inventory_url,
            BACKUP_IDENTITY=str(self.key.path),
        )
        return env


def write_policy(path: Path, **fields: Any) -> None:
    """Write a one-policy TOML file from keyword fields (retention as a dict)."""
    import json

    lines = ["[[policy]]"]
    retention = fields.pop("retention", None)
    for k, v in fields.items():
        lines.append(f"{k} = {json.dumps([str(x) for x in v] if isinstance(v, list) else v)}")
    if retention:
        lines.append("[policy.retention]")
        lines += [f"{k} = {v}" for k, v in retention.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def env(tmp_path: Path, key: Key, inventory_url: str, monkeypatch: pytest.MonkeyPatch) -> Env:
    source = tmp_path / "src"
    source.mkdir()
    vault = tmp_path / "vault"
    config = tmp_path / "policies.toml"
    write_policy(
        config,
        name="p",
        sources=[str(source)],
        target=f"file://{vault}",
        recipients=[key.recipient],
        full_every="7d",
        retention={"keep_last": 2},
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inventory_url)
    return Env(tmp_path, config, source, vault, key, inventory_url)


def snapshot_tree(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything restore must bring back, per path: type, mode, mtime_ns, content or link
    target, and hard-link group (the smallest path sharing the inode)."""
    out: dict[bytes, tuple[Any, ...]] = {}
    inodes: dict[int, bytes] = {}
    rootb = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(rootb):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, rootb)
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p), st.st_mtime_ns)
            elif os.path.isdir(p):
                out[rel] = ("d", st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    data = f.read()
                # os.walk visits names in sorted order: the first name seen names the group
                group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                out[rel] = ("f", st.st_mode & 0o7777, st.st_mtime_ns, data, group)
    return out


@pytest.fixture
def tree_snapshot() -> Callable[[Path], dict[bytes, tuple[Any, ...]]]:
    return snapshot_tree


@dataclass
class MotoServer:
    """moto's server mode on loopback: a real AWS-compatible HTTP endpoint."""

    endpoint: str

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        ).read()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server per test session, on a free loopback port (tests use unique bucket
    names rather than resetting it, so parallel fixtures in one session do not collide)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield MotoServer(f"http://{host}:{port}")
    server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Point boto3 (and BACKUP_S3_ENDPOINT_URL) at the moto server with dummy credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", moto_server.endpoint)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    return moto_server


from tests.servers import receiver, smtp  # noqa: E402, F401  (fixtures: real SMTP and HTTP)
