"""Use a Cython-compiled module only while it is its source's build.

``setup.py`` compiles the hot modules from their own ``.py`` files and records each source's
hash in ``_compiled.json``. Python would load a compiled module in preference to its source
even after the source was edited (a development checkout, built once); for such a module this
finder loads the source instead. ``ALB_PCAP_PURE=1`` loads every module from its source (and
keeps the capture stage off ``_fastwire``): the reference the compiled build is tested against.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = Path(__file__).parent


def _interpreted() -> dict[str, Path]:
    """Module name -> source, for each compiled module that must not be used."""
    try:
        built = json.loads((_HERE / "_compiled.json").read_text())
    except (OSError, ValueError):
        return {}
    pure = bool(os.environ.get("ALB_PCAP_PURE"))
    out = {}
    for name, digest in built.items():
        source = _HERE.parent.joinpath(*name.split(".")).with_suffix(".py")
        try:
            stale = pure or hashlib.sha256(source.read_bytes()).hexdigest() != digest
        except OSError:
            continue  # no source beside it: the compiled module is all there is
        if stale:
            out[name] = source
    return out


class _SourceFirst:
    """A meta path finder for the modules named: their ``.py``, not the compiled module beside it."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        source = self.sources.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name, source)


def install() -> None:
    sources = _interpreted()
    if sources:
        sys.meta_path.insert(0, _SourceFirst(sources))


def compiled(module) -> bool:
    """Was ``module`` loaded from its compiled build?"""
    return not (getattr(module, "__file__", None) or "").endswith(".py")
