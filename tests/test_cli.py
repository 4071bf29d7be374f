from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from alb_pcap.cli import cli

from .conftest import SAMPLES

RACE = SAMPLES / "alb-keepalive-race-mirror.pcap"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("content", [None, b"", b"this is not a capture at all\n", b"\xd4\xc3\xb2\xa1\x02"])
def test_unusable_input_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    result = invoke("analyze", path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_a_directory_is_a_one_line_error(tmp_path):
    result = invoke("analyze", tmp_path)
    assert result.exit_code == 1 and result.output.count("\n") == 1


def test_json_document_has_the_documented_shape():
    result = invoke("analyze", RACE, "--json", "-", "--json-detail", "all")
    assert result.exit_code == 3, result.output  # a finding the client saw as an error
    doc = json.loads(result.output)
    assert doc["schema"] == "alb-pcap/1"
    (cap,) = doc["captures"]
    counts = cap["counts"]
    assert cap["frames"] == counts["decoded"] + counts["duplicate"] + sum(counts["skipped"].values())
    assert counts["duplicate"] > 0 and "vxlan vni=4242" in cap["tunnels"]
    conn = doc["connections"][0]
    for key in ("flow", "conn_state", "history", "start", "end", "closed_by", "close", "keepalive_probes"):
        assert key in conn
    ex = doc["exchanges"][0]
    for key in ("flow", "method", "uri", "host", "status", "request_body_len", "response_body_len",
                "request_start", "request_end", "response_start", "response_end"):
        assert key in ex
    assert any(e["status"] == 502 for e in doc["exchanges"])
    (finding,) = doc["findings"]
    assert finding["kind"] == "keepalive_race" and finding["status"] == 502
    assert finding["target_flow"].endswith("->198.18.3.11:80")
    assert doc["proxies"] and doc["timers"] and doc["verdict"]


def test_gzip_capture_is_read_by_content(tmp_path):
    packed = tmp_path / "capture.bin"
    packed.write_bytes(gzip.compress(RACE.read_bytes()))
    doc = json.loads(invoke("analyze", packed, "--json", "-").output)
    assert doc["captures"][0]["format"].endswith("gzip")
    assert [f["kind"] for f in doc["findings"]] == ["keepalive_race"]


def test_terminal_output_tells_the_story():
    result = invoke("analyze", RACE)
    assert result.exit_code == 3
    out = result.output
    assert out.startswith("1 x 502 in 6.8 s: target 198.18.3.11:80 closes idle connections after 5.0 s")
    assert out.index("Verdict") < out.index("Findings") < out.index("keepalive_race →")
    assert "Captures" not in out and "conn_state" not in out  # statistics only with -v
    assert "keepalive_race" in out and "client got 502" in out
    assert "FIN from the target" in out and "s pass" in out
    assert "61-62 s" in out  # the verdict's fix


def test_filters_narrow_the_findings():
    doc = json.loads(invoke("analyze", RACE, "--kind", "gateway_timeout", "--json", "-").output)
    assert doc["findings"] == []
    doc = json.loads(invoke("analyze", RACE, "--flow", "198.18.3.11:80", "--json", "-").output)
    assert len(doc["findings"]) == 1
    doc = json.loads(invoke("analyze", RACE, "--around", "0", "--json", "-").output)
    assert doc["findings"] == []
    bad = invoke("analyze", RACE, "--around", "yesterday")
    assert bad.exit_code == 2 and "ISO 8601" in bad.output


def test_score_against_the_ground_truth():
    result = invoke("score", RACE, "--expected", SAMPLES / "alb-keepalive-race-mirror.expected.json")
    assert result.exit_code == 0, result.output
    assert "precision 1.00  recall 1.00" in result.output


def test_score_fails_when_findings_are_missed():
    other = SAMPLES / "alb-gateway-timeout.expected.json"
    result = invoke("score", RACE, "--expected", other)
    assert result.exit_code == 1 and "missed" in result.output


def test_the_same_packets_in_two_captures_count_once(tmp_path):
    copy = tmp_path / "other-eni.pcap"
    copy.write_bytes(SAMPLES.joinpath("alb-keepalive-race.pcap").read_bytes())
    one = json.loads(invoke("analyze", SAMPLES / "alb-keepalive-race.pcap", "--json", "-", "--json-detail", "all").output)
    both = json.loads(invoke("analyze", SAMPLES / "alb-keepalive-race.pcap", copy, "--json", "-",
                             "--json-detail", "all").output)
    assert both["summary"]["cross_capture_duplicates"] == one["captures"][0]["counts"]["decoded"]
    strip = lambda doc: [(e["flow"], e["method"], e["status"], e["ended"]) for e in doc["exchanges"]]
    assert strip(both) == strip(one)
    assert [f["kind"] for f in both["findings"]] == [f["kind"] for f in one["findings"]]


# -- damaged and hostile captures (issue 10) ---------------------------------------------

CRASHERS = sorted((Path(__file__).parent / "data" / "crashers").glob("*.pcap*"))
MODES = {"terminal": (), "json-file": ("--json", "{out}", "--json-detail", "all"),
         "json-stdout": ("--json", "-", "--json-detail", "all")}


def _analyze(path, mode, tmp_path):
    out = tmp_path / "out.json"
    result = invoke("analyze", path, "--fail-on", "never", *(a.format(out=out) for a in MODES[mode]))
    doc = None
    if mode == "json-file" and out.exists():
        doc = json.loads(out.read_text())
    elif mode == "json-stdout" and result.exit_code == 0:
        doc = json.loads(result.stdout)
    return result, doc


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", CRASHERS, ids=[p.name for p in CRASHERS])
def test_every_reproducer_is_analysed_without_a_traceback(path, mode, tmp_path):
    result, doc = _analyze(path, mode, tmp_path)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    if doc is not None:
        (cap,) = doc["captures"]
        counts = cap["counts"]
        assert cap["frames"] == counts["decoded"] + counts["duplicate"] + sum(counts["skipped"].values())
        assert all(c["duration"] >= 0 for c in doc["connections"])


def test_reproducers_are_all_here():
    assert len(CRASHERS) == 5


def test_gzip_damaged_early_gives_its_records_and_the_damage(tmp_path):
    path = Path(__file__).parent / "data" / "crashers" / "gzip-damaged-early-5-records-readable.pcap.gz"
    _, doc = _analyze(path, "json-stdout", tmp_path)
    (cap,) = doc["captures"]
    assert cap["format"] == "pcap+gzip" and cap["frames"] >= 5
    (damage,) = [a for a in doc["anomalies"] if a["name"] == "corrupt_capture_file"]
    assert damage["frame"] == cap["frames"] + 1 and "gzip data damaged" in damage["detail"]
    result, _ = _analyze(path, "terminal", tmp_path)
    assert "corrupt_capture_file" in result.output


@pytest.mark.parametrize("path", [p for p in CRASHERS if p.suffix == ".pcapng"], ids=lambda p: p.name)
def test_times_out_of_the_calendar_are_printed_and_noted(path, tmp_path):
    _, doc = _analyze(path, "json-stdout", tmp_path)
    assert any(a["name"] == "time_out_of_range" and a["frame"] == 1 for a in doc["anomalies"])
    result, _ = _analyze(path, "terminal", tmp_path)
    if doc["findings"]:
        assert "s since the epoch (out of the calendar's range)" in " ".join(result.output.split())


def test_records_out_of_order_close_each_connection_once(tmp_path):
    path = Path(__file__).parent / "data" / "crashers" / "records-out-of-order-close-twice.pcap"
    _, doc = _analyze(path, "json-stdout", tmp_path)
    ids = [c["id"] for c in doc["connections"]]
    assert len(ids) == len(set(ids)) == doc["summary"]["connections"] == 3


def test_a_gzip_with_nothing_readable_is_a_one_line_error(tmp_path):
    path = tmp_path / "capture.pcap.gz"
    damaged = bytearray(gzip.compress(RACE.read_bytes(), compresslevel=0))
    damaged[10] ^= 0xFF  # the first block's header: not one byte decompresses
    path.write_bytes(bytes(damaged))
    result = invoke("analyze", path)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: ") and "cannot read" in result.output


# -- the last resort ---------------------------------------------------------------------


def _boom_at_frame(monkeypatch, frame):
    from alb_pcap.wire import tcp

    real = tcp.TcpTracker.feed

    def feed(self, pkt):
        if pkt.frame == frame:
            raise RuntimeError("boom\nsecond line")
        return real(self, pkt)

    monkeypatch.setattr(tcp.TcpTracker, "feed", feed)


@pytest.mark.parametrize("mode", MODES)
def test_an_internal_error_is_one_line_with_its_frame(monkeypatch, tmp_path, mode):
    monkeypatch.delenv("ALB_PCAP_DEBUG", raising=False)
    _boom_at_frame(monkeypatch, 7)
    result, _ = _analyze(RACE, mode, tmp_path)
    assert result.exit_code == 70
    assert isinstance(result.exception, SystemExit)
    line = result.stderr
    assert line.count("\n") == 1 and "Traceback" not in result.output
    assert line.startswith(f"Error: internal error at frame 7 ({RACE}): RuntimeError: boom second line")
    assert "ALB_PCAP_DEBUG=1" in line


def test_an_internal_error_after_the_capture_is_one_line_too(monkeypatch):
    from alb_pcap.outputs import report

    monkeypatch.delenv("ALB_PCAP_DEBUG", raising=False)
    monkeypatch.setattr(report, "findings_view", lambda *a: {}["no such key"])
    result = invoke("analyze", RACE)
    assert result.exit_code == 70 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: internal error: KeyError: 'no such key'")


def test_developers_get_the_traceback(monkeypatch):
    monkeypatch.setenv("ALB_PCAP_DEBUG", "1")
    _boom_at_frame(monkeypatch, 7)
    result = invoke("analyze", RACE)
    assert result.exit_code != 0
    assert isinstance(result.exception.__cause__, RuntimeError)


def test_the_last_resort_holds_in_a_real_process(tmp_path):
    """No CliRunner: the installed entry point, with a capture that makes the HTTP stage fail."""
    script = (
        "import sys\n"
        "from alb_pcap.wire import http\n"
        "def fail(*a, **k):\n"
        "    raise ValueError('forced')\n"
        "http.HttpConnection.data = fail\n"
        "from alb_pcap.cli import cli\n"
        "cli(['analyze', sys.argv[1]])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ALB_PCAP_DEBUG"}
    done = subprocess.run([sys.executable, "-c", script, str(RACE)], capture_output=True, text=True, env=env)
    assert done.returncode == 70
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "internal error at frame" in done.stderr and "ValueError: forced" in done.stderr


def test_time_going_back_by_hours_is_an_anomaly_and_no_duration_is_negative(tmp_path):
    from alb_pcap.model import TH_ACK, TH_FIN, TH_PUSH, TH_SYN

    from .capture_builders import T0_NS, ethernet, ipv4, pcap, tcp

    def seg(c2s, seq, ack, flags, payload=b""):
        ports = dict(sport=40000, dport=80) if c2s else dict(sport=80, dport=40000)
        ends = dict(src="10.0.0.1", dst="10.0.0.2") if c2s else dict(src="10.0.0.2", dst="10.0.0.1")
        return ethernet(ipv4(tcp(payload, seq=seq, ack=ack, flags=flags, **ports), **ends))

    req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    frames = [
        seg(True, 100, 0, TH_SYN), seg(False, 500, 101, TH_SYN | TH_ACK), seg(True, 101, 501, TH_ACK),
        seg(True, 101, 501, TH_ACK | TH_PUSH, req), seg(False, 501, 101 + len(req), TH_ACK | TH_PUSH, resp),
        seg(True, 101 + len(req), 501 + len(resp), TH_FIN | TH_ACK),
        seg(False, 501 + len(resp), 102 + len(req), TH_FIN | TH_ACK),
    ]
    hours = 3 * 3600 * 10**9
    times = [T0_NS + i * 1_000_000 for i in range(4)] + [T0_NS - hours + i * 1_000_000 for i in range(3)]
    path = tmp_path / "clock-stepped-back.pcap"
    path.write_bytes(pcap(list(zip(times, frames))))
    _, doc = _analyze(path, "json-stdout", tmp_path)
    (back,) = [a for a in doc["anomalies"] if a["name"] == "time_went_backwards"]
    assert back["frame"] == 5 and back["detail"].startswith("10800.003 s before frame 4")
    (conn,) = doc["connections"]
    assert conn["duration"] >= 0 and conn["end"] >= conn["start"]
    (ex,) = doc["exchanges"]
    assert ex["status"] == 200
    result, _ = _analyze(path, "terminal", tmp_path)
    assert result.exit_code == 0 and "time_went_backwards" in result.output


def _modules_after(script: str, *args: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``script`` (run from the repository root)."""
    script += "\nimport sys\nprint('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stderr.split())


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] == "scapy" or m.startswith("alb_pcap.lab")}


def test_importing_the_cli_loads_neither_scapy_nor_the_lab_nor_rich():
    """Start-up (issue 8): scapy and the lab are for `alb-pcap lab` only, rich for drawing."""
    modules = _modules_after("import alb_pcap.cli")
    assert not _heavy(modules)
    assert not {m for m in modules if m.split(".")[0] == "rich"}


def test_analyze_loads_neither_scapy_nor_the_lab():
    script = ("import sys\nfrom alb_pcap.cli import cli\n"
              "cli(['analyze', sys.argv[1], '--json', '/dev/null', '--fail-on', 'never'], standalone_mode=False)\n")
    assert not _heavy(_modules_after(script, str(RACE)))


def test_the_lab_is_still_a_command():
    listing = invoke("--help")
    assert listing.exit_code == 0 and "lab" in listing.output.split("Commands:")[1]
    result = invoke("lab", "--help")
    assert result.exit_code == 0 and "network namespaces" in result.output


# -- the report a person on call reads (issue 12) ---------------------------------------------

MIXED = SAMPLES / "mixed-nginx.pcap"


def findings_of(*args):
    result = invoke("analyze", *args, "--json", "-", "--fail-on", "never")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_exit_status_follows_the_findings():
    assert invoke("analyze", RACE).exit_code == 3
    assert invoke("analyze", RACE, "--fail-on", "never").exit_code == 0
    healthy = SAMPLES / "healthy-keepalive-nginx.pcap"
    assert invoke("analyze", healthy).exit_code == 0
    # warnings only (a client left): 0 unless asked
    assert invoke("analyze", MIXED, "--kind", "client_abort").exit_code == 0
    assert invoke("analyze", MIXED, "--kind", "client_abort", "--fail-on", "warning").exit_code == 3


def test_filters_apply_to_findings_counts_verdict_and_transactions():
    everything = findings_of(MIXED)
    doc = findings_of(MIXED, "--status", "502")
    assert doc["findings"] and all(f["status"] == 502 for f in doc["findings"])
    assert sum(doc["finding_counts"].values()) == len(doc["findings"]) < len(everything["findings"])
    assert all(t["client"]["status"] == 502 for t in doc["transactions"] if t["client"])
    assert not any("timed out" in line for line in doc["verdict"])
    errors = findings_of(MIXED, "--errors-only")
    assert {f["severity"] for f in errors["findings"]} == {"error"}


def test_a_flow_matches_by_address_endpoint_or_either_direction():
    (flow,) = {f["target_flow"] for f in findings_of(RACE)["findings"]}
    opener, acceptor = flow.split("->")
    for pattern in (flow, f"{acceptor}->{opener}", acceptor, acceptor.rpartition(":")[0]):
        assert len(findings_of(RACE, "--flow", pattern)["findings"]) == 1, pattern
    assert findings_of(RACE, "--flow", "203.0.113.9")["findings"] == []


def test_around_reads_the_formats_engineers_paste():
    (finding,) = findings_of(RACE)["findings"]
    start = findings_of(RACE)["captures"][0]["first_ts"]
    from datetime import datetime, timezone
    when = datetime.fromtimestamp(finding["ts"], timezone.utc)
    for text in (f"+{finding['ts'] - start:.1f}", when.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                 when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), str(finding["ts"])):
        assert len(findings_of(RACE, "--around", text, "--window", "2")["findings"]) == 1, text
    assert findings_of(RACE, "--around", "+500", "--window", "2")["findings"] == []


def test_bad_values_are_refused():
    for args in (("--window", "-5"), ("--max-timelines", "-1"), ("--around", "+soon")):
        result = invoke("analyze", RACE, *args)
        assert result.exit_code == 2, args


def test_short_help_and_stdin():
    assert invoke("analyze", "-h").exit_code == 0 and "--fail-on" in invoke("analyze", "-h").output
    result = CliRunner().invoke(cli, ["analyze", "-", "--json", "-"], input=RACE.read_bytes())
    assert result.exit_code == 3 and json.loads(result.stdout)["findings"][0]["kind"] == "keepalive_race"


def test_a_filter_says_it_is_active_and_when_nothing_matched():
    out = invoke("analyze", RACE, "--kind", "gateway_timeout").output
    assert "Showing only --kind gateway_timeout" in out and "Nothing matched" in out


def test_every_kind_gets_a_timeline_or_a_line_saying_how_to_see_it():
    out = invoke("analyze", MIXED, "--max-timelines", "0").output
    kinds = {f["kind"] for f in findings_of(MIXED)["findings"]}
    for kind in kinds:  # warnings and info too: each kind drawn once, the rest counted
        assert re.search(rf"\nF\d+ {kind}", out), kind
    assert "--all draws every one" in out
    every = invoke("analyze", MIXED, "--all").output
    assert "not drawn" not in every


def test_piped_output_never_cuts_addresses_or_file_names():
    out = invoke("analyze", MIXED, "-v").output
    assert "…" not in out
    assert str(MIXED) in out
    for f in findings_of(MIXED)["findings"]:
        for flow in (f["client_flow"], f["target_flow"]):
            assert flow is None or flow in out


def test_stdin_from_a_real_pipe():
    run = subprocess.run([sys.executable, "-m", "alb_pcap.cli", "analyze", "-", "--json", "-"],
                         input=gzip.compress(RACE.read_bytes()), capture_output=True, timeout=60)
    assert run.returncode == 3, run.stderr
    assert json.loads(run.stdout)["captures"][0]["format"] == "pcap+gzip"


# -- scripts and other tools (issue 12) --------------------------------------------------------


def test_findings_carry_ids_request_ids_and_a_wireshark_filter():
    (f,) = findings_of(SAMPLES / "alb-keepalive-race.pcap")["findings"]
    assert f["id"] == "F1" and f["transaction"].startswith("T")
    assert f["request_id"] == "1-693ec3cd-7cee2e14d9c05740ecd0ddfd"  # the ALB's Root=, to search its logs for
    assert (f["method"], f["uri"]) == ("GET", "/api/orders")
    assert f["client_flow"].split("->")[0].split(":")[0] in f["wireshark_filter"]


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark (Debian package) not installed")
def test_the_wireshark_filter_shows_the_findings_frames_in_tshark():
    path = SAMPLES / "mixed-nginx.pcap"
    for f in findings_of(path)["findings"]:
        run = subprocess.run(["tshark", "-r", str(path), "-Y", f["wireshark_filter"], "-T", "fields",
                              "-e", "frame.number"], capture_output=True, text=True, timeout=60)
        frames = {int(n) for n in run.stdout.split()}
        assert run.returncode == 0, run.stderr
        assert {e["frame"] for e in f["evidence"] if e["frame"]} <= frames, f["id"]


def test_ndjson_and_csv_hold_every_finding():
    doc = findings_of(MIXED)
    lines = invoke("analyze", MIXED, "--ndjson", "-", "--fail-on", "never").output.splitlines()
    assert [json.loads(line) for line in lines] == doc["findings"]
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(invoke("analyze", MIXED, "--csv", "-", "--fail-on", "never").output)))
    assert [r["id"] for r in rows] == [f["id"] for f in doc["findings"]]
    assert rows[0]["time"].endswith("+00:00") and rows[0]["wireshark_filter"].startswith("(ip.addr==")


def test_json_detail_all_adds_every_exchange():
    lean = findings_of(RACE)
    assert lean["detail"] == "findings" and "exchanges" not in lean and lean["summary"]["exchanges"] == 6
    full = findings_of(RACE, "--json-detail", "all")
    assert full["detail"] == "all" and len(full["exchanges"]) == 6 and full["findings"] == lean["findings"]


def test_write_pcap_holds_the_findings_connections_in_their_encapsulation(tmp_path):
    out = tmp_path / "excerpt.pcap"
    result = invoke("analyze", MIXED, "--write-pcap", out, "--fail-on", "never")
    assert result.exit_code == 0, result.output
    original, excerpt = findings_of(MIXED), findings_of(out)
    shape = lambda doc: sorted((f["kind"], f["client_flow"], f["target_flow"]) for f in doc["findings"])
    assert shape(excerpt) == shape(original)  # the excerpt tells the same story
    assert excerpt["captures"][0]["tunnels"] == {"vxlan vni=7": excerpt["captures"][0]["frames"]}
    assert excerpt["captures"][0]["frames"] < original["captures"][0]["frames"]
    refused = CliRunner().invoke(cli, ["analyze", "-", "--write-pcap", str(out)], input=RACE.read_bytes())
    assert refused.exit_code == 1 and "not standard input" in refused.output


@pytest.mark.parametrize("width", [80, 200])
def test_a_terminal_of_any_width_cuts_nothing(width):
    """Drawn for a terminal (colours forced) of a fixed width: lines fit, and nothing is cut with '…'."""
    result = CliRunner().invoke(cli, ["analyze", str(MIXED), "-v"], env={"FORCE_COLOR": "1", "COLUMNS": str(width)})
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert "\x1b[" in result.output  # it was drawn as for a terminal
    assert "…" not in plain and max(len(line) for line in plain.splitlines()) <= width
    flat = " ".join(plain.split())  # wrapped lines joined again
    for f in findings_of(MIXED)["findings"]:
        assert f["summary"].split(" (frame")[0] in flat


def test_a_reader_that_leaves_early_is_no_error():
    """`alb-pcap analyze F | head -1`: no traceback, no internal error, status 0."""
    proc = subprocess.Popen([sys.executable, "-m", "alb_pcap.cli", "analyze", str(MIXED), "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b""


def test_the_report_says_per_capture_what_was_not_read(tmp_path):
    """Frames skipped for a reason that may hide HTTP (a UDP port, a link or tunnel not read) are named in
    the answer, per capture; ARP and ICMP, which every capture has, are not."""
    from .capture_builders import ethernet, ipv4, pcap, udp

    def outer(payload: bytes) -> bytes:
        return ethernet(ipv4(payload, proto=17, src="172.16.0.1", dst="172.16.0.9"))

    odd = tmp_path / "odd.pcap"
    odd.write_bytes(pcap([outer(udp(b"x" * 20, dport=53)), ethernet(b"\0" * 40, ethertype=0x88CC)]))
    run = CliRunner().invoke(cli, ["analyze", str(odd)])
    assert f"Not read in {odd}: 1 udp, 1 not_ip (of 2 frames" in run.output
    run = CliRunner().invoke(cli, ["analyze", str(SAMPLES / "mixed-nginx.pcap")])  # 12 ARP frames skipped
    assert "Not read" not in run.output
