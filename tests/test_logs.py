"""Proxy logs: the parsers on real-format lines, damaged lines, files, and the join with the wire."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alb_pcap.diagnosis.diagnose import Diagnosis
from alb_pcap.lab import craft
from alb_pcap.logs.join import Coverage, read_logs
from alb_pcap.wire import pipeline

from .conftest import SAMPLES


def analyse(captures: list[Path], logs: list[Path], log_format: str | None = None, detail: str = "errors"):
    diagnosis, coverage = Diagnosis(), Coverage()
    pipeline.analyze([str(c) for c in captures], [diagnosis, coverage])
    result = diagnosis.finish()
    return result, read_logs([str(p) for p in logs], result, coverage, log_format, detail)


# -- the crafted ALB captures and their access logs ------------------------------------------------


@pytest.mark.parametrize("name", list(craft.CRAFTED))
def test_crafted_alb_log_lines_join_their_findings(name):
    """Every error line joins the finding the truth names; every finding finds its line or is not logged."""
    truth = json.loads((SAMPLES / f"{name}.expected.json").read_text())
    result, report = analyse([SAMPLES / f"{name}.pcap"], [SAMPLES / truth["access_log"]])
    assert report.unparsed == 0 and report.parsed == len((SAMPLES / truth["access_log"]).read_text().splitlines())
    logged = {f["log"]["line"]: f for f in truth["findings"] if f["log"]}
    errors = [j for j in report.lines if j.record.error]
    assert sorted(j.record.line for j in errors) == sorted(
        n for n, f in logged.items() if f["status"] is None or f["status"] >= 500 or f.get("proxy_status"))
    for j in errors:
        assert j.finding is not None, j.why_not
        assert result.findings[j.finding].kind == logged[j.record.line]["kind"]
        assert j.matched_by == "trace id"
    wanted = sorted((f["kind"], f["log"]["line"] if f["log"] else None) for f in truth["findings"])
    got = sorted((f.kind, report.finding_lines[n].record.line if n in report.finding_lines else None)
                 for n, f in enumerate(result.findings))
    assert got == wanted


def test_crafted_alb_log_has_the_articles_fields():
    """The 460 line carries the article's values: 0.000 -1 -1 460 - 151 0, its trace id and request time."""
    from alb_pcap.logs.parse import alb_fields

    line = (SAMPLES / "alb-client-timeout-460.log").read_text().splitlines()[0]
    f = alb_fields(line)
    assert (f["request_processing_time"], f["target_processing_time"], f["response_processing_time"]) == \
        ("0.000", "-1", "-1")
    assert (f["elb_status_code"], f["target_status_code"], f["received_bytes"], f["sent_bytes"]) == \
        ("460", "-", "151", "0")
    assert f["trace_id"] == craft.ARTICLE_460_TRACE_ID
    assert f["request_creation_time"] == "2025-12-15T17:17:38.632000Z"
    assert f["conn_trace_id"].startswith("TID_") and f["request_transform_status"] == "-"


# -- parsers on real-format lines --------------------------------------------------------------

from alb_pcap.logs.parse import (
    ALB_FIELDS,
    LineParser,
    alb_fields,
    custom_parser,
    parse_alb,
    parse_alb_connection,
    parse_haproxy_httplog,
    parse_nginx_error,
)

# The seed blog's real ALB access-log line (its 460).
BLOG_460 = (
    'http 2025-12-15T17:17:48.637503Z app/alb-demo/1fa8b17e4c17e7c7 54.206.98.238:46804 172.31.6.52:80 0.000 -1 -1 '
    '460 - 151 0 "GET http://13.55.30.78:80/delay.php HTTP/1.1" "python-requests/2.25.1" - - '
    'arn:aws:elasticloadbalancing:ap-southeast-2:592752082067:targetgroup/alb-demo/e1419229e570d841 '
    '"Root=1-694042b2-2084024a481f9518671832f8" "-" "-" 0 2025-12-15T17:17:38.632000Z "forward" "-" "-" '
    '"172.31.6.52:80" "-" "-" "-" TID_306736828e35684f8cd83b9cc79a0b14 "-" "-" "-"')
# An older line (AWS's documented example before the classification fields): fewer fields.
ALB_OLD = (
    'https 2018-07-02T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 192.168.131.39:2817 10.0.0.1:80 '
    '0.086 0.048 0.037 200 200 0 57 "GET https://www.example.com:443/ HTTP/1.1" "curl/7.46.0" '
    'ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/'
    '73e2d6bc24d8a067 "Root=1-58337281-1d84f3d73c47ec4e58577259" "www.example.com" '
    '"arn:aws:acm:us-east-2:123456789012:certificate/12345678-1234-1234-1234-123456789012" 1 '
    '2018-07-02T22:22:48.364000Z "authenticate,forward" "-" "-"')
ALB_CONNECTION = ('2023-10-04T17:10:51.178845Z 203.0.113.32 39654 443 TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 4 - - - '
                  'Success TID_bd1d7e1b5cb9e74d8a5e6a6e6d3b3c04')
HAPROXY_DOC = ('Feb  6 12:14:14 localhost haproxy[14389]: 10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in '
               'static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 {1wt.eu} {} "GET /index.html HTTP/1.1"')
NGINX_ERRORS = [
    ('2026/11/22 03:16:04 [error] 812#812: *5 upstream prematurely closed connection while reading response header '
    'from upstream, client: 198.18.1.10, server: , request: "GET /ok HTTP/1.1", upstream: '
    '"http://198.18.3.11:8080/ok", host: "198.18.1.1"'),
    ('2026/11/22 03:16:05 [error] 812#812: *7 upstream timed out (110: Connection timed out) while reading response '
    'header from upstream, client: 198.18.1.11, server: , request: "GET /slow HTTP/1.1", upstream: '
    '"http://198.18.3.11:8080/slow", host: "198.18.1.1"'),
    ('2026/11/22 03:16:06 [error] 812#812: *9 recv() failed (104: Connection reset by peer) while reading response '
    'header from upstream, client: 198.18.1.12, server: , request: "POST /ok HTTP/1.1", upstream: '
    '"http://198.18.3.11:8080/ok", host: "198.18.1.1"'),
]


def test_alb_line_of_the_current_format_has_every_field():
    f = alb_fields(BLOG_460)
    assert list(f) == list(ALB_FIELDS)
    assert f["target:port_list"] == "172.31.6.52:80" and f["conn_trace_id"].startswith("TID_")
    r = parse_alb(BLOG_460, "a.log", 7)
    assert (r.status, r.client, r.target, r.method, r.uri, r.ts_is) == (
        "460", "54.206.98.238:46804", "172.31.6.52:80", "GET", "/delay.php", "end")
    assert r.trace_id == "Root=1-694042b2-2084024a481f9518671832f8" and r.error
    assert r.end - r.start == pytest.approx(10.005503)
    assert r.describe().startswith("460 target_status_code=- request_processing_time=0.000 target_processing_time=-1")


def test_older_alb_lines_with_fewer_fields_parse():
    r = parse_alb(ALB_OLD)
    assert r is not None and r.status == "200" and not r.error and r.uri == "/"
    assert alb_fields(ALB_OLD)["actions_executed"] == "authenticate,forward"
    assert "classification" not in alb_fields(ALB_OLD)


def test_alb_connection_log():
    r = parse_alb_connection(ALB_CONNECTION)
    assert (r.format, r.client, r.termination, r.trace_id) == (
        "alb_connection", "203.0.113.32:39654", "Success", "TID_bd1d7e1b5cb9e74d8a5e6a6e6d3b3c04")
    assert not r.error


def test_haproxy_httplog_with_and_without_syslog_prefix():
    with_prefix = parse_haproxy_httplog(HAPROXY_DOC)
    bare = parse_haproxy_httplog(HAPROXY_DOC.split(": ", 1)[1])
    assert with_prefix == bare
    assert (bare.client, bare.status, bare.termination, bare.ts_is) == ("10.0.1.2:33317", "200", "----", "start")
    assert dict(bare.timers) == {"TR": "10", "Tw": "0", "Tc": "30", "Tr": "69", "Ta": "109"}
    sh = parse_haproxy_httplog(HAPROXY_DOC.replace("10/0/30/69/109 200", "0/0/0/-1/104 502").replace("----", "SH--"))
    assert sh.error and sh.describe() == "502 SH-- TR=0 Tw=0 Tc=0 Tr=-1 Ta=104"
    for state in ("sH--", "CD--", "CH--"):
        assert parse_haproxy_httplog(HAPROXY_DOC.replace("----", state)).error


def test_nginx_error_log_lines():
    records = [parse_nginx_error(t) for t in NGINX_ERRORS]
    assert all(r.error and r.format == "nginx_error" for r in records)
    assert [r.client for r in records] == ["198.18.1.10", "198.18.1.11", "198.18.1.12"]
    assert records[0].target == "198.18.3.11:8080" and records[2].method == "POST"
    assert "recv() failed (104: Connection reset by peer)" in records[2].termination
    notice = parse_nginx_error("2026/11/22 03:16:04 [info] 812#812: *3 client 198.18.1.10 closed keepalive connection")
    assert notice is not None and not notice.error


def test_nginx_combined_and_upstream_and_custom_formats():
    parser = LineParser()
    combined = parser.parse('198.18.1.10 - - [22/Nov/2026:03:16:04 +0000] "GET /ok HTTP/1.1" 499 0 "-" "curl/8"')
    assert (combined.format, combined.status, combined.client, combined.ts_resolution) == (
        "nginx_combined", "499", "198.18.1.10", 1.0)
    assert combined.error
    upstream = parser.parse('198.18.1.10 - - [22/Nov/2026:03:16:04 +0000] "GET /ok HTTP/1.1" 200 3 "-" "curl/8" '
                            '198.18.3.11:8080, 198.18.3.11:8080 502, 200 0.100, 0.001 0.103 40055 1795317364.233')
    assert (upstream.format, upstream.client, upstream.target, upstream.upstream_statuses) == (
        "nginx_upstream", "198.18.1.10:40055", "198.18.3.11:8080", ("502", "200"))
    assert upstream.error  # a 200 after a hidden retry of a 502
    assert upstream.start == pytest.approx(1795317364.130)
    custom = LineParser('$remote_addr:$remote_port [$time_local] "$request" $status rid=$request_id')
    r = custom.parse('10.1.1.1:5555 [22/Nov/2026:03:16:04 +0000] "GET /a?b=1 HTTP/1.1" 504 rid=0f3c8d7e5b')
    assert (r.format, r.client, r.uri, r.trace_id, r.status) == ("nginx_custom", "10.1.1.1:5555", "/a?b=1",
                                                                  "0f3c8d7e5b", "504")


def test_haproxy_custom_log_format():
    from alb_pcap.lab.proxies import HAPROXY_LOG_FORMAT

    parse = custom_parser(HAPROXY_LOG_FORMAT)
    r = parse('accept=1795317295.922 client=198.18.1.13:38579 frontend=198.18.1.1:80 backend_src=198.18.2.1:44938 '
              'target=198.18.3.11:8080 status=502 tsc=SH-- Th=0 Ti=0 TR=0 Tw=0 Tc=0 Tr=-1 Ta=104 Tt=104 retries=0 '
              'bytes_read=209 request="POST /ok HTTP/1.1" trace_id=Root=1-6B025E2F-4e7274f05f6c470c822b72e7')
    assert (r.client, r.backend_src, r.target, r.status, r.termination) == (
        "198.18.1.13:38579", "198.18.2.1:44938", "198.18.3.11:8080", "502", "SH--")
    assert r.start == pytest.approx(1795317295.922) and r.end == pytest.approx(1795317296.026)


@pytest.mark.parametrize("line", [
    BLOG_460[:120],  # cut inside the request's quotes
    BLOG_460[:60],  # cut before the request
    "http 2025-13-45T99:17:48Z app/x 1.2.3.4:5 - 0 0 0 200 200 1 1 \"GET / HTTP/1.1\"",  # no such time
    HAPROXY_DOC[:90],
    '198.18.1.10 - - [22/Nov/2026:03:16:04 +0000] "GET /ok HTTP/1.1',
    "\x00\xff garbage \x1b[0m",
    "",
])
def test_malformed_and_truncated_lines_are_counted_not_fatal(line):
    parser = LineParser()
    assert parser.parse(line, "f", 3) is None
    assert parser.unparsed == (1 if line.strip() else 0)


def test_files_gzip_directories_globs_and_unparsed_counted(tmp_path):
    truth = json.loads((SAMPLES / "alb-keepalive-race.expected.json").read_text())
    text = (SAMPLES / truth["access_log"]).read_text()
    lines = text.splitlines()
    (tmp_path / "logs").mkdir()
    with gzip.open(tmp_path / "logs" / "a.log.gz", "wt") as out:
        out.write("\n".join(lines[:2]) + "\nnot a log line\n" + lines[2][:100] + "\n")
    (tmp_path / "logs" / "b.log").write_text(lines[2] + "\n")
    result, report = analyse([SAMPLES / "alb-keepalive-race.pcap"], [tmp_path / "logs"])
    assert report.parsed == 3 and report.unparsed == 2
    assert report.unparsed_examples == [(str(tmp_path / "logs" / "a.log.gz"), 3), (str(tmp_path / "logs" / "a.log.gz"), 4)]
    [joined] = [j for j in report.lines if j.record.error]
    assert joined.record.file.endswith("b.log") and result.findings[joined.finding].kind == "keepalive_race"
    _, by_glob = analyse([SAMPLES / "alb-keepalive-race.pcap"], [tmp_path / "logs" / "*.gz"])
    assert by_glob.parsed == 2
    truncated = tmp_path / "cut.log.gz"
    truncated.write_bytes(gzip.compress(text.encode())[:-30])
    _, cut = analyse([SAMPLES / "alb-keepalive-race.pcap"], [truncated])
    assert cut.parsed + cut.unparsed <= len(lines)


def test_why_not_outside_the_capture_and_side_not_captured():
    from alb_pcap.logs.join import Coverage, join_lines

    diagnosis, coverage = Diagnosis(), Coverage()
    pipeline.analyze([str(SAMPLES / "alb-client-timeout-460.pcap")], [diagnosis, coverage])
    result = diagnosis.finish()
    other_client = BLOG_460.replace("Root=1-694042b2", "Root=1-00000000")
    late = other_client.replace("2025-12-15T17:17", "2025-12-16T17:17").replace("198.18.0.10", "x")
    ours = (SAMPLES / "alb-client-timeout-460.log").read_text().splitlines()[0]
    wrong_uri = ours.replace("Root=1-694042b2", "Root=1-00000000").replace("/delay.php", "/other.php")
    report = join_lines([parse_alb(t, "f", n) for n, t in enumerate((BLOG_460, other_client, late, wrong_uri), 1)],
                        result, coverage)
    why = [j.why_not for j in report.lines]
    assert why[0] is None  # the blog's own line: its trace id is on the wire
    assert why[1].startswith("that side not captured: no connection from client 54.206.98.238:46804")
    assert why[2].startswith("outside the capture's time span")
    assert why[3].startswith("no matching transaction: the capture has the client connection 198.18.0.10:")


# -- nginx and HAProxy lines built from the lab samples' own proxy logs ------------------------------

from datetime import datetime, timezone

from alb_pcap.diagnosis.refs import split_flow
from alb_pcap.diagnosis.scoring import _matches
from alb_pcap.lab.stdlogs import httplog_line, nginx_upstream_line, standard_access_log
from alb_pcap.outputs.records import finding_dict


def nginx_error_line(r: dict) -> str:
    t = datetime.fromtimestamp(r["ts"], timezone.utc)
    _, uri, _ = r["request"].split(" ")
    what = "upstream timed out (110: Connection timed out)" if r["status"] == 504 else \
        "upstream prematurely closed connection"
    return (f"{t.strftime('%Y/%m/%d %H:%M:%S')} [error] 812#812: *{r['connection']} {what} while reading response "
            f"header from upstream, client: {r['client'].rsplit(':', 1)[0]}, server: , request: \"{r['request']}\", "
            f"upstream: \"http://{r['upstream_addr'].split(',')[-1].strip()}{uri}\", host: \"198.18.1.1\"")


LAB_SAMPLES = ["keepalive-race", "mixed", "slow-target-504", "target-close-502", "client-abort"]


def _lab_join(name: str, make, tmp_path: Path, log_format: str | None = None, records=None):
    truth = json.loads((SAMPLES / f"{name}.expected.json").read_text())
    records = truth["proxy_log"] if records is None else records
    log = tmp_path / f"{name}.log"
    log.write_text("".join(make(r) + "\n" for r in records))
    result, report = analyse([SAMPLES / f"{name}.pcap"], [log], log_format)
    assert report.unparsed == 0
    return truth, result, report


def _explained_on_its_connection(result, report) -> int:
    errors = [j for j in report.lines if j.record.error]
    for j in errors:
        assert j.finding is not None, (j.record, j.why_not)
        flow = result.findings[j.finding].client_flow
        if flow and ":" in (j.record.client or ""):
            assert split_flow(flow)[0] == j.record.client
        elif flow:
            assert split_flow(flow)[0].rsplit(":", 1)[0] == j.record.client
    return len(errors)


@pytest.mark.parametrize("scenario", LAB_SAMPLES)
@pytest.mark.parametrize("headers", ["", "-noxff"])
def test_haproxy_httplog_lines_join_the_lab_captures(scenario, headers, tmp_path):
    truth, result, report = _lab_join(f"{scenario}-haproxy{headers}", httplog_line, tmp_path)
    wanted = sum(1 for r in truth["proxy_log"] if r["status"] >= 500 or r["tsc"][:2] != "--")
    assert _explained_on_its_connection(result, report) == wanted
    # HAProxy's silent closes reach no log: those races are "not logged", every 502 is logged
    for n, f in enumerate(result.findings):
        if f.kind == "keepalive_race":
            assert (n in report.finding_lines) == (f.status == 502)


@pytest.mark.parametrize("scenario", LAB_SAMPLES)
def test_haproxy_custom_log_format_joins_by_proxy_source_too(scenario, tmp_path):
    from alb_pcap.lab.proxies import HAPROXY_LOG_FORMAT

    def lab_line(r):
        return " ".join(f"{k}={r[k]}" if k != "request" else f'request="{r[k]}"' for k in (
            "accept", "client", "frontend", "backend_src", "target", "status", "tsc", "Th", "Ti", "TR", "Tw", "Tc",
            "Tr", "Ta", "Tt", "retries", "bytes_read", "request", "trace_id"))

    _, result, report = _lab_join(f"{scenario}-haproxy", lab_line, tmp_path, HAPROXY_LOG_FORMAT)
    _explained_on_its_connection(result, report)
    assert all(j.record.format == "haproxy_custom" for j in report.lines)


@pytest.mark.parametrize("scenario", LAB_SAMPLES)
@pytest.mark.parametrize("headers", ["", "-noxff"])
def test_nginx_upstream_lines_join_the_lab_captures(scenario, headers, tmp_path):
    truth, result, report = _lab_join(f"{scenario}-nginx{headers}", nginx_upstream_line, tmp_path)
    wanted = sum(1 for r in truth["proxy_log"]
                 if r["status"] >= 500 or r["status"] == 499
                 or any(s.strip().startswith("5") for s in r["upstream_status"].split(",")))
    assert _explained_on_its_connection(result, report) == wanted
    for n, f in enumerate(result.findings):  # every error a client saw is in nginx's log
        if f.severity == "error" and f.status is not None:
            assert n in report.finding_lines, f


@pytest.mark.parametrize("scenario", ["mixed", "target-close-502", "slow-target-504"])
def test_nginx_error_log_lines_join_the_lab_captures(scenario, tmp_path):
    truth = json.loads((SAMPLES / f"{scenario}-nginx.expected.json").read_text())
    failed = [r for r in truth["proxy_log"] if r["status"] in (502, 504)]
    assert failed
    _, result, report = _lab_join(f"{scenario}-nginx", nginx_error_line, tmp_path, records=failed)
    assert _explained_on_its_connection(result, report) == len(failed)


@pytest.mark.parametrize("proxy,fmt", [("haproxy", "haproxy_httplog"), ("nginx", "nginx_upstream"),
                                       ("apache", None), ("caddy", None)])
def test_the_lab_writes_standard_access_logs(proxy, fmt):
    """Each lab run's proxy_log rendered in the proxy's standard format: every record one parsable line."""
    from alb_pcap.logs.parse import LineParser

    truth = json.loads((SAMPLES / f"mixed-{proxy}.expected.json").read_text())
    text = standard_access_log(proxy, truth["proxy_log"])
    if fmt is None:
        assert text is None
        return
    parser = LineParser()
    records = [parser.parse(line, "x", n) for n, line in enumerate(text.splitlines(), 1)]
    assert len(records) == len(truth["proxy_log"]) and parser.unparsed == 0
    assert {r.format for r in records} == {fmt}
    assert [r.client for r in records if ":" in r.client] == [t["client"] for t in truth["proxy_log"]]


def test_every_output_carries_each_findings_log_line(tmp_path):
    """JSON, NDJSON, CSV and HTML agree on which log line each finding has (or "not logged")."""
    import csv

    from click.testing import CliRunner

    from alb_pcap.cli import cli

    name = "keepalive-race-haproxy"
    truth = json.loads((SAMPLES / f"{name}.expected.json").read_text())
    log = tmp_path / "access.log"
    log.write_text("".join(httplog_line(r) + "\n" for r in truth["proxy_log"]))
    out = {ext: tmp_path / f"out.{ext}" for ext in ("json", "ndjson", "csv", "html")}
    run = CliRunner().invoke(cli, ["analyze", str(SAMPLES / f"{name}.pcap"), "--log", str(log), "--fail-on", "never",
                                   *(x for ext, p in out.items() for x in (f"--{ext}", str(p)))])
    assert run.exit_code == 0, run.output
    findings = json.loads(out["json"].read_text())["findings"]
    logs = [f["log"] for f in findings]
    assert None in logs and any(logs)  # HAProxy's silent closes are not logged, its 502s are
    assert [json.loads(line)["log"] for line in out["ndjson"].read_text().splitlines()] == logs
    cells = [row["log"] for row in csv.DictReader(out["csv"].open())]
    assert cells == [f"{log}:{x['line']} {x['says']}" if x else "not logged" for x in logs]
    page = out["html"].read_text()
    assert page.count('<td class="log">') == len(logs) and "<th data-type=\"text\" title=\"click to sort\">proxy log</th>" in page
    for x in logs:
        if x:
            assert x["says"].startswith("502 SH--") and f":{x['line']} 502 SH--" in page


SHIPPED_LOGS = sorted(p.name[: -len(".access.log")] for p in SAMPLES.glob("*.access.log"))


@pytest.mark.parametrize("name", SHIPPED_LOGS)
def test_shipped_access_logs_explain_and_are_explained(name):
    """Each lab sample's access log (``<name>.access.log``: the proxy's records in its standard format, as the lab
    writes them): every error line is explained by a finding on its connection, and each expected finding has its
    line exactly when the proxy logged its request (a record of that client ip:port spanning the finding's time:
    HAProxy's silent closes and idle closes are not logged, the 502s and 504s are)."""
    truth = json.loads((SAMPLES / f"{name}.expected.json").read_text())
    result, report = analyse([SAMPLES / f"{name}.pcap"], [SAMPLES / f"{name}.access.log"])
    assert report.unparsed == 0 and report.parsed == len(truth["proxy_log"])
    _explained_on_its_connection(result, report)
    ours = [finding_dict(f) for f in result.findings]
    for want in truth["findings"]:
        hit = next(n for n, got in enumerate(ours) if _matches(want, got, 1.0))
        client = (want.get("client_flow") or "").split("->")[0]
        logged = any(r["client"] == client and r["request_ts"] - 0.1 <= want["ts"] <= r["end_ts"] + 0.1
                     for r in truth["proxy_log"])
        assert (hit in report.finding_lines) == logged, (want["kind"], want["ts"])


SHIPPED_ERROR_LOGS = sorted(p.name[: -len(".error.log")] for p in SAMPLES.glob("*.error.log"))


def _failed_attempts(record: dict) -> int:
    """Upstream attempts nginx gave up on (``$upstream_status`` ``502, 200`` is a raced GET it retried)."""
    return sum(s.strip() in ("502", "504") for s in str(record.get("upstream_status") or "").split(","))


@pytest.mark.parametrize("name", SHIPPED_ERROR_LOGS)
def test_shipped_error_logs_are_explained(name):
    """nginx's own error.log of each lab run (``<name>.error.log``, cut to nginx's default level ``error``):
    every line parses, there is one per upstream attempt nginx gave up on (the access log's
    ``$upstream_status``), and each is explained by a finding on its client's connection, the raced GET nginx
    retried invisibly (a 200 to the client) included."""
    assert SHIPPED_ERROR_LOGS, "the nginx samples ship their error.log"
    truth = json.loads((SAMPLES / f"{name}.expected.json").read_text())
    path = SAMPLES / f"{name}.error.log"
    result, report = analyse([SAMPLES / f"{name}.pcap"], [path])
    lines = path.read_text().splitlines()
    assert report.unparsed == 0 and report.parsed == len(lines)
    assert len(lines) == sum(_failed_attempts(r) for r in truth["proxy_log"])
    assert _explained_on_its_connection(result, report) == len(lines)
    assert all(j.record.format == "nginx_error" for j in report.lines)
