"""The C parts ship: every install builds them (or stops with one clear line), and
``backup --version`` says truly whether this process uses them."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup.cli import cli

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("_fastwalk", "_speedups")


def importable(name: str) -> bool:
    try:
        importlib.import_module(f"backup.archive.{name}")
    except ImportError:
        return False
    return True


def test_version_names_the_native_parts_that_import() -> None:
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0, r.output
    active = [m for m in MODULES if importable(m)]
    native = ", ".join(active) if active else "none; pure-Python fallback"
    assert r.output == f"backup {version('backup')} (native: {native})\n"
    if os.environ.get("BACKUP_PURE_PYTHON", "") in ("", "0"):
        # this checkout was installed with `pip install -e .`, which builds them
        assert active == list(MODULES)


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [
        (MODULES, "native: none; pure-Python fallback"),
        (("_speedups",), "native: _fastwalk"),
    ],
)
def test_version_says_so_when_a_native_part_does_not_import(
    blocked: tuple[str, ...], expected: str
) -> None:
    # a None entry in sys.modules makes the import fail, as a missing or broken .so does
    script = (
        "import sys\n"
        + "".join(f"sys.modules['backup.archive.{m}'] = None\n" for m in blocked)
        + "from backup.cli import main\nsys.argv = ['backup', '--version']\nmain()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"backup {version('backup')} ({expected})\n"


def source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name in ("setup.py", "pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for pkg in ("backup", "workers"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return src


def build_ext(src: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=src,
        env={**os.environ, **env},
    )


def test_install_without_a_compiler_stops_with_one_clear_line(tmp_path: Path) -> None:
    src = source_copy(tmp_path)
    r = build_ext(src, CC="false", BACKUP_PURE_PYTHON="")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("backup: cannot build")]
    assert "the C compiler (false) failed" in line and "BACKUP_PURE_PYTHON=1" in line
    assert not list(src.rglob("*.so"))


def test_pure_python_install_is_asked_for_by_name(tmp_path: Path) -> None:
    src = source_copy(tmp_path)
    r = build_ext(src, CC="false", BACKUP_PURE_PYTHON="1")
    assert r.returncode == 0, r.stderr
    assert not list(src.rglob("*.so"))
