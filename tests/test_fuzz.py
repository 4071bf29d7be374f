"""Fuzzing the whole analysis: damaged sample captures through every output, never a traceback.

The reader's own fuzz tests (``test_fastwire``, ``test_capture``) check the capture stage; these run
the mutated captures through TCP, HTTP, the diagnosis and every writer, where a malformed segment or
head lands in the end. A bug there is exit 70 (the CLI's last-resort handler) or an exception: both
fail. ``HYPOTHESIS_PROFILE=deep`` runs 5,000 examples per test instead of 50 (README, Reliability).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from alb_pcap.cli import cli

from .test_fastwire import fuzz, mutated_captures

CLEAN_EXITS = {0, 1, 3}  # nothing found, unusable input (one line), findings


def analyze(path: Path, out: Path, *extra: str):
    args = ["analyze", str(path), "--json", str(out / "a.json"), "--json-detail", "all", "--ndjson",
            str(out / "a.ndjson"), "--csv", str(out / "a.csv"), "--html", str(out / "a.html"), "--all", *extra]
    return CliRunner().invoke(cli, args, env={"COLUMNS": "100"})


def assert_clean(run) -> None:
    assert run.exception is None or isinstance(run.exception, SystemExit), run.exception
    assert run.exit_code in CLEAN_EXITS, run.output
    assert "Traceback" not in run.output and "internal error" not in run.output


@fuzz
@given(data=mutated_captures())
def test_mutated_sample_captures_analyse_cleanly_in_every_output(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.pcap"
    path.write_bytes(data)
    run = analyze(path, tmp_path)
    assert_clean(run)
    if run.exit_code != 1:  # analysed: the documents are whole
        json.loads((tmp_path / "a.json").read_text())
        for line in (tmp_path / "a.ndjson").read_text().splitlines():
            json.loads(line)
        assert (tmp_path / "a.html").read_text().rstrip().endswith("</html>")


@fuzz
@given(data=mutated_captures(), cut=st.integers(10, 2000))
def test_damaged_gzip_of_a_sample_analyses_what_it_can(tmp_path: Path, data: bytes, cut: int) -> None:
    packed = gzip.compress(data)
    path = tmp_path / "m.pcap.gz"
    path.write_bytes(packed[: max(10, len(packed) - cut)])
    assert_clean(analyze(path, tmp_path, "-v"))


@fuzz
@given(data=mutated_captures(), proxy=st.sampled_from(["198.18.2.1", "198.18.2.10", "198.18.1.1"]))
def test_mutated_captures_with_a_proxy_given(tmp_path: Path, data: bytes, proxy: str) -> None:
    """``--proxy`` takes other paths through the diagnosis (roles known before any pair)."""
    path = tmp_path / "m.pcap"
    path.write_bytes(data)
    assert_clean(analyze(path, tmp_path, "--proxy", proxy))
