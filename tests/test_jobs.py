"""``analyze --jobs N``: the same bytes out (terminal report, JSON with every record, exit status,
errors) whatever N. Sample captures are far under the size worth sharding, so the tests lower
``shards.SHARD_MIN_BYTES`` to shard them anyway."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from alb_pcap.cli import cli
from alb_pcap.wire import shards

from .conftest import SAMPLES

SINGLE = sorted(SAMPLES.glob("*.pcap"))
FRONT_BACK = ["mixed-nginx", "keepalive-race-haproxy", "slow-target-504-nginx", "client-abort-caddy"]


@pytest.fixture(autouse=True)
def shard_everything(monkeypatch):
    monkeypatch.setattr(shards, "SHARD_MIN_BYTES", 0)


def outputs(tmp_path: Path, captures: list, jobs: int, *extra: str) -> tuple[int, str, bytes | None]:
    """Exit status, terminal report (or error line) and the JSON document of one run."""
    doc = tmp_path / f"out-{jobs}.json"
    doc.unlink(missing_ok=True)
    result = CliRunner().invoke(cli, ["analyze", *map(str, captures), "--jobs", str(jobs), "--json", str(doc),
                                      "--json-detail", "all", *extra], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output
    return result.exit_code, result.output, doc.read_bytes() if doc.exists() else None


def same_for_all_jobs(tmp_path: Path, captures: list, jobs=(2, 3), *extra: str) -> tuple:
    one = outputs(tmp_path, captures, 1, *extra)
    for n in jobs:
        assert outputs(tmp_path, captures, n, *extra) == one, f"--jobs {n} differs from --jobs 1"
    return one


@pytest.mark.parametrize("capture", SINGLE, ids=lambda p: p.stem)
def test_every_sample_capture_is_the_same_with_two_jobs(tmp_path, capture):
    # three jobs on a third of them: CI time (each run forks its workers)
    same_for_all_jobs(tmp_path, [capture], (2, 3) if SINGLE.index(capture) % 3 == 0 else (2,))


@pytest.mark.parametrize("run", FRONT_BACK)
def test_front_and_back_files_together(tmp_path, run):
    front, back = SAMPLES / f"{run}.front.pcap.gz", SAMPLES / f"{run}.back.pcap.gz"
    if not front.exists():
        pytest.skip("no lab captures")
    same_for_all_jobs(tmp_path, [front, back])


@pytest.mark.parametrize("run, skew", [("mixed-nginx", 0.2), ("keepalive-race-haproxy", -0.2),
                                       ("slow-target-504-nginx", 0.05)])
def test_skewed_clocks_are_measured_once_and_shared(tmp_path, run, skew):
    from .rewrite import shift

    front = SAMPLES / f"{run}.front.pcap.gz"
    if not front.exists():
        pytest.skip("no lab captures")
    skewed = shift(SAMPLES / f"{run}.back.pcap.gz", tmp_path / "back.pcap", skew)
    _, report, _ = same_for_all_jobs(tmp_path, [front, skewed], (2, 3), "-v")
    assert "ahead" in report or "behind" in report or "clock" in report.lower()


def fragmented(src: Path, dst: Path) -> Path:
    """Every IPv4 datagram of some size sent as two fragments (the second has no ports).

    The samples are VXLAN mirror captures: it is the outer datagram that is cut, as a mirror
    path's MTU would cut it."""
    import dpkt

    with open(src, "rb") as f, open(dst, "wb") as out:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(out, snaplen=reader.snaplen, linktype=reader.datalink())
        for ts, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or len(bytes(ip.data)) < 128:
                writer.writepkt(buf, ts)
                continue
            segment = bytes(ip.data)
            for off, chunk, more in ((0, segment[:48], True), (48, segment[48:], False)):
                frag = dpkt.ip.IP(src=ip.src, dst=ip.dst, p=ip.p, id=ip.id, ttl=ip.ttl,
                                  mf=int(more), offset=off // 8, data=chunk)
                frag.len = 20 + len(chunk)
                writer.writepkt(bytes(dpkt.ethernet.Ethernet(src=eth.src, dst=eth.dst, type=eth.type,
                                                             data=bytes(frag))), ts)
    return dst


def test_ip_fragments_are_put_together_in_every_worker(tmp_path):
    capture = fragmented(SAMPLES / "mixed-nginx.pcap", tmp_path / "frag.pcap")
    status, _, doc = same_for_all_jobs(tmp_path, [capture])
    assert b'"ip_fragment"' in doc and status == 3


def test_a_truncated_capture_is_the_same(tmp_path):
    data = (SAMPLES / "mixed-nginx.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    _, _, doc = same_for_all_jobs(tmp_path, [cut])
    assert b"truncated_capture_file" in doc
    gz = tmp_path / "cut.pcap.gz"
    gz.write_bytes(gzip.compress(data)[:-4000])
    same_for_all_jobs(tmp_path, [gz], (2,))


@pytest.mark.parametrize("captures", [["missing.pcap"], ["{sample}", "missing.pcap"], ["{dir}"]])
def test_unusable_input_is_the_same_error(tmp_path, captures):
    paths = [c.format(sample=SAMPLES / "mixed-nginx.pcap", dir=tmp_path) for c in captures]
    status, text, doc = same_for_all_jobs(tmp_path, paths, (2,))
    assert status == 1 and text.startswith("Error: ") and text.count("\n") == 1 and doc is None


def test_a_bug_in_a_worker_is_the_one_line_error_of_one_job(tmp_path, monkeypatch):
    """The first bug in one job's order is reported, with its frame, whichever worker met it."""
    from alb_pcap.wire import http

    original = http.HttpConnection.data

    def failing(self, direction, data, ts_ns, frame):
        if frame >= 40:
            raise KeyError(f"frame {frame}")
        return original(self, direction, data, ts_ns, frame)

    monkeypatch.setattr(http.HttpConnection, "data", failing)
    status, text, doc = same_for_all_jobs(tmp_path, [SAMPLES / "mixed-nginx.pcap"])
    assert status == 70 and text.startswith("Error: internal error at frame ") and text.count("\n") == 1
    assert doc is None


def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path, monkeypatch):
    if shards._context().get_start_method() != "fork":
        pytest.skip("the patch reaches the workers only when they are forked")

    def die(*args):
        os._exit(9)

    monkeypatch.setattr(shards, "_work", die)
    result = CliRunner().invoke(cli, ["analyze", str(SAMPLES / "mixed-nginx.pcap"), "--jobs", "2"])
    assert result.exit_code == 70 and "ended without finishing" in result.output
    assert result.output.count("\n") == 1


def test_stdin_and_small_captures_stay_in_one_process(monkeypatch):
    monkeypatch.setattr(shards, "SHARD_MIN_BYTES", 8 << 20)
    assert not shards.worth_sharding([SAMPLES / "mixed-nginx.pcap"])
    assert not shards.worth_sharding(["-"])


@pytest.mark.parametrize("name", ["alb-keepalive-race-mirror.pcap", "mixed-nginx.pcap"])
def test_json_on_stdout_is_the_same(name):
    runs = [CliRunner().invoke(cli, ["analyze", str(SAMPLES / name), "--jobs", str(n), "--json", "-",
                                     "--json-detail", "all"]) for n in (1, 2)]
    assert runs[0].exit_code == runs[1].exit_code == 3
    assert runs[0].output == runs[1].output and runs[0].output.startswith("{")
