"""What the ``backup`` command shows: the consoles, the progress bar, the formatters of
times, sizes and URLs, ``--json`` output, tables, the shared report printers, and the
mapping of an error to one line on stderr and an exit code.

Invariants: text is printed as it is (paths, names and errors are the user's: no rich
markup, emoji code or highlighting is read in them), but for its control characters, shown
as ``\\xNN`` (:func:`printable`); tables go to stdout at their natural width (ids and paths
are copied from them, so nothing is folded or dropped); progress goes to stderr on a terminal
only; an error prints exactly one line ``error: MESSAGE`` (its text never read as markup)
and exits with the error's own code; every time printed, in a table or in JSON, is ISO 8601
UTC and is accepted back by ``--at`` (:func:`parse_time`).

Nothing here imports a command module or the package's ``__init__``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from ..errors import Error
from ..progress import Progress
from ..times import parse_time
from ..units import compact_bytes as size

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ..inventory import Archive
    from ..inventory.rebuild import RebuildReport

__all__ = [
    "archive_json",
    "dump",
    "err",
    "errors",
    "handled",
    "iso",
    "new_table",
    "object_url",
    "out",
    "parse_time",
    "print_rebuild_report",
    "print_snapshot_records",
    "printable",
    "progress",
    "size",
    "table",
]

F = TypeVar("F", bound=Callable[..., Any])


#: a console that prints text as it is: no markup, no emoji codes, no highlighting
PLAIN: dict[str, Any] = {"highlight": False, "markup": False, "emoji": False}

#: C0 and C1 control characters and DEL, each written as \xNN
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def printable(text: str) -> str:
    """Returns: ``text`` with its control characters written as ``\\xNN``. A path, an S3
    key or an error naming one is the user's (or a bucket's) text: printed raw, an ESC or a
    BEL in it would drive the terminal (clear it, set its title) and a newline would forge a
    line, as ``ls`` guards against. ``--json`` needs none of it: JSON escapes them."""
    return text.translate(_CONTROLS)


def new_table(*headers: str, **options: Any) -> Table:
    """Returns: a rich table whose text cells are shown :func:`printable` (every table of the
    CLI is made here, so none prints a name raw)."""
    return _printable_table()(*headers, **options)


@functools.cache
def _printable_table() -> type[Table]:
    from rich.table import Table  # on first use: see _LazyConsole

    class PrintableTable(Table):
        def add_row(self, *cells: Any, **kw: Any) -> None:
            super().add_row(*(printable(c) if isinstance(c, str) else c for c in cells), **kw)

    return PrintableTable


class _LazyConsole:
    """A rich console made on first use: importing rich costs about 30 ms of a command's
    start, which a command that prints only JSON or plain lines never needs."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            # plain text: what is printed (paths, policy names, job errors) is the user's, so
            # neither "[b]" nor ":smile:" in it may be read as markup or an emoji code (a
            # file named "a[/b]" made rich raise)
            if self._stderr:
                self._console = Console(stderr=True, **PLAIN)
            else:
                # a table piped to a file or `less` keeps whole ids and paths instead of
                # folding at 80 columns
                self._console = Console(width=None if sys.stdout.isatty() else 1000, **PLAIN)
        return getattr(self._console, name)


out = cast("Console", _LazyConsole(stderr=False))
err = cast("Console", _LazyConsole(stderr=True))


class _Bar(Progress):
    """A rich progress bar on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichBar

        self.bar = RichBar(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.task: Any = None

    def start(self, description: str, total_bytes: int | None) -> None:
        self.bar.start()
        self.task = self.bar.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(self.task, nbytes)

    def finish(self) -> None:
        self.bar.stop()


def progress(quiet: bool = False) -> Progress:
    """Returns: a progress bar on a terminal (not with ``--json``), else one that shows nothing."""
    return _Bar() if sys.stderr.isatty() and not quiet else Progress()


# formatters ---------------------------------------------------------------------------------


def iso(t: datetime | None) -> str | None:
    """Returns: ``t`` as ISO 8601 UTC with a ``Z``; None for None."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def object_url(target: str, ref: str) -> str:
    """Returns: the URL of an object in a target: the target's URL with ``ref`` added to its
    path, and the target's query (``?storage_class=...``, how the object is stored) after the
    whole path instead of inside it."""
    from urllib.parse import urlsplit

    u = urlsplit(target)
    # a vault's reference is KEY#ARCHIVE_ID#TREE_HASH: what follows the key is a fragment,
    # which a URL puts after its query
    key, hash_, fragment = ref.partition("#")
    url = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}/{key}"
    return url + (f"?{u.query}" if u.query else "") + hash_ + fragment


def archive_json(a: Archive) -> dict[str, Any]:
    """Returns: an archive as ``list``, ``show`` and ``run`` print it with ``--json``."""
    return {
        "id": a.id,
        "policy": a.policy,
        "kind": a.kind,
        "parent": a.parent_id,
        "created": iso(a.created),
        "state": a.state,
        "size": a.size_stored,
        "size_in": a.size_in,
        "entries": a.entries,
        "sha256": a.sha256,
        "target": a.target,
        "location": a.location,
        "url": object_url(a.target, a.location),
        "manifest": a.manifest_location,
        "unreadable": len(json.loads(a.unreadable or "[]")),
    }


# output -------------------------------------------------------------------------------------


def table(t: Table) -> None:
    """Print a table at its natural width: ids and paths are copied from it, so folding or
    dropping columns to fit a narrow terminal would make it useless."""
    from rich.console import Console

    natural = out.measure(t, options=out.options.update(max_width=100_000)).maximum
    Console(width=max(out.width, natural), force_terminal=out.is_terminal, **PLAIN).print(
        t, crop=False
    )


def dump(obj: Any) -> None:
    """Print ``obj`` as the indented JSON every ``--json`` prints."""
    click.echo(json.dumps(obj, indent=2, default=str))


def print_rebuild_report(
    report: RebuildReport, *, added: str, differs_in: str, foreign: str
) -> None:
    """Print the archive lines of a rebuild's report, the same for a bucket's and a vault's.

    Args:
        report: what the rebuild found.
        added: the prefix of a line naming an archive added (or that would be).
        differs_in: where the other side of a differing record is ("the target").
        foreign: what the objects not written by backup are ("object(s)").
    """
    for aid in report.added:
        click.echo(f"{added}{aid}")
    for d in report.differing:
        fields = ", ".join(
            f"{k} {a!r} here, {b!r} in {differs_in}" for k, (a, b) in d.fields.items()
        )
        click.echo(f"  differs:  {d.archive_id}: {fields}")
    for o in report.orphans:
        click.echo(f"  orphan:   {o.archive_id}: parent {o.parent_id} is missing; not recorded")
    for x in report.damaged:
        click.echo(printable(f"  damaged:  {x.key}: {x.reason}"))
    for lo in report.leftovers:
        click.echo(printable(f"  leftover: {lo.key}: {lo.reason}"))
    if report.foreign:
        click.echo(
            printable(
                f"  {len(report.foreign)} foreign {foreign} ignored, e.g. {report.foreign[0]}"
            )
        )


def print_snapshot_records(snaps: Any, dry_run: bool) -> None:
    """Print the ``snapshots`` rows a rebuild added (or would add) and what it could not read."""
    for r in snaps.added:
        click.echo(
            f"  snapshot {'would add' if dry_run else 'added'}: {r['bucket']} {r['version']}"
            f" ({r['name'] or '-'}; policy {r['policy'] or '-'}, archive {r['archive_id'] or '-'})"
        )
    for u in snaps.unreadable:
        click.echo(printable(f"  snapshots not read: {u}"))


# errors -------------------------------------------------------------------------------------


@contextmanager
def errors() -> Iterator[None]:
    """Turn an error into one line on stderr and the process's exit code: an
    :class:`~backup.errors.Error` its own code, Ctrl-C 130, an AWS SDK error 1. Anything
    else is a bug and keeps its traceback."""
    try:
        yield
    except Error as e:
        from rich.markup import escape

        # the message is text, not markup: a path like "a[1]" must print as it is
        message = escape(printable(e.get_message()))
        err.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # The storage layer turns the answers it expects into its own errors; what the AWS
        # SDK raises beyond those is about the environment (no credentials, an endpoint that
        # does not answer, a denied call) and its message says which, without secrets.
        boto = sys.modules.get("botocore.exceptions")
        if boto is None or not isinstance(e, boto.BotoCoreError | boto.ClientError):
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        from rich.markup import escape

        message = escape(printable(f"S3: {text}"))
        err.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
        sys.exit(1)


def handled(f: F) -> F:
    """Decorate a command so that its errors end it as :func:`errors` says."""

    @functools.wraps(f)
    def wrapper(*a: Any, **kw: Any) -> Any:
        with errors():
            return f(*a, **kw)

    return wrapper  # type: ignore[return-value]
