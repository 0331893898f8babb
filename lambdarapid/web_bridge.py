"""
Render a request parsed elsewhere on a twisted.web resource.

The Runtime API's hot routes are served by a hand-written HTTP/1.1 protocol;
its cold ones (Extensions, Telemetry and Logs API, runtime init) are a Klein
app. L{render} lets that protocol hand a request it has already parsed to the
app's resource and get the whole answer back, to write on its own connection
in its own order. It does what twisted.web's HTTP/2 streams do (an
C{H2Stream} is a L{Request}'s channel that is no L{HTTPChannel}): a small
channel, L{_BridgeChannel}, gives the L{Request} everything it asks of one and
keeps what it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IProducer
from twisted.python.failure import Failure
from twisted.web.http import fromChunk
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

#: Headers the fast protocol writes itself: dropped from a L{Rendered}.
HOP_BY_HOP = frozenset(
    {b"content-length", b"date", b"connection", b"transfer-encoding", b"server"}
)


@dataclass
class Rendered:
    """A resource's whole answer to one request."""

    status: int
    #: As the resource set them, less L{HOP_BY_HOP}.
    headers: list[tuple[bytes, bytes]]
    #: Unframed (no chunked encoding); a Content-Encoding the resource applied stays.
    body: bytes


def render(
    site: Site,
    method: bytes,
    path: bytes,
    headers: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
    body: bytes,
    peer: IAddress,
    host: IAddress,
) -> Deferred[Rendered]:
    """
    Render one request, already parsed elsewhere, on C{site}'s resource.

    Fires with the whole answer once the resource has finished it; an
    exception in the resource gives twisted.web's own 500, as on a real
    connection. Cancelling the L{Deferred} tells the request its connection
    was lost, so a Klein or C{notifyFinish}-watching handler can stop; it
    then fails with L{CancelledError}.

    @param path: The request target, query string included.
    @param headers: The request's header fields, repeated names allowed in
        a list of pairs.
    """
    channel = _BridgeChannel(site, peer, host)
    request = site.requestFactory(channel)
    channel.request = request
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        request.requestHeaders.addRawHeader(name, value)
    # What an HTTPChannel does once a head and body are in, in its order: the
    # request's own hooks keep the body (so a Request subclass's limits hold).
    request.parseCookies()
    request.gotLength(len(body))
    if body:
        request.handleContentChunk(body)
    try:
        request.requestReceived(method, path, b"HTTP/1.1")
    except Exception:
        # Resource errors are answered inside requestReceived; this is the
        # request's own machinery failing: say so rather than hang.
        channel.fail(Failure())
    return channel.answer


class _BridgeChannel:
    """
    What a L{Request} needs of its channel, with no connection below it.

    The request writes its status line, headers and (perhaps chunked) body
    here; when it is done they become a L{Rendered}. It has no C{factory}
    attribute, which is how L{Request.finish} knows to log no access line.
    """

    #: Like an C{H2Stream}'s: there is no transport to give the request.
    transport = None

    def __init__(self, site: Site, peer: IAddress, host: IAddress) -> None:
        #: Read by L{Request} itself (C{process}, C{gotLength}, C{__init__}).
        self.site = site
        self._peer = peer
        self._host = host
        self.request: Request | None = None
        self.answer: Deferred[Rendered] = Deferred(self._cancel)
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked = False
        self._body: list[bytes] = []
        self._producer: IProducer | None = None
        self._done = False

    # What the request asks of its channel.

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    def isSecure(self) -> bool:
        # The fast protocol serves plain HTTP on loopback.
        return False

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        self._status = int(code)
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower == b"transfer-encoding":
                self._chunked = b"chunked" in b",".join(values).lower()
            if lower not in HOP_BY_HOP:
                self._headers.extend((name, value) for value in values)

    def write(self, data: bytes) -> None:
        self._body.append(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self._body.extend(iovec)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Take a producer's output: all is kept in memory, so there is never a
        reason to pause one, and a pull producer is asked for all it has now.
        """
        if self._producer is not None:
            raise ValueError(f"{producer!r} registered while {self._producer!r} is")
        self._producer = producer
        if not streaming:
            while self._producer is producer and not self._done:
                producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self._producer = None

    def requestDone(self, request: Request) -> None:
        """The request has finished: its answer is whole."""
        if self._done:
            return
        self._done = True
        try:
            framed = b"".join(self._body)
            body = _dechunk(framed) if self._chunked else framed
            assert self._status is not None, "finished without writing headers"
            rendered = Rendered(self._status, self._headers, body)
        except Exception:
            self.answer.errback()
        else:
            self.answer.callback(rendered)

    def loseConnection(self) -> None:
        """The resource hung up: it gave no answer, so there is none to write."""
        self._lose(Failure(ConnectionDone("the resource closed the connection")))

    # twisted.web's own (Twisted 26.10): the one private name a Request calls
    # on its channel, when a POST's multipart body cannot be parsed (with the
    # Site's parsePOSTFormSubmission on). HTTPChannel answers 400 and hangs
    # up; here the 400 is the answer and the request is told it is lost.

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._done:
            return
        self._done = True
        self.answer.callback(Rendered(400, [], b""))
        self._tell_lost(Failure(ConnectionDone("bad request")))

    # What render() and the Deferred's canceller do.

    def fail(self, failure: Failure) -> None:
        """The request cannot be answered: its caller gets C{failure}."""
        self._lose(failure)

    def _cancel(self, answer: Deferred[Rendered]) -> None:
        """Nobody wants the answer any more: as if the connection were lost."""
        if self._done:
            return
        self._done = True
        self._tell_lost(Failure(ConnectionLost("the answer was cancelled")))
        # The Deferred itself then fails with CancelledError.

    def _lose(self, failure: Failure) -> None:
        if self._done:
            return
        self._done = True
        self._tell_lost(failure)
        self.answer.errback(failure)

    def _tell_lost(self, reason: Failure) -> None:
        """What an HTTPChannel's lost connection does: stop its producer, tell the request."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        request = self.request
        if request is not None and not request.finished:
            request.connectionLost(reason)


def _dechunk(framed: bytes) -> bytes:
    """A body written with chunked framing (as L{Request} does), unframed."""
    chunks: list[bytes] = []
    while True:
        chunk, framed = fromChunk(framed)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
