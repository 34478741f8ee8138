"""``backup list`` and ``backup show``: the archives and their entries, from the inventory
alone (no key, no target).

A table by default, ``--json`` on both; an archive's location is printed as the URL of the
object in its target.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime

import click

from .context import Ctx, json_option
from .output import archive_json, dump, handled, iso, new_table, object_url, size, table

__all__ = ["register"]


@click.command("list")
@click.argument("policy", required=False)
@click.option("--all", "all_states", is_flag=True, help="Include failed and deleted archives.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Archives to print: the newest ones, oldest first; 0 for all of them.",
)
@click.option(
    "--before",
    metavar="ID",
    help="Only archives older than this one: the first one printed, for the page before.",
)
@json_option()
@click.pass_obj
@handled
def list_(
    obj: Ctx, policy: str | None, all_states: bool, limit: int, before: str | None, as_json: bool
) -> None:
    """List archives, oldest first (the newest --limit of them)."""
    inv = obj.inventory
    # one row past the page says whether older archives remain
    rows = inv.archives(
        policy,
        states=() if all_states else ("complete",),
        limit=limit + 1 if limit else None,
        before=None if before is None else inv.get(before),
    )
    older = bool(limit) and len(rows) > limit
    if older:
        rows = rows[1:]
        # on stderr, and before the list: --json stays a list, and a script reading it is
        # told too that it is not all
        again = [
            "backup",
            "list",
            *([policy] if policy else []),
            *(["--all"] if all_states else []),
        ]
        click.echo(f"older archives: {shlex.join(again)} --before {rows[0].id}", err=True)
    if as_json:
        dump([archive_json(a) for a in rows])
        return
    # a rich table costs ~1 ms of CPU a row: why the default page is 100 archives
    t = new_table(
        "id", "policy", "kind", "parent", "created", "size", "entries", "location", box=None
    )
    if all_states:
        t.add_column("state")
    for a in rows:
        cells = [
            a.id,
            a.policy,
            a.kind,
            a.parent_id or "-",
            iso(a.created) or "",
            size(a.size_stored),
            str(a.entries),
            object_url(a.target, a.location),
        ]
        if all_states:
            cells.append(a.state)
        t.add_row(*cells)
    table(t)


@click.command()
@click.argument("archive_id")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Entries to print, in path order; 0 for all of them.",
)
@click.option(
    "--after",
    metavar="PATH",
    help="Start after this path: the last one printed (--json gives it as next_after).",
)
@json_option()
@click.pass_obj
@handled
def show(obj: Ctx, archive_id: str, limit: int, after: str | None, as_json: bool) -> None:
    """List the entries of an archive (from the inventory; no key needed), a page at a time."""
    import stat as st

    a = obj.inventory.get(archive_id)
    # one row past the page says whether another page follows
    recs = obj.inventory.records(
        a.id,
        after=None if after is None else os.fsencode(after),
        limit=limit + 1 if limit else None,
    )
    more = bool(limit) and len(recs) > limit
    if more:
        recs = recs[:limit]
    next_after = os.fsdecode(recs[-1].path) if more else None
    if as_json:
        d = archive_json(a)
        d["entries_list"] = [
            {
                "path": os.fsdecode(r.path),
                "type": r.type,
                "size": r.size,
                "mode": f"{r.mode:04o}",
                "mtime": iso(datetime.fromtimestamp(r.mtime_ns / 1e9, UTC))
                if r.type != "deleted"
                else None,
                "mtime_ns": r.mtime_ns,
                "sha256": r.sha256,
                "link": os.fsdecode(r.link) if r.link else None,
                "offset": r.offset,
            }
            for r in recs
        ]
        d["next_after"] = next_after
        dump(d)
        return
    t = new_table("type", "mode", "size", "mtime", "path", box=None)
    for r in recs:
        if r.type == "deleted":
            t.add_row("deleted", "", "", "", os.fsdecode(r.path))
            continue
        link = f" -> {os.fsdecode(r.link)}" if r.link else ""
        t.add_row(
            r.type,
            st.filemode(r.mode)[1:],
            str(r.size),
            iso(datetime.fromtimestamp(r.mtime_ns / 1e9, UTC)) or "",
            os.fsdecode(r.path) + link,
        )
    table(t)
    if next_after is not None:
        click.echo(
            f"more entries follow: backup show {a.id} --after {shlex.quote(next_after)}",
            err=True,
        )


def register(cli: click.Group) -> None:
    """Add ``list`` and ``show`` to the ``backup`` group."""
    cli.add_command(list_)
    cli.add_command(show)
