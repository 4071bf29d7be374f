"""Proxy logs: the parsers on real-format lines, damaged lines, files, and the join with the wire."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alb_pcap import pipeline
from alb_pcap.diagnose import Diagnosis
from alb_pcap.lab import craft
from alb_pcap.logs.join import Coverage, read_logs

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
