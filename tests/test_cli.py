from __future__ import annotations

import gzip
import json

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
    result = invoke("analyze", RACE, "--json", "-")
    assert result.exit_code == 0, result.output
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
    assert result.exit_code == 0
    out = result.output
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
    one = json.loads(invoke("analyze", SAMPLES / "alb-keepalive-race.pcap", "--json", "-").output)
    both = json.loads(invoke("analyze", SAMPLES / "alb-keepalive-race.pcap", copy, "--json", "-").output)
    assert both["summary"]["cross_capture_duplicates"] == one["captures"][0]["counts"]["decoded"]
    strip = lambda doc: [(e["flow"], e["method"], e["status"], e["ended"]) for e in doc["exchanges"]]
    assert strip(both) == strip(one)
    assert [f["kind"] for f in both["findings"]] == [f["kind"] for f in one["findings"]]
