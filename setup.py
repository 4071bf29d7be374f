"""The compiled part of the build; everything else is in pyproject.toml.

Two kinds of compiled modules, both optional (without a compiler, or without Cython, the
install still works and the same Python does the same work, more slowly):

- ``alb_pcap.wire._fastwire`` (C, no dependency beyond Python's headers): the capture stage's
  per-packet loop.
- ``COMPILED``: the modules on the per-packet and per-exchange path, compiled by Cython from
  their own ``.py`` source, unchanged (no Cython-only syntax, annotations not taken as C
  types): the same code without the bytecode interpreter, ~1.5x faster end to end.
  ``alb_pcap/_compiled.json`` records the hash of each source compiled; ``alb_pcap._compiled``
  loads a module's source instead of its compiled form when they differ (an edit since the
  build), so a stale build never runs.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "alb_pcap.model",
    "alb_pcap.wire.capture",
    "alb_pcap.wire.tcp",
    "alb_pcap.wire.http",
    "alb_pcap.wire.pipeline",
    "alb_pcap.wire.shards",
    "alb_pcap.wire.clocks",
    "alb_pcap.diagnosis.refs",
    "alb_pcap.diagnosis.roles",
    "alb_pcap.diagnosis.correlate",
    "alb_pcap.diagnosis.diagnose",
    "alb_pcap.diagnosis.detect",
    "alb_pcap.diagnosis.connect",
    "alb_pcap.diagnosis.software",
    "alb_pcap.diagnosis.selection",
    "alb_pcap.outputs.export",
    "alb_pcap.outputs.records",
    "alb_pcap.logs.parse",
    "alb_pcap.logs.join",
]
MANIFEST = "alb_pcap/_compiled.json"


def _source(name: str) -> str:
    return name.replace(".", "/") + ".py"


def _cythonized() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("Cython not found: alb_pcap's modules stay interpreted", file=sys.stderr)
        return []
    modules = [Extension(name, [_source(name)], optional=True) for name in COMPILED]
    return cythonize(modules, build_dir="build/cython", quiet=True, nthreads=os.cpu_count() or 1,
                     compiler_directives={"language_level": 3, "annotation_typing": False})


class BuildExt(build_ext):
    """Cythonizes ``COMPILED`` at build time (not when setup.py is merely read), then records what it built."""

    def finalize_options(self) -> None:
        modules = self.distribution.ext_modules = self.distribution.ext_modules or []
        if not any(m.name in COMPILED for m in modules):  # finalized again by editable installs
            modules += _cythonized()
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        super().run()
        built = {name: hashlib.sha256(Path(_source(name)).read_bytes()).hexdigest()
                 for name in COMPILED if Path(self.get_ext_fullpath(name)).exists()}
        out = Path(MANIFEST) if self.inplace else Path(self.build_lib) / MANIFEST
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "alb_pcap.wire._fastwire",
            sources=["alb_pcap/wire/_fastwire.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,  # no compiler: install anyway, the pure-Python path does the work
        )
    ],
)
