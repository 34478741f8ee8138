"""``backup metrics``: the Prometheus series computed from the inventory, printed once.

For node_exporter's textfile collector (run it from cron and write the output to
``*.prom`` atomically), or to look at what a scrape of ``backup scheduler --metrics-port``
would say. The series are docs/monitoring.md's; this process's own (``process_*``) are left
out: a one-shot command's are meaningless.
"""

from __future__ import annotations

import sys

import click

from .context import Ctx, json_option
from .output import dump, handled

__all__ = ["register"]


@click.command()
@json_option()
@click.pass_obj
@handled
def metrics(obj: Ctx, as_json: bool) -> None:
    """Print the inventory's Prometheus metrics (text format; --json: one object per sample)."""
    from ..jobs.metrics import policies_of, registry_for, render

    reg = registry_for(obj.inventory, policies_of(obj.settings), process=False)
    if not as_json:
        sys.stdout.write(render(reg).decode())
        return
    dump(
        [
            {"name": s.name, "labels": dict(s.labels), "value": s.value}
            for family in reg.collect()
            for s in family.samples
        ]
    )


def register(cli: click.Group) -> None:
    """Add ``metrics`` to the ``backup`` group."""
    cli.add_command(metrics)
