"""The HTML report (``analyze --html``): self-contained, every finding, a ladder per failing transaction,
capture text escaped; and a real browser (headless Chromium) runs its script and draws it."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from alb_pcap.cli import cli
from alb_pcap.diagnosis.diagnose import Diagnosis
from alb_pcap.outputs.html_report import build_html
from alb_pcap.wire import pipeline

from .conftest import SAMPLES

SAMPLE_NAMES = ("keepalive-race-haproxy.pcap", "alb-keepalive-race.pcap", "mixed-nginx.pcap",
                "alb-idle-timeout-keepalive-probes.pcap")


@functools.lru_cache(maxsize=None)
def _analysed(name: str):
    diagnosis = Diagnosis()
    summary = pipeline.analyze([str(SAMPLES / name)], [diagnosis])
    return summary, diagnosis.finish()


@functools.lru_cache(maxsize=None)
def _page(name: str) -> str:
    summary, result = _analysed(name)
    return build_html(result, summary)


def _transaction_findings(result):
    keys = {leg.exchange.key for tx in result.transactions for leg in (tx.front, *tx.backs) if leg}
    return [f for f in result.findings if f.exchange in keys]


# -- structure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_the_page_loads_nothing_from_anywhere(name):
    page = _page(name)
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?i)\b(src|href|xlink:href|action)\s*=\s*(?!["']?#)""", page), "only #anchors link"
    assert not re.search(r"(?i)<link\b|@import|url\(|<iframe|<img\b|<object|<embed", page)
    assert re.search(r"<script>", page) and not re.search(r"<script\s+src", page)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_the_answer_comes_first(name):
    page = _page(name)
    _, result = _analysed(name)
    assert page.index('id="answer"') < page.index('id="timers"') < page.index('id="findings-section"') \
        < page.index('id="ladders"')
    for line in result.verdict:
        assert f"<li>{_esc(line)}</li>" in page
    for proxy in result.proxies:
        assert _esc(proxy.software) in page


def test_the_answer_counts_502_504_460_type_findings():
    page = _page("mixed-nginx.pcap")  # 2 target resets (502), 1 gateway timeout (504), 1 client abort (460)
    counts = dict(re.findall(r'data-status="(\d+)"><b>(\d+)</b>', page))
    assert counts == {"502": "2", "504": "1", "460": "1"}


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_finding_is_a_row_of_the_table(name):
    page = _page(name)
    _, result = _analysed(name)
    body = page[page.index('<table id="findings"'):]
    body = body[:body.index("</table>")]
    rows = re.findall(r'<tr data-kind="([^"]+)".*?</tr>', body)
    assert rows == [f.kind for f in result.findings]
    for f in result.findings:
        assert f'data-v="{f.ts_ns}"' in body and _esc(f.summary) in body
    assert re.findall(r'<option value="([^"]+)">', page) == sorted({f.kind for f in result.findings})


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_a_ladder_per_failing_transaction(name):
    page = _page(name)
    _, result = _analysed(name)
    with_tx = _transaction_findings(result)
    drawn = re.findall(r'<section class="ladder" id="ladder-\d+" data-kind="[^"]+" data-transaction="(\d+):(\d+)"',
                       page)
    assert sorted((int(a), int(b)) for a, b in drawn) == sorted(f.exchange for f in with_tx)
    ladders = re.findall(r'<section class="ladder"', page)
    assert len(ladders) == len(result.findings)  # the idle closes get a ladder of their connection too
    assert page.count("<svg") == len(ladders) + 1  # and the timers figure


@pytest.mark.parametrize("name, frames", [("keepalive-race-haproxy.pcap", {"22", "48", "80"}),
                                          ("alb-keepalive-race.pcap", {"35"})])
def test_the_crossing_fin_of_a_race_is_highlighted(name, frames):
    page = _page(name)
    crossing = re.findall(r'<g class="arrow fin crossing" data-frame="(\d+)" data-crossing="true">'
                          r'<title>FIN from the target</title>', page)
    assert set(crossing) == frames and len(crossing) == len(frames)
    assert page.count('data-crossing="true"') == len(frames)


def test_no_crossing_fin_where_there_was_no_race():
    page = _page("mixed-nginx.pcap")
    assert 'data-crossing="true"' not in page
    assert 'class="arrow fin cut"' in page or 'class="arrow rst cut"' in page  # the resets' closes, marked


def test_idle_gaps_are_compressed_and_labelled():
    assert "⋮ 1.90 s idle" in _page("keepalive-race-haproxy.pcap")
    probes = _page("alb-idle-timeout-keepalive-probes.pcap")
    assert "⋮ 60.0 s idle" in probes and probes.count('class="arrow probe"') == 5
    assert "⋮ 3.00 s waiting" in _page("mixed-nginx.pcap")  # the 504: the proxy waited for the response


def test_the_timers_figure_shows_the_misalignment():
    page = _page("mixed-nginx.pcap")
    _, result = _analysed("mixed-nginx.pcap")
    figure = page[page.index('<svg class="timers"'):]
    figure = figure[:figure.index("</svg>")]
    assert 'data-timer="target_keepalive_timeout"' in figure and 'data-timer="proxy_idle_timeout"' in figure
    assert '<rect class="danger"' in figure and "502 risk" in figure
    assert figure.count('<circle class="dot"') == len(result.idle_closes) == result.idle_closes_total == 5
    race = _page("keepalive-race-haproxy.pcap")
    assert race.count('<g class="dot race">') == 3  # the three requests that crossed a FIN, at 2.0 s


def test_idle_closes_are_recorded_by_closer():
    _, result = _analysed("mixed-nginx.pcap")
    by = sorted((closer, side) for _, closer, side, _ in result.idle_closes)
    assert by == [("proxy", "client")] + [("target", "target")] * 4
    assert all(2.4 < idle < 3.1 for idle, *_ in result.idle_closes)
    _, probes = _analysed("alb-idle-timeout-keepalive-probes.pcap")
    assert sorted((c, s, round(i)) for i, c, s, _ in probes.idle_closes) == [("proxy", "client", 60),
                                                                             ("proxy", "target", 60)]


def test_ladders_beyond_the_limit_are_counted():
    summary, result = _analysed("keepalive-race-haproxy.pcap")
    page = build_html(result, summary, max_ladders=1)
    assert page.count('<section class="ladder"') == 1
    assert "2 more finding(s) not drawn" in page


def test_what_comes_from_the_capture_is_escaped():
    summary, result = _analysed("alb-keepalive-race.pcap")
    evil = '<script>alert("x")</script>'
    f = dataclasses.replace(result.findings[0], summary=evil, recommendation=evil, client_flow=evil + "->a:1")
    txs = []
    for tx in result.transactions:
        front = dataclasses.replace(tx.front, exchange=tx.front.exchange._replace(uri="/<img src=x onerror=alert(1)>"))
        txs.append(dataclasses.replace(tx, front=front))
    proxies = tuple(dataclasses.replace(p, software="<b>evil</b>") for p in result.proxies)
    evil_result = dataclasses.replace(result, findings=(f,), transactions=tuple(txs), proxies=proxies,
                                      verdict=(evil,), idle_closes=((1.0, "proxy", "client", evil),))
    evil_summary = dataclasses.replace(summary, captures=[dataclasses.replace(c, path="<i>x</i>.pcap")
                                                          for c in summary.captures])
    page = build_html(evil_result, evil_summary, title="<title>")
    assert page.count("<script>") == 1  # the report's own
    for raw in ("<img", "<b>evil", "<i>x", "<title><title>", 'alert("x")'):
        assert raw not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "/&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert "&lt;i&gt;x&lt;/i&gt;.pcap" in page


def test_analyze_writes_the_html_file(tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["analyze", str(SAMPLES / "alb-keepalive-race-mirror.pcap"), "--html", str(out)])
    assert result.exit_code in (0, 3), result.output  # 3: findings reported, where --fail-on exists
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "keepalive_race" in page and 'data-crossing="true"' in page


def test_an_unwritable_html_file_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["analyze", str(SAMPLES / "alb-keepalive-race.pcap"), "--html",
                                      str(tmp_path / "no" / "such" / "dir" / "r.html")])
    assert result.exit_code == 1 and result.output.startswith("Error: cannot write") \
        and result.output.count("\n") == 1


def _esc(text: str) -> str:
    import html

    return html.escape(text, quote=True)


# -- a real browser ------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)


# Clicks the status header twice (descending), then filters by kind and by text, and writes what it saw.
_DRIVE = """<script>
(function () {
  var out = {}, heads = document.querySelectorAll("#findings th");
  function firsts() { return Array.prototype.map.call(document.querySelectorAll("#findings tbody tr"),
    function (r) { return r.cells[0].textContent; }); }
  out.before = firsts();
  heads[4].click(); heads[4].click();
  out.sorted = firsts(); out.sort = heads[4].getAttribute("aria-sort");
  var kind = document.getElementById("f-kind"); kind.value = "target_reset";
  kind.dispatchEvent(new Event("change"));
  out.byKind = document.getElementById("f-count").textContent;
  kind.value = ""; kind.dispatchEvent(new Event("change"));
  var text = document.getElementById("f-text"); text.value = "sleep/4"; text.dispatchEvent(new Event("input"));
  out.byText = document.getElementById("f-count").textContent;
  out.visible = Array.prototype.filter.call(document.querySelectorAll("#findings tbody tr"),
    function (r) { return !r.hidden; }).map(function (r) { return r.getAttribute("data-kind"); });
  document.body.setAttribute("data-test", JSON.stringify(out));
})();
</script></body>"""


@needs_chromium
def test_chromium_runs_the_script_sorts_and_filters(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(_page("mixed-nginx.pcap"), encoding="utf-8")
    run = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert re.search(r'<html[^>]* data-report="ready"', dom)
    assert 'data-sortable="ready"' in dom and "9 of 9 shown" in dom

    driven = tmp_path / "driven.html"
    driven.write_text(_page("mixed-nginx.pcap").replace("</body>", _DRIVE), encoding="utf-8")
    run = _chromium(tmp_path, "--dump-dom", driven.as_uri())
    seen = json.loads(re.search(r'data-test="([^"]*)"', run.stdout).group(1).replace("&quot;", '"'))
    _, result = _analysed("mixed-nginx.pcap")
    statuses = {str(i): (f.status if f.status is not None else -1) for i, f in enumerate(result.findings, 1)}
    assert seen["before"] == [str(i) for i in range(1, len(result.findings) + 1)]
    assert [statuses[n] for n in seen["sorted"]] == sorted(statuses.values(), reverse=True)
    assert seen["sort"] == "descending"
    assert seen["byKind"] == "2 of 9 shown"
    assert seen["byText"] == "1 of 9 shown" and seen["visible"] == ["gateway_timeout"]


def _png(data: bytes, every: int = 8) -> tuple[tuple[int, int], set[bytes]]:
    """(width, height) and the colours of every ``every``-th row of an 8-bit RGB(A) PNG: a tiny decoder."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data[pos + 8:pos + 8 + n])
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    width, height, depth, colour_type, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0 and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    prev, colours = bytearray(stride), set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f in (3, 4):
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                if f == 3:
                    line[i] = (line[i] + ((a + b) >> 1)) & 255
                    continue
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % every == 0:
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return (width, height), colours


@needs_chromium
def test_chromium_draws_the_report(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(_page("keepalive-race-haproxy.pcap"), encoding="utf-8")
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    size, colours = _png(shot.read_bytes())
    assert size == (1280, 2000)
    # a blank page has 1-2 colours; text, the cards and the figure's red band and dots give hundreds
    assert len(colours) > 100
    assert any(c[0] > 200 and c[1] < 80 and c[2] < 80 for c in colours)  # the red of the 502 count / races


def test_python_m_writes_the_html_file_too(tmp_path):
    """``python3 -m alb_pcap.cli``: the writer is defined before the module runs the command."""
    import sys

    out = tmp_path / "report.html"
    run = subprocess.run([sys.executable, "-m", "alb_pcap.cli", "analyze", str(SAMPLES / "alb-keepalive-race.pcap"),
                          "--html", str(out)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode in (0, 3), run.stderr
    assert 'data-crossing="true"' in out.read_text(encoding="utf-8")
