"""``backup keys``: create an age identity and print the recipients of one.

An identity file is written with mode 0600 from its creation (never readable by others for
a moment), and an existing one is replaced only with ``--force``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click

from ..errors import Error
from .output import handled, iso

__all__ = ["register"]


@click.group()
def keys() -> None:
    """Create and inspect age keys."""


@keys.command("generate")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Identity file to write (mode 0600).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@handled
def keys_generate(out_path: Path, force: bool) -> None:
    """Write a new age identity to FILE and print its recipient (age1...)."""
    from ..crypto.age import X25519Identity

    ident = X25519Identity.generate()
    rcpt = ident.recipient().to_string()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(out_path, flags, 0o600)
    except FileExistsError:
        raise Error(f"{out_path} exists; use --force to overwrite it") from None
    except OSError as e:
        raise Error(f"cannot write {out_path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(f"# created: {iso(datetime.now(UTC))}\n# public key: {rcpt}\n{ident.to_string()}\n")
    click.echo(rcpt)


@keys.command("recipient")
@click.argument("identity_file", type=click.Path(path_type=Path))
@handled
def keys_recipient(identity_file: Path) -> None:
    """Print the recipients (age1...) of an identity file."""
    from ..crypto.age import X25519Identity
    from ..restore import identities_from

    for ident in identities_from(identity_file):
        if isinstance(ident, X25519Identity):
            click.echo(ident.recipient().to_string())


def register(cli: click.Group) -> None:
    """Add ``keys`` to the ``backup`` group."""
    cli.add_command(keys)
