#!/usr/bin/env python3
"""Benchmark: peak memory of ``alb-pcap analyze`` on hostile captures (issue 10).

Writes the captures of ``tests/hostile.py`` at full size into a scratch directory
(``--out``, default a temporary one) and runs, on each, in a fresh process:

    python3 -m alb_pcap.cli analyze F --json OUT.json --json-detail DETAIL

printing frames, seconds, peak RSS (``wait4``'s ``ru_maxrss``) and the findings per kind.
Run from the repository root (the ``alb_pcap`` imported is the one on ``PYTHONPATH``/cwd):

    python3 benchmarks/hostile.py                 # 200k SYNs, 100k pipelined, holes of 1 KB and 1 GB
    python3 benchmarks/hostile.py --scale 10      # 2M SYNs, 1M pipelined
    python3 benchmarks/hostile.py --only syn_flood --detail all

Not part of the test suite; the figures go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile  # noqa: E402

CASES = {
    "syn_flood": lambda k: hostile.syn_flood(200_000 * k),
    "port_scan": lambda k: hostile.syn_flood(200_000 * k, scan=True),
    "slowloris": lambda k: hostile.slowloris(100_000 * k),
    "pipelined": lambda k: hostile.pipelined(100_000 * k),
    "hole_1k": lambda k: hostile.sequence_hole(1024, before=1000 * k, after=1000 * k),
    "hole_1g": lambda k: hostile.sequence_hole(1 << 30, before=1000 * k, after=1000 * k),
}


def run(path: Path, detail: str, root: Path, jobs: int | None) -> tuple[float, int, dict, int]:
    out = path.with_suffix(".json")
    cmd = [sys.executable, "-m", "alb_pcap.cli", "analyze", str(path.resolve()), "--json", str(out.resolve()),
           "--json-detail", detail] + ([] if jobs is None else ["--jobs", str(jobs)])
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    # from root: ``-m`` puts the working directory first on the path
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        print(f"  exit {code}: {err}", file=sys.stderr)
        return elapsed, usage.ru_maxrss, {}, code
    # read in another process: a child's ru_maxrss counts the parent's pages it was forked with, so
    # this process must stay small (a --json-detail all document is hundreds of MB once loaded)
    brief = subprocess.run([sys.executable, "-c", _BRIEF, str(out)], capture_output=True, text=True, check=True)
    return elapsed, usage.ru_maxrss, json.loads(brief.stdout), code


_BRIEF = """import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({"finding_counts": d.get("finding_counts", {}), "captures": d.get("captures", []),
                  "summary": {"anomalies": d.get("summary", {}).get("anomalies", {})}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="multiply the sizes (10: 2M SYNs, 1M pipelined)")
    ap.add_argument("--only", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    ap.add_argument("--detail", choices=["findings", "all"], default="findings", help="--json-detail")
    ap.add_argument("--jobs", type=int, default=1,
                    help="--jobs (default 1: ru_maxrss is one process's; 0 leaves the option out, for an older root)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose alb_pcap runs (a 'before')")
    ap.add_argument("--out", type=Path, help="keep the captures here (default: a temporary directory)")
    args = ap.parse_args()
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="alb-pcap-hostile-")
        args.out = Path(tmp.name)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'case':<10} {'frames':>10} {'MB':>7} {'seconds':>8} {'peak RSS':>10}  findings / anomalies")
    for name in args.only or CASES:
        path = args.out / f"{name}-x{args.scale}.pcap"
        if not path.exists():
            with open(path, "wb") as f:
                frames = hostile.write_pcap(f, CASES[name](args.scale))
        else:
            frames = None
        elapsed, rss_kib, doc, code = run(path, args.detail, args.root, args.jobs or None)
        kinds = dict(doc.get("finding_counts", {})) if doc else {}
        anomalies = doc.get("summary", {}).get("anomalies", {}) if doc else {}
        frames = frames if frames is not None else sum(c["frames"] for c in doc.get("captures", []))
        print(f"{name:<10} {frames:>10,} {path.stat().st_size / 1e6:>7.1f} {elapsed:>8.1f} "
              f"{rss_kib / 1024:>7.0f} MiB  {kinds} {anomalies}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
