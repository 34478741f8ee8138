"""``backup keys``: create an age identity and print the recipients of one.

An identity file is written with mode 0600 from its creation (never readable by others for
a moment), and an existing one is replaced only with ``--force``. ``--pq`` makes a
post-quantum hybrid identity (``AGE-SECRET-KEY-PQ-1...``, recipient ``age1pq1...``).
``--passphrase`` writes the identity file encrypted with a passphrase (age's scrypt, as
``age -p`` would), ASCII-armored by default so it can be printed or pasted; restore, verify
and rebuild read such files, asking for the passphrase ($BACKUP_IDENTITY_PASSPHRASE).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from ..errors import Error
from .output import handled, iso

__all__ = ["register"]


@click.group()
def keys() -> None:
    """Create and inspect age keys."""


def _new_passphrase() -> str:
    env = os.environ.get("BACKUP_IDENTITY_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise Error("--passphrase: set BACKUP_IDENTITY_PASSPHRASE (no terminal to ask on)")
    return str(
        click.prompt("Passphrase for the identity file", hide_input=True, confirmation_prompt=True)
    )


@keys.command("generate")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Identity file to write (mode 0600).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option(
    "--pq",
    is_flag=True,
    help="A post-quantum hybrid identity (ML-KEM-768 + X25519, age1pq1... recipient).",
)
@click.option(
    "--passphrase",
    "encrypt",
    is_flag=True,
    help="Encrypt the identity file with a passphrase ($BACKUP_IDENTITY_PASSPHRASE, else asked).",
)
@click.option(
    "--armor/--no-armor",
    default=None,
    help="ASCII-armor the encrypted identity file (the default with --passphrase).",
)
@handled
def keys_generate(out_path: Path, force: bool, pq: bool, encrypt: bool, armor: bool | None) -> None:
    """Write a new age identity to FILE and print its recipient (age1... or age1pq1...)."""
    from ..crypto.age import HybridIdentity, ScryptRecipient, X25519Identity, encrypt_bytes

    if armor is not None and not encrypt:
        raise Error("--armor applies to an encrypted identity file: add --passphrase")
    ident = HybridIdentity.generate() if pq else X25519Identity.generate()
    rcpt = ident.recipient().to_string()
    text = f"# created: {iso(datetime.now(UTC))}\n# public key: {rcpt}\n{ident.to_string()}\n"
    data = text.encode()
    if encrypt:
        passphrase = _new_passphrase()
        if not passphrase:
            raise Error("empty passphrase")
        data = encrypt_bytes(data, [ScryptRecipient(passphrase)], armor=armor is not False)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(out_path, flags, 0o600)
    except FileExistsError:
        raise Error(f"{out_path} exists; use --force to overwrite it") from None
    except OSError as e:
        raise Error(f"cannot write {out_path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
    click.echo(rcpt)


@keys.command("recipient")
@click.argument("identity_file", type=click.Path(path_type=Path))
@handled
def keys_recipient(identity_file: Path) -> None:
    """Print the recipients (age1... or age1pq1...) of an identity file."""
    from ..crypto.age import HybridIdentity, X25519Identity
    from ..restore import identities_from

    for ident in identities_from(identity_file):
        if isinstance(ident, X25519Identity | HybridIdentity):
            click.echo(ident.recipient().to_string())


def register(cli: click.Group) -> None:
    """Add ``keys`` to the ``backup`` group."""
    cli.add_command(keys)
