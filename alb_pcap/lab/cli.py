"""`alb-pcap lab`: rebuild a sample capture with real proxies in network namespaces."""

from __future__ import annotations

import click


@click.command()
@click.argument("scenario", required=False)
@click.option("--list", "list_", is_flag=True, help="List the scenarios and exit.")
def lab(scenario: str | None, list_: bool) -> None:
    """Reproduce a proxy timeout mismatch in network namespaces and capture it."""
    raise click.ClickException("the capture lab is not built yet")
