"""The CLI package's shape: imports flow one way (``__init__`` → ``*_cmd`` → ``queueing`` →
``context``/``output``), and starting the command imports none of the heavy libraries."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import backup.cli

PACKAGE = Path(backup.cli.__file__).parent

#: what each kind of module of the package may import from the package itself
ALLOWED = {
    "context": set(),
    "output": set(),
    "queueing": {"context", "output"},
    "cmd": {"context", "output", "queueing"},
}


def _package_imports(path: Path) -> set[str]:
    """Returns: the modules of ``backup.cli`` that ``path`` imports ("" for ``__init__``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x, y
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "backup.cli" or node.module.startswith("backup.cli."):
                found.add(node.module.removeprefix("backup.cli").lstrip(".").split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("backup.cli"):
                    found.add(a.name.removeprefix("backup.cli").lstrip(".").split(".")[0])
    return found


def _python(code: str, env: dict[str, str] | None = None) -> str:
    """Returns: what ``code`` prints, run in a new interpreter (a module imported by this test
    process would not show what a command imports)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env=env,
    )  # fmt: skip
    return proc.stdout


def test_imports_flow_one_way() -> None:
    modules = sorted(p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    commands = [p for p in modules if p.stem.endswith("_cmd")]
    assert len(commands) >= 8
    for p in modules:
        kind = "cmd" if p.stem.endswith("_cmd") else p.stem
        assert kind in ALLOWED, f"{p.name}: a module of a kind this test does not know"
        imported = _package_imports(p)
        assert imported <= ALLOWED[kind], f"{p.name} imports {sorted(imported - ALLOWED[kind])}"


def test_every_command_module_registers_its_commands() -> None:
    # in a process of its own: the modules are imported as commands are looked up
    code = (
        "import sys, click, backup.cli as c\n"
        "ctx = click.Context(c.cli)\n"
        "listed = c.cli.list_commands(ctx)\n"
        "print(sorted(m for m in sys.modules if m.endswith('_cmd')))\n"
        "found = {n: c.cli.get_command(ctx, n) for n in listed}\n"
        "print(sorted(n for n, cmd in found.items() if cmd is not None and cmd.name == n))\n"
        "print(sorted(c.cli.commands), sorted(set(c.COMMANDS.values())))\n"
    )
    imported_first, resolved, after = _python(code).splitlines()
    assert imported_first == "[]"  # nothing before a command is looked up
    names = [
        "bucket", "cost", "hold", "inventory", "job", "keys", "list", "metrics", "prune", "restore", "run",
        "schedule", "scheduler", "serve", "show", "snapshot", "status", "verify", "worker",
    ]  # fmt: skip
    assert resolved == str(names)
    modules = sorted(p.stem for p in PACKAGE.glob("*_cmd.py"))
    for p in PACKAGE.glob("*_cmd.py"):
        tree = ast.parse(p.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body), p
    # every command module is named, and registered exactly the commands looked up
    assert after == f"{names} {modules}"


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from backup.cli import cli\n"
        "r = CliRunner().invoke(cli, ['run', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.endswith('_cmd')), 'rich' in sys.modules)\n"
    )
    assert _python(code).split() == ["['backup.cli.run_cmd']", "False"]


def test_starting_the_command_imports_no_heavy_library() -> None:
    heavy = ("sqlalchemy", "celery", "kombu", "apprise", "boto3", "workers", "rich")
    code = f"import sys, backup.cli\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    assert _python(code).strip() == "[]"


def test_a_local_backup_run_imports_no_http_stack_and_scans_no_plugins() -> None:
    # what `backup run P` imports before it reads a file (a no-change run at 100k files is
    # about 1.2 s, a third of it imports): urllib3 (40 ms) only for a bucket source, and
    # pydantic's entry-point scan for plugins (45 ms) not at all, unless the user asks
    code = (
        "import sys, backup.cli, backup.jobs.runner, backup.engine\n"
        "import pydantic.plugin._loader as loader\n"
        "print('urllib3' in sys.modules, loader._plugins is None)\n"
    )
    # nor what only restores, bucket policies and monitors need
    unused = (
        "botocore", "urllib.request", "rich", "backup.snapshot_actions", "backup.snapshots",
        "backup.jobs.extract", "backup.jobs.retrieval", "backup.restore",
    )  # fmt: skip
    imported = _python(code + f"print([m for m in {unused!r} if m in sys.modules])\n")
    assert imported.splitlines()[-1] == "[]"
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    assert _python(code, env).split() == ["False", "True"]
    env["PYDANTIC_DISABLE_PLUGINS"] = "some-plugin"  # the user's own setting is kept
    assert _python(code, env).split() == ["False", "False"]
