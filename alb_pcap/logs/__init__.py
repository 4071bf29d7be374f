"""Proxy logs beside the capture: parsers (``parse``), file reading (``files``) and the join (``join``)."""

from .model import LogLine
from .parse import LineParser, custom_parser

__all__ = ["LineParser", "LogLine", "custom_parser"]
