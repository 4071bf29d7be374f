"""The command line: argv in, exit codes and terminal output out. Logic lives in the library."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from . import __version__, export, pipeline, report
from .model import CaptureError


@click.group()
@click.version_option(__version__, prog_name="alb-pcap")
def cli() -> None:
    """Explain load-balancer 502/504/460 errors from packet captures."""


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "json_out", metavar="FILE|-", help="Write the findings as JSON ('-' for stdout).")
def analyze(captures: tuple[str, ...], json_out: str | None) -> None:
    """Explain 502/504/460 responses in CAPTURE(s): pcap, pcapng, gzip'ed or not.

    Several captures (the client side and the target side, say) are read as one timeline.

    Example:

    \b
        alb-pcap analyze sample_captures/alb-keepalive-race.pcap
        alb-pcap analyze front.pcap back.pcap --json findings.json
    """
    sinks = [export.JsonExport()] if json_out else []
    try:
        summary = pipeline.analyze(list(captures), sinks)
    except CaptureError as e:
        raise click.ClickException(str(e)) from e
    if json_out:
        _write_json(sinks[0], summary, json_out)
    if json_out != "-":
        Console().print(report.summary_view(summary))


def _write_json(sink: export.JsonExport, summary: pipeline.Summary, target: str) -> None:
    if target == "-":
        sink.finish(summary, sys.stdout)
        return
    try:
        with open(target, "w", encoding="utf-8") as out:
            sink.finish(summary, out)
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror}") from e


def _register_lab() -> None:
    from .lab.cli import lab  # the lab needs nothing at import time beyond click

    cli.add_command(lab)


_register_lab()
