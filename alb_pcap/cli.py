"""The command line: argv in, exit codes and terminal output out. Logic lives in the library."""

from __future__ import annotations

import click

from . import __version__


@click.group()
@click.version_option(__version__, prog_name="alb-pcap")
def cli() -> None:
    """Explain load-balancer 502/504/460 errors from packet captures."""


def _register_lab() -> None:
    from .lab.cli import lab  # the lab needs nothing at import time beyond click

    cli.add_command(lab)


_register_lab()
