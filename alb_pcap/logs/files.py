"""The only I/O of the log reader: paths (files, directories, globs; plain or gzip) to lines."""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Iterator

GZIP_MAGIC = b"\x1f\x8b"


class LogFileError(Exception):
    """A --log path that names nothing readable."""


def expand(paths: list[str]) -> list[str]:
    """Files, directories (their files, sorted, recursively) and glob patterns -> file paths."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        elif os.path.isfile(path):
            out.append(path)
        else:
            matched = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not matched:
                raise LogFileError(f"{path}: no such log file")
            out += matched
    return out


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a plain or gzip file; undecodable bytes replaced, never fatal.

    A gzip file cut short yields the lines before the cut.
    """
    try:
        with open(path, "rb") as probe:
            gz = probe.read(2) == GZIP_MAGIC
        opener = gzip.open if gz else open
        with opener(path, "rb") as raw:
            number = 0
            try:
                for number, data in enumerate(raw, 1):
                    yield number, data.decode("utf-8", "replace").rstrip("\r\n")
            except (EOFError, gzip.BadGzipFile, OSError):
                return  # a truncated or damaged gzip: what came before stands
    except OSError as e:
        raise LogFileError(f"{path}: {e.strerror or e}") from e
