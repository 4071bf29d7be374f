"""The Cython-compiled build of alb_pcap's hot modules (setup.py's COMPILED).

The rest of the suite runs on whatever the install built (compiled, in CI); these tests check
that the build is there in CI, that a build older than its source is never used, and that the
interpreted sources (``ALB_PCAP_PURE=1``, the reference) and the compiled build give the same
output on every sample capture.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import alb_pcap
from alb_pcap import _compiled

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(alb_pcap.__file__).parent
MANIFEST = PACKAGE / "_compiled.json"


def _setup_list() -> list[str]:
    """setup.py's COMPILED, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMPILED list")


def _built() -> dict[str, str]:
    if not MANIFEST.exists():
        pytest.skip("alb_pcap was not compiled (no Cython or no compiler at install time)")
    return json.loads(MANIFEST.read_text())


def test_compiled_in_ci() -> None:
    """CI installs with pip on a fresh machine: a broken Cython build shows here, not as a slow tool."""
    if not os.environ.get("CI") or os.environ.get("ALB_PCAP_PURE"):
        pytest.skip("CI is not set, or ALB_PCAP_PURE is")
    assert MANIFEST.exists(), "setup.py compiled nothing (see pip's output)"
    assert sorted(_built()) == sorted(_setup_list())
    interpreted = [name for name in _setup_list() if not _compiled.compiled(importlib.import_module(name))]
    assert not interpreted, f"loaded from source: {interpreted} (edited since the build? pip install -e . again)"


def _loaded_from(package_parent: Path, names: list[str], env: dict | None = None) -> dict[str, str]:
    code = ("import importlib, json, sys; print(json.dumps({n: importlib.import_module(n).__file__ "
            "for n in sys.argv[1:]}))")
    run = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(package_parent), **(env or {})}, cwd=package_parent)
    return json.loads(run.stdout)


def test_an_edited_source_is_used_instead_of_its_build(tmp_path: Path) -> None:
    built = _built()
    copy = tmp_path / "alb_pcap"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited, untouched = "alb_pcap.diagnosis.refs", "alb_pcap.diagnosis.correlate"
    assert edited in built and untouched in built
    source = copy / "diagnosis" / "refs.py"
    source.write_text(source.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    files = _loaded_from(tmp_path, [edited, untouched])
    assert all(f.startswith(str(tmp_path)) for f in files.values()), files
    assert files[edited].endswith("refs.py")
    assert not files[untouched].endswith(".py")
    pure = _loaded_from(tmp_path, [untouched], {"ALB_PCAP_PURE": "1"})
    assert pure[untouched].endswith("correlate.py")


_EVERY_SAMPLE = """
import hashlib, io, sys, contextlib
from click.testing import CliRunner
from alb_pcap.cli import cli
for path in sys.argv[1:]:
    for args in (["--json", "-", "--json-detail", "all"], ["-v"]):
        run = CliRunner().invoke(cli, ["analyze", path, "--jobs", "1", *args], env={"COLUMNS": "200"})
        print(path, args[0], run.exit_code, hashlib.sha256(run.output.encode()).hexdigest())
"""


def test_every_sample_reads_the_same_interpreted_and_compiled() -> None:
    _built()
    samples = sorted(str(p) for p in (ROOT / "sample_captures").glob("*.pcap"))
    assert samples
    outputs = []
    for env in ({}, {"ALB_PCAP_PURE": "1"}):
        run = subprocess.run([sys.executable, "-c", _EVERY_SAMPLE, *samples], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        outputs.append(run.stdout.splitlines())
    assert len(outputs[0]) == 2 * len(samples)
    assert outputs[0] == outputs[1]
