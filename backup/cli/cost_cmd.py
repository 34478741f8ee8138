"""``backup cost``: a policy's storage bill, forecast from what its archives measure.

From the inventory and the price table only (backup/pricing.py, the settings' overrides):
no target is asked anything, so the forecast is free.
"""

from __future__ import annotations

import click

from .context import Ctx, json_option
from .output import dump, handled, new_table, size, table

__all__ = ["register"]


@click.command()
@click.argument("policy")
@click.option(
    "--months", type=click.IntRange(1, 120), default=12, show_default=True, help="Months averaged."
)
@json_option()
@click.pass_obj
@handled
def cost(obj: Ctx, policy: str, months: int, as_json: bool) -> None:
    """Forecast POLICY's monthly and yearly storage bill as configured (full_every,
    retention, storage class, the sizes and growth its archives measure, minimum storage
    durations, per-object overhead, requests), beside alternatives with their restore
    time and cost."""
    from ..economics import forecast
    from ..pricing import Prices

    pol = obj.policy(policy)
    f = forecast(
        pol, obj.inventory.archives(policy), Prices.from_settings(obj.settings), months=months
    )
    if as_json:
        dump(f.to_json())
        return
    if f.current is None:
        click.echo(f"policy {policy!r} writes to {pol.target}: no storage class to bill")
        return
    c = f.current
    click.echo(
        f"{policy}: {f.storage_class}, a run every {f.run_every_days:g} d, a full every "
        f"{c.full_every_days:g} d; last full {size(f.full_bytes)}, incrementals "
        f"{size(f.incremental_bytes)} (median of {f.measured_from} archive(s)), growth "
        f"{f.growth_per_month * 100:.1f}%/month"
    )
    click.echo(
        f"forecast: ${c.monthly_usd:.2f}/month, ${c.monthly_usd * 12:.2f}/year "
        f"(storage ${c.storage_usd:.2f}, per-object overhead ${c.overhead_usd:.2f}, requests "
        f"${c.requests_usd:.2f}); {c.archives_billed:.0f} archives billed at a time, "
        f"{c.fulls_billed:.1f} of them fulls"
    )
    t = new_table(
        "class", "full every", "$/month", "$/year", "fulls billed", "restore time", "restore $",
        box=None,
    )  # fmt: skip
    for s in [c, *f.alternatives]:
        lo, hi = s.restore_hours
        t.add_row(
            s.storage_class + (" (now)" if s is c else ""),
            f"{s.full_every_days:g} d",
            f"{s.monthly_usd:.2f}",
            f"{s.monthly_usd * 12:.2f}",
            f"{s.fulls_billed:.1f}",
            f"{lo:g}-{hi:g} h" if hi else "at once",
            f"{s.restore_usd:.2f}",
        )
    table(t)


def register(cli: click.Group) -> None:
    """Add ``cost`` to the ``backup`` group."""
    cli.add_command(cost)
