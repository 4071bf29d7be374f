"""Correlation: pair each client-side exchange with the target-side exchange(s) it caused.

Theory of operation
-------------------
A proxy accepts a request on a *front* connection (client -> proxy) and sends it
on a *back* connection (proxy -> target), maybe several times (nginx retries an
idempotent request after a failure on a reused keep-alive connection), maybe
never (a 502/504/460 it made up itself). Nothing on the wire names the pair, so
it is found from what the proxy copies across, strongest key first:

1. a request id present on both sides (``X-Amzn-Trace-Id``'s ``Root=``, which
   the ALB keeps while adding ``Self=``; ``X-Request-Id``; ``X-Correlation-Id``);
2. the last hop of ``X-Forwarded-For`` (the front connection's opener) with the
   method and URI; ``X-Forwarded-Port``, when present, must be the front port;
3. causality for both: the back request starts after the front request starts
   and before the front response starts.

Exchanges arrive when they *end* (pipeline.Sink), in either order across the
two sides, so both sides wait in a small index until their partner shows up.
Memory is bounded by time, not by the capture's length: a healthy front waits
``settle_ns`` (long enough for its connection's close to be reported, which may
reveal a client abort), everything else waits ``window_ns``; then a healthy
transaction is counted and dropped, an interesting one (an error status, no
response, a cut connection) is kept in full.

Each exchange is put on its side by the roles (``roles.py``), which pairs also
teach: a front connection's acceptor is a proxy listener, a back connection's
opener address is that proxy's back address, its acceptor a target. Keys: an
id-shaped header value that crosses unchanged (learnt, ``refs.py``), the last hop
of X-Forwarded-For with method and URI, else the content (``same_request``),
one to one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

from ..model import Close
from .refs import (
    SEC,
    SKEW_NS,
    ExchangeRef,
    host_of,
    port_of,
    same_request,
    similarity,
)
from .roles import Proxy, Roles, drop_until, file_under

# -- what correlation produces ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cut:
    """How a connection closed while one of its exchanges was still outstanding."""

    by: str
    """"opener" or "acceptor": who sent the first FIN/RST."""
    close: Close
    rst: Close | None
    idle_before_ns: int
    """Request start minus the connection's previous HTTP data (or its start)."""


@dataclass(frozen=True, slots=True)
class Leg:
    """One exchange of a transaction, with how its connection was cut, if it was."""

    exchange: ExchangeRef
    cut: Cut | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A client exchange and the target exchange(s) it caused (retries in order)."""

    front: Leg | None
    backs: tuple[Leg, ...]
    paired_by: str | None = None
    """"request id", "x-forwarded-for" or None (one side only)."""


@dataclass(frozen=True, slots=True)
class Counts:
    transactions: int = 0
    paired: int = 0
    healthy_dropped: int = 0
    """Healthy transactions counted and not kept (paired or not)."""
    unpaired_front: int = 0
    unpaired_back: int = 0
    retried: int = 0
    """Front exchanges that caused more than one back exchange."""
    unanswered_not_kept: int = 0
    """Unanswered exchanges beyond ``diagnose.MAX_FAILING_PER_CONN`` on one connection that no close could
    cut (not its last): counted, neither paired nor kept (a pipelining flood); and transactions nothing
    answered or cut beyond ``MAX_UNCUT_KEPT`` (a slowloris)."""


@dataclass(frozen=True, slots=True)
class Correlation:
    transactions: tuple[Transaction, ...]
    """Only the interesting ones; healthy ones are in ``counts``."""
    counts: Counts
    proxies: tuple[Proxy, ...]


# -- the correlator ---------------------------------------------------------------


class _Tx:
    """A transaction being paired: one per front exchange. A plain class, not a dataclass: a
    dataclass's generated ``__init__`` runs in the interpreter even in the compiled build."""

    __slots__ = ("front", "backs", "paired_by", "done")

    def __init__(self, front: ExchangeRef | None, backs: list[ExchangeRef] | None = None) -> None:
        self.front = front
        self.backs = [] if backs is None else backs
        self.paired_by: str | None = None
        self.done = False


def _front_keys(ref: ExchangeRef) -> list[tuple]:
    keys: list[tuple] = [("id", value) for _, value in ref.request_ids]
    keys.append(("xff", host_of(ref.opener), ref.method, ref.uri))
    keys.append(("req",) + ref.content)
    return keys


def _back_keys(ref: ExchangeRef) -> list[tuple]:
    keys: list[tuple] = [("id", value) for _, value in ref.request_ids]
    if ref.forwarded_for:
        keys.append(("xff", ref.forwarded_for, ref.method, ref.uri))
    keys.append(("req",) + ref.content)
    return keys


def how_paired(key: tuple, ref: ExchangeRef, ambiguous: bool = False) -> str:
    if key[0] == "id":
        name = next((n for n, v in ref.request_ids if v == key[1]), "request id")
        return f"header {name}"
    if key[0] == "xff":
        return "x-forwarded-for"
    return "content (ambiguous)" if ambiguous else "content"


def _ambiguous(front: ExchangeRef, backs: list[ExchangeRef]) -> bool:
    """Two candidates that carry the client's headers equally well: the pick was by time alone."""
    scores = sorted((similarity(front.fingerprint, b.fingerprint) for b in backs), reverse=True)
    return len(scores) > 1 and scores[0] == scores[1]


def causal(front: ExchangeRef, back: ExchangeRef, window_ns: int) -> bool:
    """The back request started after the front request and before the front response."""
    if front.request_start_ns is None or back.request_start_ns is None:
        return False
    if back.forwarded_port is not None and back.forwarded_port != port_of(front.acceptor):
        return False
    if back.request_start_ns < front.request_start_ns - SKEW_NS:
        return False
    limit = front.response_start_ns
    if limit is None:  # never answered: the proxy may have tried until it gave up
        limit = front.last_ns + window_ns
    return back.request_start_ns <= limit + SKEW_NS


class Correlator:
    """Streams ExchangeRefs in, pairs them, keeps only interesting transactions."""

    def __init__(self, roles: Roles, window_ns: int = 120 * SEC, settle_ns: int = 10 * SEC) -> None:
        self.roles = roles
        self.window_ns = window_ns
        self.settle_ns = settle_ns
        # Per pairing key, newest last. Entries are dropped lazily (see _trim): one client
        # polling one URI puts thousands of exchanges under one key (see file_under).
        self._fronts: dict[tuple, list[_Tx]] = {}
        self._backs: dict[tuple, list[ExchangeRef]] = {}
        self._queue: list[tuple[int, int, object]] = []  # (deadline, seq, _Tx | ExchangeRef)
        self._seq = 0
        self._where: dict[tuple[int, int], _Tx | None] = {}  # exchange -> its tx (None: waiting back)
        self._cuts: dict[tuple[int, int], Cut] = {}
        self._shared_names: set[str] = set()  # headers whose id-shaped values repeat: not request ids
        self._unclaimed: dict[tuple[int, int], ExchangeRef] = {}  # backs waiting for their front
        self._settling: dict[int, _Tx] = {}  # client connection -> its last healthy transaction
        self._next_sweep = 0
        self._sweep_at = MAX_WAITING  # pairing keys that make a sweep due before its second
        self._kept: list[_Tx] = []
        self._uncut_kept = 0  # of them, those nothing answered or cut when closed (MAX_UNCUT_KEPT)
        self._counts: dict[str, int] = dict.fromkeys(Counts.__dataclass_fields__, 0)

    # -- input ----------------------------------------------------------------

    def add(self, ref: ExchangeRef) -> str:
        """Take one exchange; returns the side it was put on."""
        side = self.roles.side(ref)
        self.roles.note(ref, side)
        if side == "front":
            self._add_front(ref)
        else:
            self._add_back(ref)
        if len(self._fronts) + len(self._backs) > self._sweep_at:  # many keys within a second: sweep now
            self._sweep()
        return side

    def refile(self) -> None:
        """Roles were learnt: move exchanges filed as client-side that are now known to be target-side."""
        misfiled = [tx for key, tx in self._where.items()
                    if tx is not None and not tx.done and not tx.backs and tx.front.key == key
                    and self.roles.conn_side(tx.front.opener, tx.front.acceptor) == "back"]
        for tx in misfiled:
            tx.done = True  # its index entries die with it
            if self._settling.get(tx.front.conn_id) is tx:
                del self._settling[tx.front.conn_id]
            del self._where[tx.front.key]
            self._add_back(tx.front)

    def release(self, conn_id: int) -> None:
        """A client connection closed: its last healthy transaction can no longer be cut."""
        tx = self._settling.pop(conn_id, None)
        if tx is not None:
            self._close(tx)

    def cut(self, key: tuple[int, int], cut: Cut) -> None:
        """A connection closed while this exchange was outstanding (known only at its close)."""
        if key in self._where:  # else a healthy transaction already counted and dropped
            self._cuts[key] = cut

    def advance(self, now_ns: int) -> None:
        while self._queue and self._queue[0][0] < now_ns:
            _, _, item = heapq.heappop(self._queue)
            self._expire(item)
        if now_ns >= self._next_sweep:
            self._next_sweep = now_ns + SEC
            self._sweep()

    def _sweep(self) -> None:
        """Drop pairing keys whose entries are all settled (a key per client and URI adds up)."""
        for index, alive in ((self._fronts, _alive_front), (self._backs, lambda b: b.key in self._unclaimed)):
            for key in list(index):
                _trim(index, key, alive)
        self._sweep_at = 2 * (len(self._fronts) + len(self._backs)) + MAX_WAITING

    def widen(self, window_ns: int) -> None:
        """An idle timeout longer than the window was seen: wait at least that long."""
        self.window_ns = max(self.window_ns, window_ns)

    def finish(self) -> Correlation:
        for conn_id in list(self._settling):
            self.release(conn_id)
        for _, _, item in sorted(self._queue):
            self._expire(item)
        self._queue.clear()
        txs = tuple(self._freeze(tx) for tx in sorted(self._kept, key=_tx_start))
        return Correlation(txs, Counts(**self._counts), self.roles.proxies())

    # -- pairing ----------------------------------------------------------------

    def _add_front(self, ref: ExchangeRef) -> None:
        tx = _Tx(ref)
        self._where[ref.key] = tx
        keys = self._usable(ref, _front_keys(ref), True)
        for key in keys:  # strongest key first; the first that pairs decides
            backs, ambiguous = self._take_backs(key, ref)
            for back in backs:
                self._attach(tx, back, how_paired(key, ref, ambiguous))
            if backs:
                break
        if not tx.backs:  # its back may still come (merged captures, a proxy still waiting)
            for key in keys:
                file_under(self._fronts, key, tx, MAX_PER_KEY)
        if ref.interesting or any(b.interesting for b in tx.backs):
            self._push(ref.last_ns + self.window_ns, tx)
        else:
            self._settle(tx)  # the usual case: memory stays flat under load

    def _usable(self, ref: ExchangeRef, keys: list[tuple], front: bool) -> list[tuple]:
        """Leave out ids of headers seen to repeat across client requests: a static token is no request id."""
        if not ref.request_ids:
            return keys
        out = []
        for key in keys:
            if key[0] == "id":
                name = next(n for n, v in ref.request_ids if v == key[1])
                if name in self._shared_names:
                    continue
                if front and any(_alive_front(tx) for tx in self._fronts.get(key, ())):
                    if len(self._shared_names) < MAX_CANDIDATES:
                        self._shared_names.add(name)
                    continue
            out.append(key)
        return out

    def _settle(self, tx: _Tx) -> None:
        """Hold a paired, healthy transaction only until its connection shows it was not cut.

        A client connection closing early (the client gave up; the proxy still relayed the
        answer) is known only when the connection closes, and only its last exchange can be
        cut: the next exchange on the connection, or its close, settles this one.
        """
        previous = self._settling.pop(tx.front.conn_id, None)
        if previous is not None:
            self._close(previous)
        self._settling[tx.front.conn_id] = tx

    def _take_backs(self, key: tuple, front: ExchangeRef) -> tuple[list[ExchangeRef], bool]:
        """The back exchange(s) this front caused, and whether content alone could not tell."""
        unclaimed = self._unclaimed
        waiting = _trim(self._backs, key, lambda b: b.key in unclaimed)
        if not waiting:
            return [], False
        matches, looked = [], 0
        for b in reversed(waiting):  # newest first; one loop, not a list per filter: this runs per exchange
            if b.key in unclaimed:
                if causal(front, b, self.window_ns):
                    matches.append(b)
                looked += 1
                if looked == MAX_CANDIDATES:
                    break
        if key[0] == "req":
            matches = [b for b in matches if same_request(front, b) and self.roles.may_pair(front, b)]
        answered = [b for b in matches if b.answered]
        if len(answered) > 1:  # same request, overlapping: keep the likeliest
            best = min(answered, key=(lambda b: _distance(front, b)) if key[0] == "req" else
                       (lambda b: b.start_ns - front.start_ns))
            matches = [b for b in matches if not b.answered or b is best]
        return matches, key[0] == "req" and _ambiguous(front, answered)

    def _add_back(self, ref: ExchangeRef) -> None:
        keys = self._usable(ref, _back_keys(ref), False)
        for key in keys:
            tx, ambiguous = self._best_front(key, ref)
            if tx is not None:
                self._attach(tx, ref, how_paired(key, ref, ambiguous))
                return
        self._where[ref.key] = None
        self._unclaimed[ref.key] = ref
        for key in keys:
            file_under(self._backs, key, ref, MAX_PER_KEY)
        # the queue holds only the key: a claimed back must not stay alive until its deadline
        self._push(ref.last_ns + (self.window_ns if ref.interesting else self.settle_ns), ref.key)

    def _best_front(self, key: tuple, back: ExchangeRef) -> tuple[_Tx | None, bool]:
        waiting = _trim(self._fronts, key, _alive_front)
        if not waiting:
            return None, False
        candidates, looked = [], 0
        for tx in reversed(waiting):  # newest first
            if tx.done:
                continue
            looked += 1
            # one answered back per front; failed tries may precede it
            if not (back.answered and any(b.answered for b in tx.backs)) and causal(tx.front, back, self.window_ns):
                candidates.append(tx)
            if looked == MAX_CANDIDATES:
                break
        if key[0] != "req":  # the key says it is the same request: the nearest in time
            return min(candidates, key=lambda tx: back.start_ns - tx.front.start_ns, default=None), False
        candidates = [tx for tx in candidates if same_request(tx.front, back) and self.roles.may_pair(tx.front, back)]
        best = min(candidates, key=lambda tx: _distance(tx.front, back), default=None)
        rivals = [tx.front for tx in candidates]
        return best, len(rivals) > 1 and _ambiguous(back, rivals)

    def _attach(self, tx: _Tx, back: ExchangeRef, how: str) -> None:
        tx.backs.append(back)
        self._unclaimed.pop(back.key, None)
        tx.paired_by = tx.paired_by or how
        self._where[back.key] = tx
        if tx.front is not None:
            self.roles.learn(tx.front, back, how)

    # -- expiry ------------------------------------------------------------------

    def _push(self, deadline: int, item: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (deadline, self._seq, item))
        if len(self._queue) > MAX_WAITING:
            self._expire(heapq.heappop(self._queue)[2])

    def _expire(self, item: object) -> None:
        if isinstance(item, _Tx):
            if not item.done:  # else refiled to the other side
                self._close(item)
        elif (back := self._unclaimed.pop(item, None)) is not None:  # a back nobody claimed
            self._close(_Tx(None, [back]))

    def _close(self, tx: _Tx) -> None:
        """The transaction can change no more: count it, and keep it if it is interesting."""
        tx.done = True
        self._count(tx)
        refs = ([tx.front] if tx.front else []) + tx.backs
        cut = any(r.key in self._cuts for r in refs)
        if cut or any(r.interesting for r in refs):
            if not cut and all(r.status is None for r in refs):
                if self._uncut_kept >= MAX_UNCUT_KEPT:
                    self._counts["unanswered_not_kept"] += 1
                    self._forget(refs)
                    return
                self._uncut_kept += 1
            self._kept.append(tx)
            for r in refs:
                self._where[r.key] = tx
            return
        self._counts["healthy_dropped"] += 1
        self._forget(refs)

    def _forget(self, refs: list[ExchangeRef]) -> None:
        for r in refs:
            self._where.pop(r.key, None)

    def _count(self, tx: _Tx) -> None:
        c = self._counts
        c["transactions"] += 1
        if tx.front is None:
            c["unpaired_back"] += 1
        elif not tx.backs:
            c["unpaired_front"] += 1
        else:
            c["paired"] += 1
            c["retried"] += len(tx.backs) > 1

    def _freeze(self, tx: _Tx) -> Transaction:
        def leg(ref: ExchangeRef) -> Leg:
            return Leg(ref, self._cuts.get(ref.key))

        backs = tuple(leg(b) for b in sorted(tx.backs, key=lambda b: b.start_ns))
        return Transaction(leg(tx.front) if tx.front else None, backs, tx.paired_by)


MAX_WAITING = 20_000
"""Transactions and unclaimed target-side exchanges waiting out the pairing window, at most. Beyond (a
slowloris, a flood of requests nothing answers, faster than the window lets them go), the one due first is
settled at once, as the window's end would settle it: a pair arriving for it later is not made."""
MAX_UNCUT_KEPT = 20_000
"""Transactions kept that nothing answered and no close has cut (yet): a slowloris leaves one per connection
until the capture ends. Beyond this many, such a transaction is counted (``unanswered_not_kept``) and dropped;
a close that cuts it later finds nothing to cut."""
MAX_CANDIDATES = 64
"""Pending exchanges looked at per key, newest first: the pair is nearly always the newest."""
MAX_PER_KEY = 4 * MAX_CANDIDATES
"""Pending exchanges remembered per key; older ones fall off (they would never be looked at)."""


def _alive_front(tx: _Tx) -> bool:
    return not tx.done


def _distance(front: ExchangeRef, back: ExchangeRef) -> tuple[float, int]:
    """Likelier first: more of the client's headers carried, then the back request sooner after the front."""
    return (-similarity(front.fingerprint, back.fingerprint), back.start_ns - front.start_ns)


def _trim(index: dict[tuple, list], key: tuple, alive: Callable[[object], bool]) -> list | None:
    """The entries under ``key``, dead ones trimmed from the old end (the key goes when none is left).

    Entries die in roughly arrival order, so trimming the old end keeps each list short; callers
    look at the newest ``MAX_CANDIDATES`` live ones.
    """
    waiting = index.get(key)
    if not waiting:
        return None
    if not drop_until(waiting, alive):
        del index[key]
        return None
    return waiting


def _tx_start(tx: _Tx) -> int:
    return (tx.front or tx.backs[0]).start_ns
