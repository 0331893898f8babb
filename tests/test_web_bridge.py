"""
L{lambdarapid.web_bridge.render}: requests parsed elsewhere, answered by a
real Klein app and plain twisted.web resources, all in memory.
"""

from __future__ import annotations

import io
import json
from typing import Any

from klein import Klein
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from lambdarapid.web import BoundedRequest, bounded_request
from lambdarapid.web_bridge import HOP_BY_HOP, Rendered, render

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 9001)


class Routes:
    """A small Klein app of the shape the Runtime API's cold routes take."""

    app = Klein()

    def __init__(self) -> None:
        #: Deferreds the routes are waiting on, for the test to fire.
        self.pending: list[Deferred[Any]] = []
        #: What notifyFinish told each waiting route.
        self.finished: list[Failure | None] = []
        #: How many of the routes' Deferreds were cancelled.
        self.cancelled = 0

    @app.route("/echo", methods=["GET", "PUT", "POST"])
    def echo(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(
            {
                "method": request.method.decode(),
                "body": request.content.read().decode(),  # type: ignore[union-attr]
                "name": (request.getHeader(b"Lambda-Extension-Name") or b"").decode(),
                "args": {
                    k.decode(): [v.decode() for v in vs]
                    for k, vs in (request.args or {}).items()
                },
                "client": request.getClientAddress().port,  # type: ignore[attr-defined]
                "host": request.getHost().port,
                "tags": [
                    v.decode() for v in request.requestHeaders.getRawHeaders(b"X-Tag", [])
                ],
            }
        ).encode()

    @app.route("/register", methods=["POST"])
    def register(self, request: Request) -> bytes:
        request.setResponseCode(201)
        request.setHeader(b"Lambda-Extension-Identifier", b"ext-1")
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"functionName":"f"}'

    @app.route("/later")
    def later(self, request: Request) -> Deferred[bytes]:
        waiting: Deferred[bytes] = Deferred(self._cancelled)
        self.pending.append(waiting)
        request.notifyFinish().addBoth(self.finished.append)
        return waiting

    def _cancelled(self, waiting: Deferred[Any]) -> None:
        self.cancelled += 1

    @app.route("/async")
    async def asynchronous(self, request: Request) -> bytes:
        waiting: Deferred[str] = Deferred()
        self.pending.append(waiting)
        request.setResponseCode(202)
        return (await waiting).encode()

    @app.route("/boom")
    def boom(self, request: Request) -> bytes:
        1 / 0
        return b"unreachable"

    @app.route("/hangup")
    def hangup(self, request: Request) -> Deferred[bytes]:
        request.loseConnection()
        return Deferred()


class Plain(Resource):
    """A bare twisted.web resource: bytes now, or NOT_DONE_YET and later."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        if request.path == b"/later":
            self.waiting.append(request)
            return NOT_DONE_YET
        if request.path == b"/boom":
            raise RuntimeError("boom")
        request.setHeader(b"Content-Type", b"text/plain")
        return b"plain " + request.path


class Kept(Resource):
    """Tells what the request holds of an oversized body."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert isinstance(request, BoundedRequest)
        return b"too large" if request.too_large else request.body()


class Form(Resource):
    """Shows the form fields twisted.web parsed."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        return repr(request.args).encode()


MULTIPART = (b"Content-Type", b"multipart/form-data; boundary=x")


def site_for(resource: IResource, **kw: Any) -> Site:
    return Site(resource, reactor=Clock(), **kw)


class RenderKleinTests(SynchronousTestCase):
    """render() on a Klein app's resource."""

    def setUp(self) -> None:
        self.routes = Routes()
        self.site = site_for(self.routes.app.resource())

    def render(
        self,
        method: bytes,
        path: bytes,
        headers: Any = (),
        body: bytes = b"",
    ) -> Deferred[Rendered]:
        return render(self.site, method, path, list(headers), body, PEER, HOST)

    def echo(self, method: bytes, path: bytes, **kw: Any) -> Any:
        rendered = self.successResultOf(self.render(method, path, **kw))
        self.assertEqual(rendered.status, 200)
        return json.loads(rendered.body)

    def test_get_query_string(self) -> None:
        """A query string reaches the route as request.args, the path without it."""
        seen = self.echo(b"GET", b"/echo?a=1&a=2&b=x")
        self.assertEqual(seen["method"], "GET")
        self.assertEqual(seen["args"], {"a": ["1", "2"], "b": ["x"]})

    def test_post_body_and_headers(self) -> None:
        """A POST's body and headers reach the route."""
        seen = self.echo(
            b"POST",
            b"/echo",
            headers=[(b"Lambda-Extension-Name", b"logger")],
            body=b'{"events":["INVOKE"]}',
        )
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["body"], '{"events":["INVOKE"]}')
        self.assertEqual(seen["name"], "logger")

    def test_put_body(self) -> None:
        """A PUT's body reaches the route too."""
        seen = self.echo(b"PUT", b"/echo", body=b"abc")
        self.assertEqual((seen["method"], seen["body"]), ("PUT", "abc"))

    def test_headers_mapping_and_repeats(self) -> None:
        """Headers may be a mapping (any case) or pairs repeating a name."""
        rendered = render(
            self.site, b"GET", b"/echo", {b"lambda-extension-name": b"x"}, b"", PEER, HOST
        )
        self.assertEqual(json.loads(self.successResultOf(rendered).body)["name"], "x")
        seen = self.echo(b"GET", b"/echo", headers=[(b"X-Tag", b"1"), (b"x-tag", b"2")])
        self.assertEqual(seen["tags"], ["1", "2"])

    def test_addresses(self) -> None:
        """The request's client and host are the addresses render() was given."""
        seen = self.echo(b"GET", b"/echo")
        self.assertEqual((seen["client"], seen["host"]), (40000, 9001))

    def test_status_and_headers(self) -> None:
        """The route's status and headers come back, without the hop-by-hop ones."""
        rendered = self.successResultOf(self.render(b"POST", b"/register"))
        self.assertEqual(rendered.status, 201)
        self.assertEqual(rendered.body, b'{"functionName":"f"}')
        headers = dict(rendered.headers)
        self.assertEqual(headers[b"Lambda-Extension-Identifier"], b"ext-1")
        self.assertEqual(headers[b"Content-Type"], b"application/json")
        names = {name.lower() for name, _ in rendered.headers}
        self.assertFalse(names & HOP_BY_HOP, names & HOP_BY_HOP)

    def test_deferred_route(self) -> None:
        """A route's Deferred is rendered when it fires, not before."""
        answer = self.render(b"GET", b"/later")
        self.assertNoResult(answer)
        self.routes.pending[0].callback(b"done")
        rendered = self.successResultOf(answer)
        self.assertEqual((rendered.status, rendered.body), (200, b"done"))
        self.assertEqual(self.routes.finished, [None])

    def test_deferred_route_on_clock(self) -> None:
        """A route answering from a timer renders when the clock gets there."""
        clock = Clock()
        app = Klein()

        @app.route("/")
        def slow(request: Request) -> Deferred[bytes]:
            waiting: Deferred[bytes] = Deferred()
            clock.callLater(3, waiting.callback, b"slept")
            return waiting

        answer = render(site_for(app.resource()), b"GET", b"/", [], b"", PEER, HOST)
        clock.advance(2.9)
        self.assertNoResult(answer)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(answer).body, b"slept")

    def test_async_route(self) -> None:
        """An async def route is rendered when its await is done."""
        answer = self.render(b"GET", b"/async")
        self.assertNoResult(answer)
        self.routes.pending[0].callback("awaited")
        rendered = self.successResultOf(answer)
        self.assertEqual((rendered.status, rendered.body), (202, b"awaited"))

    def test_not_found(self) -> None:
        """An unknown path is Klein's 404 answer."""
        self.assertEqual(self.successResultOf(self.render(b"GET", b"/nowhere")).status, 404)

    def test_method_not_allowed(self) -> None:
        """A wrong method is Klein's 405 answer."""
        rendered = self.successResultOf(self.render(b"DELETE", b"/register"))
        self.assertEqual(rendered.status, 405)

    def test_exception_is_500(self) -> None:
        """An exception in a route is twisted.web's 500 answer, logged as usual."""
        rendered = self.successResultOf(self.render(b"GET", b"/boom"))
        self.assertEqual(rendered.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_cancel_tells_the_route(self) -> None:
        """Cancelling the answer errbacks the route's notifyFinish, and Klein's Deferred."""
        answer = self.render(b"GET", b"/later")
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        [reason] = self.routes.finished
        assert isinstance(reason, Failure)
        reason.trap(ConnectionLost)
        self.assertEqual(self.routes.cancelled, 1)

    def test_cancel_after_answer(self) -> None:
        """Cancelling an answer already given changes nothing."""
        answer = self.render(b"GET", b"/echo")
        answer.cancel()
        self.assertEqual(self.successResultOf(answer).status, 200)

    def test_resource_hangs_up(self) -> None:
        """A resource that closes its connection gives no answer: the Deferred fails."""
        self.failureResultOf(self.render(b"GET", b"/hangup"), ConnectionDone)


class RenderResourceTests(SynchronousTestCase):
    """render() on plain twisted.web resources and Sites."""

    def test_bytes(self) -> None:
        """A resource's bytes come back whole, with its Content-Type."""
        site = site_for(Plain())
        rendered = self.successResultOf(render(site, b"GET", b"/x", [], b"", PEER, HOST))
        self.assertEqual(rendered, Rendered(200, [(b"Content-Type", b"text/plain")], b"plain /x"))

    def test_not_done_yet(self) -> None:
        """A response written in pieces later comes back unframed once finished."""
        resource = Plain()
        answer = render(site_for(resource), b"GET", b"/later", [], b"", PEER, HOST)
        [request] = resource.waiting
        request.write(b"one ")
        request.write(b"")
        request.write(b"two\r\n0\r\n")
        self.assertNoResult(answer)
        request.finish()
        self.assertEqual(self.successResultOf(answer).body, b"one two\r\n0\r\n")

    def test_exception_is_500(self) -> None:
        """An exception in render_GET is twisted.web's 500 answer."""
        answer = render(site_for(Plain()), b"GET", b"/boom", [], b"", PEER, HOST)
        self.assertEqual(self.successResultOf(answer).status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unsupported_method(self) -> None:
        """A method the resource lacks is twisted.web's 405."""
        answer = render(site_for(Plain()), b"POST", b"/x", [], b"", PEER, HOST)
        rendered = self.successResultOf(answer)
        self.assertEqual(rendered.status, 405)
        allowed = dict(rendered.headers)[b"Allow"]
        self.assertEqual(set(allowed.split(b", ")), {b"GET", b"HEAD"})

    def test_request_factory(self) -> None:
        """The Site's own Request class is used, with its body hooks."""
        site = site_for(Kept(), requestFactory=bounded_request(4))
        small = render(site, b"POST", b"/", [], b"abcd", PEER, HOST)
        self.assertEqual(self.successResultOf(small).body, b"abcd")
        large = render(site, b"POST", b"/", [], b"abcde", PEER, HOST)
        self.assertEqual(self.successResultOf(large).body, b"too large")

    def test_producer(self) -> None:
        """A resource writing through a pull producer (a static File) is answered whole."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("big").setContent(b"x" * 100_000)
        site = site_for(File(directory.path))
        rendered = self.successResultOf(render(site, b"GET", b"/big", [], b"", PEER, HOST))
        self.assertEqual(rendered.status, 200)
        self.assertEqual(rendered.body, b"x" * 100_000)

    def test_no_access_log(self) -> None:
        """No access-log line is written, even by a started Site with a log file."""
        logged: list[Request] = []

        class Recording(Site):
            def log(self, request: Any) -> None:
                logged.append(request)
                super().log(request)

        site = Recording(Plain(), reactor=Clock())
        site.startFactory()
        self.addCleanup(site.stopFactory)
        log = io.StringIO()
        site.logFile = log
        rendered = self.successResultOf(render(site, b"GET", b"/x", [], b"", PEER, HOST))
        self.assertEqual(rendered.status, 200)
        self.assertEqual((logged, log.getvalue()), ([], ""))

    def test_multipart_form(self) -> None:
        """A form-parsing Site's multipart POST reaches the resource as request.args."""
        body = b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--\r\n'
        answer = render(site_for(Form()), b"POST", b"/", [MULTIPART], body, PEER, HOST)
        self.assertEqual(self.successResultOf(answer).body, b"{b'a': [b'1']}")

    def test_bad_multipart_is_400(self) -> None:
        """A form-parsing Site's unparseable multipart POST is twisted.web's 400."""
        answer = render(site_for(Form()), b"POST", b"/", [MULTIPART], b"junk", PEER, HOST)
        self.assertEqual(self.successResultOf(answer), Rendered(400, [], b""))
