"""The context every ``backup`` command is given (``click.pass_obj``): settings, the policy
file and the inventory, each opened on first use, so a command that needs no inventory
never imports SQLAlchemy and one that needs no policy runs without a policy file; and the
options many commands take the same way (``--json``, ``--identity``).

Nothing here imports a command module or the package's ``__init__``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.decorators import FC

from ..errors import PolicyError
from ..policy import Policy, PolicyFile, get_policy, read_policies
from ..settings import Settings

if TYPE_CHECKING:
    from ..inventory import Inventory

__all__ = ["Ctx", "identity_option", "json_option"]


class Ctx:
    """Settings, policies and inventory, opened on first use."""

    #: set by main: this process is the command's own, not a test's or a library user's
    freeze_after_open = False

    def __init__(self, config: Path | None) -> None:
        self.settings = Settings()
        if config is not None:
            self.settings.config = config
        self._inv: Inventory | None = None
        self._policies: PolicyFile | None = None

    @property
    def inventory(self) -> Inventory:
        if self._inv is None:
            from ..inventory import Inventory

            self._inv = Inventory(self.settings.inventory_url)
            if self.freeze_after_open:
                # what the start built (modules, ORM mappers, pydantic models) lives as long
                # as the process: later collections need not walk it again (see main)
                gc.freeze()
        return self._inv

    @property
    def policies(self) -> PolicyFile:
        """The policy file; each policy is validated when the command first uses it, so a
        command pays, and fails, only for the policies it touches (backup/policy.py). Read
        once per command; the job context reads the same parsed file (read_policies)."""
        if self._policies is None:
            self._policies = read_policies(self.settings.config)
            _warn_costly(self._policies, self.settings)
        return self._policies

    def policy(self, name: str) -> Policy:
        return get_policy(self.policies, name, self.settings.config)

    def policy_if_any(self, name: str) -> Policy | None:
        """The named policy, or None when there is no policy file or it has no such policy:
        a bare machine, after ``backup inventory rebuild``, restores, lists and verifies
        from the inventory alone. A policy file that exists but is broken (or this policy in
        it) still fails."""
        if not self.settings.config.exists():
            return None
        return self.policies.get(name)

    def bucket_policy(self, name: str) -> Policy:
        """The named policy, which must back up a bucket (``source = s3://...``).

        Raises:
            PolicyError: the policy backs up local paths.
        """
        pol = self.policy(name)
        if pol.source is None:
            raise PolicyError(
                str(self.settings.config),
                f"policy {name!r} has no bucket source (source = s3://...)",
            )
        return pol


def json_option(help: str = "Print JSON.") -> Callable[[FC], FC]:
    """Returns: the ``--json`` flag (``as_json``) every listing and result has."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def identity_option(
    help: str = "age identity file (default: $BACKUP_IDENTITY).",
) -> Callable[[FC], FC]:
    """Returns: the ``--identity FILE`` option of the commands that decrypt."""
    return click.option("--identity", type=click.Path(path_type=Path), help=help)


def _warn_costly(policies: PolicyFile, settings: Settings) -> None:
    """Warn (stderr, one line each) about settings that fight a policy's storage class: a
    retention shorter than the class's minimum storage duration, a full_every that keeps
    many more fulls billed than the retention needs (backup/economics.py). Reads only the
    cost fields of the policies with a minimum (no recipients, no targets)."""
    from ..pricing import Prices, class_of

    prices = Prices.from_settings(settings)
    cold = policies.costed(lambda target: prices.minimum(class_of(target) or "").days > 0)
    if not cold:
        return
    from ..economics import policy_warnings

    for p in cold:
        for line in policy_warnings(p, prices):
            click.echo(f"warning: {line}", err=True)
