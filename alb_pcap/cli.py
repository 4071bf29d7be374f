"""The command line: argv in, exit codes and terminal output out. Logic lives in the library."""

from __future__ import annotations

import os
import sys

import click

from . import __version__
from .diagnosis.detect import KINDS
from .diagnosis.diagnose import Diagnosis, DiagnosisResult
from .diagnosis.scoring import score
from .diagnosis.selection import BadTime, Selection, parse_time
from .model import CaptureError
from .outputs import export, records
from .outputs.records import result_dict
from .wire import pipeline

PROGRESS_MIN_BYTES = 20_000_000  # smaller captures finish before a progress bar is worth drawing
INTERNAL_ERROR_EXIT = 70  # sysexits.h EX_SOFTWARE
DEBUG_ENV = "ALB_PCAP_DEBUG"  # set to 1 to get the traceback of an internal error


class _Guarded(click.Group):
    """The last resort: a bug met on some capture is one line and a non-zero exit, never a traceback.

    ``ALB_PCAP_DEBUG=1`` lets the exception through, traceback and all, for developers.

    ``lab`` is loaded only when asked for (or listed by ``--help``): it brings scapy, half a
    second of start-up that ``analyze`` must not pay.
    """

    LAZY = {"lab": ("alb_pcap.lab.cli", "lab")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY and name not in self.commands:
            import importlib

            module, attr = self.LAZY[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            _reader_left()
        except Exception as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            click.echo(f"Error: {internal_error_line(exc)}", err=True)
            ctx.exit(INTERNAL_ERROR_EXIT)


def _reader_left() -> None:
    """``alb-pcap analyze F | head``: the reader left, which is no error of ours."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    sys.exit(0)


def internal_error_line(exc: Exception) -> str:
    """``internal error at frame N (FILE): KeyError: 1 (...)``, on one line whatever the message."""
    where = ""
    if isinstance(exc, pipeline.AnalysisError):
        where = f" at frame {exc.frame}" if exc.frame else " at the end of the capture"
        if exc.capture:
            where += f" ({exc.capture})"
        exc = exc.error
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"internal error{where}: {text} (a bug in alb-pcap: {DEBUG_ENV}=1 shows the traceback)"


CONTEXT = {"help_option_names": ["-h", "--help"]}
FINDINGS_EXIT = 3
SEVERITIES = {"error": ("error",), "warning": ("error", "warning"), "never": ()}


@click.group(cls=_Guarded, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="alb-pcap")
def cli() -> None:
    """Explain load-balancer 502/504/460 errors from packet captures."""


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--json", "json_out", metavar="FILE|-", help="Write the diagnosis as JSON ('-' for stdout).")
@click.option("--json-detail", type=click.Choice(["findings", "all"]), default="findings", show_default=True,
              help="'all' adds every connection and exchange with its headers to the JSON.")
@click.option("--ndjson", "ndjson_out", metavar="FILE|-", help="Write the findings one JSON object a line.")
@click.option("--csv", "csv_out", metavar="FILE|-", help="Write the findings as CSV.")
@click.option("--write-pcap", "pcap_out", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the frames of the findings' connections (both sides) as a pcap for Wireshark.")
@click.option("--html", "html_out", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML report: answer, timers figure, findings, ladder diagrams.")
@click.option("--proxy", "proxies", multiple=True, metavar="IP",
              help="An address of the proxy (repeatable); found from the traffic when not given.")
@click.option("--listener", "listeners", multiple=True, type=int, metavar="PORT",
              help="A port clients connect to on the proxy (repeatable).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Only findings of this kind.")
@click.option("--status", "statuses", multiple=True, type=int, metavar="CODE",
              help="Only findings where the client got this status (repeatable), e.g. 502.")
@click.option("--errors-only", is_flag=True, help="Only findings where the client got an error or nothing.")
@click.option("--flow", metavar="ADDR|IP:PORT|A->B",
              help="Only findings on a flow with this address or endpoint, or this flow in either direction.")
@click.option("--around", metavar="TIME", help="Only findings within --window of TIME: ISO 8601, epoch seconds, "
              "a log's time (22/Nov/2026:03:16:04 +0000) or seconds from the capture's start (+12.5).")
@click.option("--window", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds either side of --around.")
@click.option("--max-timelines", default=10, show_default=True, type=click.IntRange(min=0),
              help="Timelines drawn at most (every kind gets one).")
@click.option("--all", "everything", is_flag=True, help="Keep and draw every finding (no cap per kind).")
@click.option("--fail-on", type=click.Choice(list(SEVERITIES)), default="error", show_default=True,
              help="Exit with status 3 when a finding of this severity (or worse) is reported.")
@click.option("-v", "--verbose", is_flag=True, help="Also the statistics: captures, connections, exchanges, "
              "proxies, timers.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="all cores",
              help="Processes reading the captures, split by connection; the diagnosis stays in one. Captures "
              "under 8 MB in all, and stdin, are read in one process. The output is the same for any N.")
@click.option("--log", "logs", multiple=True, metavar="FILE",
              help="The proxy's log (repeatable; plain or gzip, a directory or a glob): ALB access or connection "
              "log, nginx access or error log, HAProxy httplog. Each error line is joined with the wire.")
@click.option("--log-format", metavar="FMT", help="A custom log format: an nginx log_format string ($variables) "
              "or an HAProxy log-format (%ci:%cp ...).")
@click.option("--log-detail", type=click.Choice(["errors", "all"]), default="errors", show_default=True,
              help="'all' also reports healthy log lines that joined a transaction on the wire.")
def analyze(captures: tuple[str, ...], json_out: str | None, json_detail: str, ndjson_out: str | None,
            csv_out: str | None, pcap_out: str | None, html_out: str | None, proxies: tuple[str, ...],
            listeners: tuple[int, ...], kinds: tuple[str, ...], statuses: tuple[int, ...], errors_only: bool,
            flow: str | None, around: str | None, window: float, max_timelines: int, everything: bool,
            fail_on: str, verbose: bool, jobs: int = 1, logs: tuple[str, ...] = (), log_format: str | None = None,
            log_detail: str = "errors") -> None:
    """Explain 502/504/460 responses in CAPTURE(s): pcap, pcapng, gzip'ed or not; '-' reads stdin.

    Several captures (the client side and the target side, say) are read as one timeline.
    Exit status: 0 nothing wrong, 1 unusable input, 3 findings (see --fail-on).

    Example:

    \b
        alb-pcap analyze sample_captures/alb-keepalive-race-mirror.pcap
        alb-pcap analyze front.pcap back.pcap --status 502 --json findings.json
    """
    selection = Selection(kinds, statuses, errors_only, flow, _parse_time(around) if around else None,
                          round(window * 1e9))
    diagnosis = Diagnosis(proxies=proxies, listeners=listeners, selection=selection,
                          keep_per_kind=None if everything else 200)
    json_sink = export.JsonExport(json_detail) if json_out else None
    sinks = [diagnosis] + ([json_sink] if json_sink and json_detail == "all" else [])
    coverage = _log_coverage(log_format) if logs else None
    summary, result = _run(captures, sinks + ([coverage] if coverage else []), diagnosis, jobs)
    log_report = _read_logs(logs, result, coverage, log_format, log_detail) if logs else None
    if json_sink:
        _write_json(json_sink, summary, result, json_out, log_report)
    logs_of = _finding_logs(log_report, result)
    for target, write in ((ndjson_out, records.write_ndjson), (csv_out, records.write_csv)):
        if target:
            _write(target, lambda out: write(result, out, logs_of))
    if html_out:
        _write_html(summary, result, html_out, logs_of)
    if pcap_out:
        _write_pcap(captures, result, pcap_out)
    if "-" not in (json_out, ndjson_out, csv_out):
        _print(summary, result, selection, None if everything else max_timelines, verbose, log_report)
    if any(f.severity in SEVERITIES[fail_on] for f in result.findings):
        sys.exit(FINDINGS_EXIT)


def _print(summary: pipeline.Summary, result: DiagnosisResult, selection: Selection, max_timelines: int | None,
           verbose: bool, log_report=None) -> None:
    from rich.console import Console  # rich only when something is drawn

    from .outputs import report

    console = Console()
    if not console.is_terminal:  # piped: nothing cut or folded, no colour
        console = Console(width=100_000, no_color=True, highlight=False)
    console.on_broken_pipe = _reader_left  # rich would exit 1, our status for unusable input
    console.print(report.answer(summary, result, selection))
    if log_report is not None:
        console.print(report.logs_view(log_report, result))
    if verbose:
        console.print(report.details_view(summary, result))
    console.print(report.findings_view(result, max_timelines, log_report))


@cli.command(name="score")
@click.argument("captures", nargs=-1, required=True, type=click.Path())
@click.option("--expected", "expected_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A lab ground-truth file (*.expected.json).")
def score_command(captures: tuple[str, ...], expected_path: str) -> None:
    """Compare alb-pcap's findings on CAPTURE(s) with a lab run's ground truth.

    Prints matched, missed and extra findings with precision and recall; exits 1 when any
    expected finding was missed.

    Example:

    \b
        alb-pcap score lab-out/keepalive-race-nginx.pcap --expected lab-out/keepalive-race-nginx.expected.json
    """
    diagnosis = Diagnosis()
    _, result = _run(captures, [diagnosis], diagnosis)
    try:
        s = score(result, expected_path)
    except (ValueError, KeyError) as e:
        raise click.ClickException(f"{expected_path}: not a ground-truth file ({e})") from e
    for label, items in (("missed", s.missed), ("extra", s.extra)):
        for item in items:
            click.echo(f"{label:7} {item.get('kind')} side={item.get('side')} status={item.get('status')} "
                       f"ts={item.get('ts')}")
    click.echo(f"precision {s.precision:.2f}  recall {s.recall:.2f}  "
               f"({s.matched} of {s.expected} expected found, {len(s.missed)} missed, {len(s.extra)} extra)")
    if s.missed:
        sys.exit(1)


def _run(captures, sinks, diagnosis: Diagnosis, jobs: int = 1) -> tuple[pipeline.Summary, DiagnosisResult]:
    try:
        with _progress(captures) as tick:
            summary = pipeline.analyze(list(captures), sinks, progress=tick, jobs=jobs)
    except CaptureError as e:
        raise click.ClickException(str(e)) from e
    return summary, diagnosis.finish()


class _progress:
    """A packet counter on stderr for large captures, only when stderr is a terminal."""

    def __init__(self, captures) -> None:
        size = sum(os.path.getsize(c) for c in captures if os.path.isfile(c))
        self.bar = None
        if sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES:
            from rich.console import Console
            from rich.progress import (
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.completed:,} packets"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.start()
        task = self.bar.add_task("reading")
        return lambda n: self.bar.update(task, completed=n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _parse_time(text: str) -> tuple[str, int]:
    try:
        return parse_time(text)
    except BadTime:
        raise click.BadParameter(f"{text!r} is not a time: give ISO 8601 (2026-11-22T03:16:04Z), epoch seconds, "
                                 "a log's time (22/Nov/2026:03:16:04 +0000) or +SECONDS from the capture's start",
                                 param_hint="--around") from None


def _write_pcap(captures: tuple[str, ...], result: DiagnosisResult, target: str) -> None:
    from .outputs.excerpt import Wanted, write_excerpt

    wanted = []
    for f in result.findings:
        for flow in filter(None, (f.client_flow, f.target_flow)):
            conn = result.connection(flow)
            wanted.append(Wanted(flow, conn.start_ns if conn else None, conn.end_ns if conn else None))
    try:
        n = write_excerpt(list(captures), wanted, target)
    except CaptureError as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror}") from e
    click.echo(f"{n:,} frames of {len({w.flow for w in wanted})} connections written to {target}", err=True)


def _write(target: str, write) -> None:
    """``write(out)`` to a file, or to stdout for '-'; a file that cannot be written is a one-line error."""
    if target == "-":
        write(sys.stdout)
        return
    try:
        with open(target, "w", encoding="utf-8", newline="") as out:
            write(out)
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror}") from e


def _log_coverage(log_format: str | None):
    from .logs.join import Coverage
    from .logs.parse import custom_parser

    if log_format:
        try:
            custom_parser(log_format)
        except Exception as e:  # ValueError, re.error: a format that makes no pattern
            raise click.BadParameter(f"{log_format!r}: {e}", param_hint="--log-format") from None
    return Coverage()


def _read_logs(paths, result: DiagnosisResult, coverage, log_format: str | None, detail: str):
    from .logs.files import LogFileError
    from .logs.join import read_logs

    try:
        return read_logs(list(paths), result, coverage, log_format, detail)
    except LogFileError as e:
        raise click.ClickException(str(e)) from e


def _finding_logs(log_report, result: DiagnosisResult) -> list[dict | None] | None:
    """Per finding, its log line (None: not logged); None when no log was given."""
    if log_report is None:
        return None
    from .logs.join import finding_logs

    return finding_logs(log_report, result)


def _document(result: DiagnosisResult, log_report) -> dict:
    """result_dict, with log_lines[], log_summary and findings[].log when logs were given."""
    doc = result_dict(result)
    if log_report is not None:
        from .logs.join import finding_log, logs_dict

        doc.update(logs_dict(log_report, result))
        for n, finding in enumerate(doc["findings"]):
            finding["log"] = finding_log(log_report, n)
    return doc


def _write_json(sink: export.JsonExport, summary: pipeline.Summary, result: DiagnosisResult, target: str,
                log_report=None) -> None:
    if target == "-":
        sink.finish(summary, sys.stdout, _document(result, log_report))
        return
    try:
        with open(target, "w", encoding="utf-8") as out:
            sink.finish(summary, out, _document(result, log_report))
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror}") from e


def _write_html(summary: pipeline.Summary, result: DiagnosisResult, target: str,
                logs: list[dict | None] | None = None) -> None:
    from .outputs.html_report import build_html

    try:
        with open(target, "w", encoding="utf-8") as out:
            out.write(build_html(result, summary, logs=logs))
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror}") from e


if __name__ == "__main__":
    cli()
