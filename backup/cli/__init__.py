"""The ``backup`` command: the click group, its global options, and the process's exit.

Exit codes: 0 success; 1 failure (one message naming what is wrong); 3 the backup finished
but some files could not be read (listed, and recorded with the archive). Progress bars go
to stderr on a terminal only; every listing has ``--json``, whose times are ISO 8601 UTC and
are accepted back by ``--at``.

The package, one module per command group (after borg's ``archiver/*_cmd.py``):

- ``context``: :class:`~backup.cli.context.Ctx`, settings, policies and inventory opened
  on first use, given to every command;
- ``output``: consoles, formatters, ``--json``, tables, shared report printers, and the
  mapping of an error to one line and an exit code;
- ``queueing``: recording, sending, running and following jobs for ``run``, ``restore``,
  ``status`` and ``job``;
- ``*_cmd``: the commands, each module adding its own to the group (``register``).

Imports flow one way: this module imports the command modules, which import ``context``,
``output`` and ``queueing``, never each other nor this module.

Start-up: a command imports only its own module (:data:`COMMANDS` names each command's,
imported when the command is looked up; ``--help`` imports them all), and the heavy
libraries (SQLAlchemy, boto3, Celery and kombu, Apprise, rich) are imported inside the
functions that use them. ``backup run`` starts its walk before SQLAlchemy is imported
(backup/archive/scan.py, prefetch), and ``backup --help`` imports none of them
but rich.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from pathlib import Path

import click

# pydantic looks up plugins in every installed distribution's entry points when the first
# model class is built: about 45 ms of every command, for plugins a backup tool never uses.
# Set before the command modules import the settings and policy models; a user's own value
# wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from .context import Ctx  # after the line above, on purpose

__all__ = ["COMMANDS", "cli", "main", "native_status"]

#: each command's module, imported when the command is first looked up: `backup run` does not
#: import the snapshot, listing or worker commands (nor rich, which only tables and progress
#: bars need)
COMMANDS = {
    "keys": "keys_cmd",
    "cost": "cost_cmd",
    "run": "run_cmd",
    "list": "list_cmd",
    "show": "list_cmd",
    "restore": "restore_cmd",
    "verify": "verify_cmd",
    "prune": "prune_cmd",
    "hold": "prune_cmd",
    "inventory": "inventory_cmd",
    "worker": "worker_cmd",
    "scheduler": "worker_cmd",
    "serve": "worker_cmd",
    "status": "jobs_cmd",
    "job": "jobs_cmd",
    "schedule": "jobs_cmd",
    "metrics": "metrics_cmd",
    "snapshot": "snapshots_cmd",
    "bucket": "snapshots_cmd",
}


class _LazyGroup(click.Group):
    """A group whose commands are added by their module's ``register`` when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | COMMANDS.keys())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(f"{__name__}.{module}").register(self)
            if cmd_name not in self.commands:
                raise RuntimeError(f"{module}.register added no command {cmd_name!r}")
        return super().get_command(ctx, cmd_name)


NATIVE_MODULES = ("_fastwalk", "_speedups")


def native_status() -> str:
    """Which C parts this process really uses: an import that fails here fails for the scan
    and the encoders too, and they fall back to Python."""
    active = []
    for name in NATIVE_MODULES:
        try:
            importlib.import_module(f"backup.archive.{name}")
        except ImportError:
            continue
        active.append(name)
    return f"native: {', '.join(active)}" if active else "native: none; pure-Python fallback"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"backup {version('backup')} ({native_status()})")
    ctx.exit()


@click.group(cls=_LazyGroup)
@click.option(
    "--config", type=click.Path(path_type=Path), help="Policy file (default: $BACKUP_CONFIG)."
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and which native (C) parts are active, then exit.",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Encrypted, compressed backups that restore with standard tools:
    age -d -i key.txt ARCHIVE | zstd -d | tar -x"""
    ctx.obj = Ctx(config)


def main() -> None:
    """Entry point of the ``backup`` command."""
    # Starting a command allocates objects by the hundred thousand (importing SQLAlchemy and
    # pydantic, a walk's entries) and makes little cyclic garbage. At Python's default
    # thresholds (700, 10, 10) the collector ran about 190 times in a no-change backup and
    # 290 in a full one, 0.2-0.4 s of either. It still runs, in long-running commands too,
    # only less often.
    gc.set_threshold(50_000, 20, 10)
    Ctx.freeze_after_open = True
    try:
        cli(prog_name="backup")
    except SystemExit as e:
        _exit(e.code)
    _exit(0)


def _exit(code: object) -> None:
    """End the process without the interpreter's teardown, which after a large backup or
    restore spends 0.2 s freeing per-path tables one object at a time. Only when nothing
    teardown would finish is left: no other thread, no child process; output is flushed
    and logging shut down, and what must last (archives, the inventory) was committed
    before the command returned. Otherwise (or for a message as exit code) a normal exit."""
    import threading

    inventory = sys.modules.get("backup.inventory")
    if inventory is not None:
        # os._exit closes no connection, so SQLite would leave the command's writes in the
        # -wal file: a copy of inventory.db alone would miss them
        inventory.checkpoint_all()
    mp = sys.modules.get("multiprocessing")
    if (
        not (code is None or isinstance(code, int))
        or threading.active_count() > 1
        or (mp is not None and mp.active_children())
    ):
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        raise SystemExit(code) from None  # let the interpreter report it as usual
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(code or 0)
