"""``backup verify``: read and authenticate a whole archive against its manifest.

Writes nothing; exit 0 only when every byte decrypted and every file's hash matched.
"""

from __future__ import annotations

from pathlib import Path

import click

from .context import Ctx, identity_option, json_option
from .output import dump, handled, progress, size

__all__ = ["register"]


@click.command()
@click.argument("archive_id")
@identity_option()
@json_option("Print the result as JSON.")
@click.pass_obj
@handled
def verify(obj: Ctx, archive_id: str, identity: Path | None, as_json: bool) -> None:
    """Read and authenticate a whole archive and check its manifest hashes; writes nothing."""
    from .. import restore as r

    res = r.verify(
        archive_id,
        obj.inventory,
        r.identities_from(identity or obj.settings.identity),
        progress=progress(as_json),
    )
    if as_json:
        dump(
            {
                "archive": res.archive_id,
                "ok": True,
                "entries": res.entries,
                "files_checked": res.files_checked,
                "bytes": res.bytes,
            }
        )
    else:
        click.echo(
            f"archive {res.archive_id} OK: {res.entries} entries, {res.files_checked} files ({size(res.bytes)}) match the manifest"
        )


def register(cli: click.Group) -> None:
    """Add ``verify`` to the ``backup`` group."""
    cli.add_command(verify)
