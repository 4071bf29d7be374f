"""Scoring a diagnosis against a lab run's ground truth (``*.expected.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..outputs.records import finding_dict
from .detect import KINDS
from .diagnose import DiagnosisResult


@dataclass(frozen=True, slots=True)
class Score:
    expected: int
    found: int
    matched: int
    missed: tuple[dict, ...]
    """Expected findings nothing matched."""
    extra: tuple[dict, ...]
    """Our findings that matched nothing expected."""

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.expected if self.expected else 1.0


def score(result: DiagnosisResult, expected: dict | str | Path) -> Score:
    """Compare findings with an ``*.expected.json`` (a dict, or its path).

    An expected finding matches one of ours of the same kind when every field it
    gives among side, status, client_flow, target_flow agrees and ts is within
    its ``ts_tolerance`` (else the document's, else 1 s). Each of ours matches
    at most one. Only kinds the expected file lists (``kinds``, else those of its
    findings) count towards precision, so a lab run that does not judge idle
    closes is not penalised for them.
    """
    doc = expected if isinstance(expected, dict) else json.loads(Path(expected).read_text())
    wanted = list(doc.get("findings", []))
    judged = set(doc.get("kinds") or KINDS)
    ours = [finding_dict(f) for f in result.findings if f.kind in judged]
    default_tol = float(doc.get("ts_tolerance_s", 1.0))
    unused = list(range(len(ours)))
    missed = []
    for w in wanted:
        hit = next((i for i in unused if _matches(w, ours[i], default_tol)), None)
        if hit is None:
            missed.append(w)
        else:
            unused.remove(hit)
    matched = len(wanted) - len(missed)
    return Score(len(wanted), len(ours), matched, tuple(missed), tuple(ours[i] for i in unused))


def _matches(want: dict, got: dict, default_tol: float) -> bool:
    if want["kind"] != got["kind"]:
        return False
    for name in ("side", "status", "client_flow", "target_flow"):
        if name in want and want[name] is not None and want[name] != got[name]:
            return False
    if want.get("ts") is None:
        return True
    return abs(want["ts"] - got["ts"]) <= float(want.get("ts_tolerance_s", default_tol))
