"""`alb-pcap lab`: rebuild a sample capture with real proxies in network namespaces."""

from __future__ import annotations

from pathlib import Path

import click

from .craft import CRAFTED
from .netns import LabError, check_requirements, tools_for
from .proxies import HEADERS, PROXIES
from .scenarios import SCENARIOS, Scenario, find


@click.command()
@click.argument("scenario", required=False)
@click.option("--proxy", "proxy_names", type=click.Choice(PROXIES), multiple=True,
              help="Proxy to run (repeatable); default: every proxy the scenario supports.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("lab-out"),
              show_default=True, help="Directory for the .pcap and .expected.json files.")
@click.option("--headers", type=click.Choice(HEADERS + ("both",)), default="forwarding", show_default=True,
              help="forwarding: X-Forwarded-For/-Port/-Proto and X-Amzn-Trace-Id; none: the proxy's "
                   "defaults without any of them (files named SCENARIO-PROXY-noxff.*); both: each run twice.")
@click.option("--keep-logs", is_flag=True, help="Also keep the raw proxy, target and client logs.")
@click.option("--list", "list_", is_flag=True, help="List the scenarios and exit.")
def lab(scenario: str | None, proxy_names: tuple[str, ...], out: Path, headers: str, keep_logs: bool,
        list_: bool) -> None:
    """Reproduce a proxy timeout mismatch in network namespaces and capture it.

    Runs HAProxy, nginx, Apache httpd or Caddy between a client and a target in namespaces
    (addresses in 198.18.0.0/15 only), mirrors the proxy's interfaces into VXLAN like AWS Traffic
    Mirroring, and writes SCENARIO-PROXY.pcap with SCENARIO-PROXY.expected.json (ground truth from
    the proxy's, target's and client's own logs). SCENARIO is a name or number from --list, or
    `all`. Needs root.

    Example:

    \b
        sudo alb-pcap lab keepalive-race --proxy nginx --out /tmp/lab
        sudo alb-pcap lab 5 --proxy caddy --headers none --out /tmp/lab
        sudo alb-pcap lab all --headers both --out sample_captures
    """
    if list_:
        _list()
        return
    if scenario is None:
        raise click.UsageError("give a SCENARIO (see --list) or `all`")
    if scenario in CRAFTED or scenario == "all":
        _craft(CRAFTED if scenario == "all" else [scenario], out)
        if scenario != "all":
            return
    chosen = SCENARIOS if scenario == "all" else [_find(scenario)]
    configs = HEADERS if headers == "both" else (headers,)
    try:
        check_requirements(tools_for(proxy_names or PROXIES))
        for sc in chosen:
            for proxy in proxy_names or PROXIES:
                for config in configs:
                    _run(sc, proxy, out, keep_logs, config, explicit=bool(proxy_names) and scenario != "all")
    except LabError as e:
        raise click.ClickException(str(e)) from e


def _craft(names, out: Path) -> None:
    """The seed article's ALB examples, crafted packet by packet: no root, no namespaces."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        paths = CRAFTED[name](out)
        click.echo("  ".join(str(p) for p in paths))


def _find(name: str) -> Scenario:
    try:
        return find(name)
    except KeyError:
        raise click.BadParameter(f"no scenario {name!r}; see --list", param_hint="SCENARIO") from None


def _list() -> None:
    for sc in SCENARIOS:
        skipped = "".join(f"  [no {p}: {why}]" for p, why in sc.unsupported.items())
        click.echo(f"{sc.number:2d} {sc.name:26s} {sc.description}{skipped}")
    for name in CRAFTED:
        click.echo(f"   {name:26s} crafted replay of the seed article's ALB capture (no root needed)")


def _run(sc: Scenario, proxy: str, out: Path, keep_logs: bool, headers: str, explicit: bool) -> None:
    from .runner import (  # keeps `alb-pcap --help` free of the lab's imports
        run_scenario,
        stem_of,
    )

    if proxy in sc.unsupported and not explicit:
        click.echo(f"{stem_of(sc, proxy, headers)}: skipped, {sc.unsupported[proxy]}", err=True)
        return
    result = run_scenario(sc, proxy, out, keep_logs, headers)
    kinds = ", ".join(f["kind"] + (f":{f['status']}" if f["status"] else "") for f in result.expected["findings"])
    click.echo(f"{result.capture}  findings: {kinds or 'none'}")
    if result.missing:
        click.echo(f"  warning: the run did not produce {', '.join(result.missing)}", err=True)
