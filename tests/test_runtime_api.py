"""
The Runtime API over HTTP, as a runtime sees it: a real execution environment
(and pool) on a fake reactor, its own Site driven in memory.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httptools
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from lambdarapid.environment import ExecutionEnvironment, State
from lambdarapid.errors import MAX_REQUEST_HEAD, MAX_RUNTIME_RESPONSE
from lambdarapid.invocation import Invocation, Outcome, Result
from lambdarapid.pool import Pool

from .fakes import InMemoryHTTP, Reply, fake_process_reactor, make_config

NEXT = "/2018-06-01/runtime/invocation/next"
INIT_ERROR = "/2018-06-01/runtime/init/error"
#: A plausible epoch time for the fake clock, so deadlines look like real ones.
NOW = 1_700_000_000.0


def response_path(request_id: str) -> str:
    return f"/2018-06-01/runtime/invocation/{request_id}/response"


def error_path(request_id: str) -> str:
    return f"/2018-06-01/runtime/invocation/{request_id}/error"


class RuntimeAPITestCase(SynchronousTestCase):
    """One environment of a pool, spoken to through its Runtime API."""

    def setUp(self) -> None:
        self.reactor = fake_process_reactor(self)
        self.reactor.advance(NOW)
        self.pool = Pool(make_config(timeout=3.0), self.reactor, lambda data: None)

    def invoke(self, **fields: Any) -> tuple[Invocation, Deferred[Result]]:
        """Invoke; the first invocation also starts the environment and its Runtime API."""
        invocation = Invocation(payload=fields.pop("payload", b'{"k":"v"}'), **fields)
        result = self.pool.invoke(invocation)
        if not hasattr(self, "http"):
            [self.environment] = self.pool.environments
            [(port, site, _, interface)] = self.reactor.tcpServers
            self.assertEqual((port, interface), (9001, "127.0.0.1"))
            assert isinstance(site, Factory)
            self.http = InMemoryHTTP(site)
        return invocation, result

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        """A Runtime API call that is answered at once."""
        return self.successResultOf(self.http.request(method, path, body, headers))

    def next_event(self) -> Reply:
        return self.call("GET", NEXT)

    def assert_accepted(self, reply: Reply) -> None:
        self.assertEqual(reply.code, 202)
        self.assertEqual(reply.body, b'{"status":"OK"}')
        self.assertEqual(reply.header("content-type"), "application/json")

    def assert_error(self, reply: Reply, status: int, error_type: str) -> None:
        self.assertEqual(reply.code, status)
        self.assertEqual(reply.header("content-type"), "application/json")
        document = reply.json()
        self.assertEqual(document["errorType"], error_type)
        self.assertIsInstance(document["errorMessage"], str)


class NextTests(RuntimeAPITestCase):
    """GET /next."""

    def test_next_headers(self) -> None:
        """next carries the event, its request id, deadline (epoch ms), ARN, trace id and client context."""
        invocation, _ = self.invoke(
            payload=b'{"hello":"world"}',
            function_arn="arn:aws:lambda:us-east-1:012345678912:function:echo",
            trace_id="Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            client_context='{"custom":{"a":"b"}}',
            cognito_identity='{"cognitoIdentityId":"id"}',
            tenant_id="tenant-1",
        )
        reply = self.next_event()
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.body, b'{"hello":"world"}')
        self.assertEqual(reply.header("content-type"), "application/json")
        self.assertEqual(reply.header("lambda-runtime-aws-request-id"), invocation.request_id)
        self.assertEqual(reply.header("lambda-runtime-deadline-ms"), "1700000003000")
        self.assertEqual(
            reply.header("lambda-runtime-invoked-function-arn"),
            "arn:aws:lambda:us-east-1:012345678912:function:echo",
        )
        self.assertEqual(
            reply.header("lambda-runtime-trace-id"),
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        )
        self.assertEqual(reply.header("lambda-runtime-client-context"), '{"custom":{"a":"b"}}')
        self.assertEqual(
            reply.header("lambda-runtime-cognito-identity"), '{"cognitoIdentityId":"id"}'
        )
        self.assertEqual(reply.header("lambda-runtime-aws-tenant-id"), "tenant-1")

    def test_next_without_optional_context(self) -> None:
        """next omits the client context, cognito and tenant headers when the caller sent none."""
        self.invoke()
        reply = self.next_event()
        self.assertIsNone(reply.header("lambda-runtime-client-context"))
        self.assertIsNone(reply.header("lambda-runtime-cognito-identity"))
        self.assertIsNone(reply.header("lambda-runtime-aws-tenant-id"))

    def test_next_waits_for_an_event(self) -> None:
        """A next with nothing to run is answered once an invocation arrives."""
        first, _ = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", response_path(first.request_id), b"1"))
        waiting = self.http.request("GET", NEXT)
        self.assertNoResult(waiting)
        second, _ = self.invoke(payload=b"second")
        self.http.flush()
        reply = self.successResultOf(waiting)
        self.assertEqual(reply.body, b"second")
        self.assertEqual(reply.header("lambda-runtime-aws-request-id"), second.request_id)

    def test_next_while_running_is_403(self) -> None:
        """next before answering the current invocation is 403 InvalidStateTransition."""
        self.invoke()
        self.next_event()
        self.assert_error(self.next_event(), 403, "InvalidStateTransition")


class AnswerTests(RuntimeAPITestCase):
    """POST /response and /error."""

    def test_response_is_accepted_and_is_the_result(self) -> None:
        """/response is 202 {"status":"OK"} and its body is the caller's result."""
        invocation, result = self.invoke()
        self.next_event()
        reply = self.call("POST", response_path(invocation.request_id), b'{"answer":42}')
        self.assert_accepted(reply)
        outcome = self.successResultOf(result)
        self.assertEqual((outcome.outcome, outcome.body), (Outcome.SUCCESS, b'{"answer":42}'))

    def test_empty_response(self) -> None:
        """An empty /response body is an empty result, not an error."""
        invocation, result = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", response_path(invocation.request_id)))
        self.assertEqual(self.successResultOf(result).body, b"")

    def test_error_body_is_passed_verbatim(self) -> None:
        """/error is 202 and the caller gets the runtime's error body byte for byte."""
        invocation, result = self.invoke()
        self.next_event()
        body = b'{"errorMessage":"boom","errorType":"ValueError","requestId":"x","stackTrace":[]}'
        reply = self.call(
            "POST",
            error_path(invocation.request_id),
            body,
            {
                "Lambda-Runtime-Function-Error-Type": "ValueError",
                "Lambda-Runtime-Function-XRay-Error-Cause": "{}",
            },
        )
        self.assert_accepted(reply)
        outcome = self.successResultOf(result)
        self.assertEqual(
            (outcome.outcome, outcome.body, outcome.error_type),
            (Outcome.FUNCTION_ERROR, body, "ValueError"),
        )

    def test_error_without_body_is_built_from_header(self) -> None:
        """/error with no body gives the caller a JSON error built from Lambda-Runtime-Function-Error-Type."""
        invocation, result = self.invoke()
        self.next_event()
        reply = self.call(
            "POST",
            error_path(invocation.request_id),
            headers={"Lambda-Runtime-Function-Error-Type": "Runtime.Crash"},
        )
        self.assert_accepted(reply)
        outcome = self.successResultOf(result)
        self.assertEqual(outcome.error_type, "Runtime.Crash")
        document = json.loads(outcome.body)
        self.assertEqual(document["errorType"], "Runtime.Crash")
        self.assertIsInstance(document["errorMessage"], str)

    def test_error_without_body_or_header(self) -> None:
        """/error with neither body nor type header still gives a JSON error document."""
        invocation, result = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", error_path(invocation.request_id)))
        document = json.loads(self.successResultOf(result).body)
        self.assertEqual(set(document), {"errorMessage", "errorType"})

    def test_unknown_request_id_is_400(self) -> None:
        """/response for an id not in flight is 400 InvalidRequestID."""
        _, result = self.invoke()
        self.next_event()
        self.assert_error(
            self.call("POST", response_path("not-an-id"), b"x"), 400, "InvalidRequestID"
        )
        self.assert_error(self.call("POST", error_path("not-an-id"), b"x"), 400, "InvalidRequestID")
        self.assertNoResult(result)

    def test_second_answer_is_403(self) -> None:
        """A second /response or /error for the same id is 403 InvalidStateTransition."""
        invocation, result = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", response_path(invocation.request_id), b"1"))
        self.assert_error(
            self.call("POST", response_path(invocation.request_id), b"2"),
            403,
            "InvalidStateTransition",
        )
        self.assert_error(
            self.call("POST", error_path(invocation.request_id), b"3"),
            403,
            "InvalidStateTransition",
        )
        self.assertEqual(self.successResultOf(result).body, b"1")

    def test_response_over_6_mb_is_413(self) -> None:
        """A /response body over 6,291,556 bytes is 413 RequestEntityTooLarge and the caller gets Function.ResponseSizeTooLarge."""
        invocation, result = self.invoke()
        self.next_event()
        too_big = b"x" * (MAX_RUNTIME_RESPONSE + 1)
        self.assert_error(
            self.call("POST", response_path(invocation.request_id), too_big),
            413,
            "RequestEntityTooLarge",
        )
        answer = self.successResultOf(result)
        self.assertEqual(answer.function_error, "Unhandled")
        self.assertEqual(json.loads(answer.body)["errorType"], "Function.ResponseSizeTooLarge")

    def test_response_of_exactly_6_mb_is_accepted(self) -> None:
        """A /response body of exactly 6,291,556 bytes is accepted and passed on whole."""
        invocation, result = self.invoke()
        self.next_event()
        just_right = b"y" * MAX_RUNTIME_RESPONSE
        self.assert_accepted(self.call("POST", response_path(invocation.request_id), just_right))
        self.assertEqual(len(self.successResultOf(result).body), MAX_RUNTIME_RESPONSE)

    def test_bad_response_mode_is_400_and_does_not_wedge(self) -> None:
        """A bad Lambda-Runtime-Function-Response-Mode is 400 and the runtime can still answer."""
        invocation, result = self.invoke()
        self.next_event()
        reply = self.call(
            "POST",
            response_path(invocation.request_id),
            b"x",
            {"Lambda-Runtime-Function-Response-Mode": "sideways"},
        )
        self.assert_error(reply, 400, "InvalidFunctionResponseMode")
        self.assertNoResult(result)
        self.assertEqual(self.environment.state, State.BUSY)
        self.assert_accepted(self.call("POST", response_path(invocation.request_id), b"fine"))
        self.assertEqual(self.successResultOf(result).body, b"fine")
        second, _ = self.invoke(payload=b"again")
        self.assertEqual(self.next_event().body, b"again")

    def test_buffered_response_mode_is_accepted(self) -> None:
        """Lambda-Runtime-Function-Response-Mode: buffered is a normal response."""
        invocation, result = self.invoke()
        self.next_event()
        self.assert_accepted(
            self.call(
                "POST",
                response_path(invocation.request_id),
                b"ok",
                {"Lambda-Runtime-Function-Response-Mode": "buffered"},
            )
        )
        self.assertEqual(self.successResultOf(result).body, b"ok")


class InitErrorTests(RuntimeAPITestCase):
    """POST /init/error."""

    def test_init_error_during_init(self) -> None:
        """/init/error before the first next is 202, and its body answers the invocation once the runtime exits."""
        _, result = self.invoke()
        body = b'{"errorMessage":"bad import","errorType":"Runtime.ImportModuleError"}'
        reply = self.call(
            "POST",
            INIT_ERROR,
            body,
            {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"},
        )
        self.assert_accepted(reply)
        self.assertNoResult(result)
        self.reactor.process(self.environment.pid).exit(1)
        outcome = self.successResultOf(result)
        self.assertEqual(
            (outcome.outcome, outcome.body, outcome.error_type),
            (Outcome.INIT_ERROR, body, "Runtime.ImportModuleError"),
        )

    def test_init_error_without_body(self) -> None:
        """/init/error with no body is built from the error type header."""
        _, result = self.invoke()
        self.assert_accepted(
            self.call(
                "POST", INIT_ERROR, headers={"Lambda-Runtime-Function-Error-Type": "Bad.Init"}
            )
        )
        self.reactor.process(self.environment.pid).exit(1)
        self.assertEqual(json.loads(self.successResultOf(result).body)["errorType"], "Bad.Init")

    def test_init_error_outside_init_is_403(self) -> None:
        """/init/error after the runtime has called next is 403 InvalidStateTransition."""
        invocation, result = self.invoke()
        self.next_event()
        self.assert_error(self.call("POST", INIT_ERROR, b"{}"), 403, "InvalidStateTransition")
        self.assertNoResult(result)
        self.assert_accepted(self.call("POST", response_path(invocation.request_id), b"ok"))


class EnvironmentWithoutPoolTests(SynchronousTestCase):
    """The environment's Runtime API with a stub owner instead of a pool."""

    def test_environment_listens_on_its_own_port(self) -> None:
        """Environment i listens on RUNTIME_API_PORT + i, on the loopback interface."""
        reactor = fake_process_reactor(self)
        config = make_config(runtime_port=9100)

        class Owner:
            def environment_ready(self, environment: ExecutionEnvironment) -> None:
                pass

            def environment_answered(self, *args: object) -> None:
                pass

            def environment_failed(self, *args: object) -> None:
                pass

            def environment_ended(self, *args: object) -> None:
                pass

            def environment_streaming(self, *args: object) -> None:
                pass

        environment = ExecutionEnvironment(3, config, Owner(), reactor, lambda data: None)
        self.successResultOf(Deferred.fromCoroutine(environment.start()))
        [(port, _, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9103, "127.0.0.1"))
        [process] = reactor.processes
        self.assertEqual(process.env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9103")
        self.assertEqual(environment.state, State.STARTING)


class HangUpTests(RuntimeAPITestCase):
    """A runtime that hangs up its GET /next."""

    def test_hung_up_next_is_not_given_an_event(self) -> None:
        """After the runtime hangs up its next, an invocation waits for its next next instead of being lost."""
        first, _ = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", response_path(first.request_id), b"1"))
        waiting = self.http.request("GET", NEXT)
        self.assertIs(self.environment.state, State.IDLE)
        waiting.cancel()
        self.http.flush()
        self.failureResultOf(waiting)
        self.assertIsNot(self.environment.state, State.IDLE)
        second, result = self.invoke(payload=b"second")
        self.assertEqual(self.pool.queued, 1)
        reply = self.next_event()
        self.assertEqual(reply.header("lambda-runtime-aws-request-id"), second.request_id)
        self.assertNoResult(result)


class RawConnectionTestCase(RuntimeAPITestCase):
    """Runtime API tests that speak raw bytes on a connection of their own."""

    def connect(self) -> tuple[Any, StringTransport]:
        """A fresh connection to the environment's Runtime API."""
        if not hasattr(self, "factory"):
            [(_, self.factory, _, _)] = self.reactor.tcpServers
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    @staticmethod
    def responses(transport: StringTransport) -> list[tuple[int, bytes]]:
        """The (status, body) of each response written so far."""
        found = []
        data = transport.value()
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            found.append((status, rest[:length]))
            data = rest[length:]
        return found


class RawHTTPTests(RawConnectionTestCase):
    """The HTTP/1.1 details of the Runtime API's own protocol, byte by byte."""

    def test_keep_alive_and_pipelining(self) -> None:
        """Requests on one connection, even sent together, are answered in order on it."""
        invocation, result = self.invoke(payload=b'{"n":1}')
        protocol, transport = self.connect()
        path = response_path(invocation.request_id).encode()
        protocol.dataReceived(
            b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\"ok\""
            b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(self.responses(transport), [(200, b'{"n":1}'), (202, b'{"status":"OK"}')])
        self.assertEqual(self.successResultOf(result).body, b'"ok"')
        self.assertFalse(transport.disconnecting)
        self.invoke(payload=b'{"n":2}')
        self.assertEqual(self.responses(transport)[-1], (200, b'{"n":2}'))

    def test_chunked_response(self) -> None:
        """A chunked (streamed) response body reaches the caller whole."""
        invocation, result = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Lambda-Runtime-Function-Response-Mode: streaming\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"6\r\n{\"a\": \r\n2\r\n1}\r\n0\r\n\r\n"
        )
        self.assertEqual(self.responses(transport)[-1], (202, b'{"status":"OK"}'))
        self.assertEqual(self.successResultOf(result).body, b'{"a": 1}')

    def test_streamed_error_trailers(self) -> None:
        """A streamed response that fails reports its error in trailers; the caller gets that error."""
        invocation, result = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        error = base64.b64encode(b'{"errorMessage":"boom","errorType":"Oops"}')
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Lambda-Runtime-Function-Response-Mode: streaming\r\n"
            b"Transfer-Encoding: chunked\r\nTrailer: Lambda-Runtime-Function-Error-Type\r\n\r\n"
            b"3\r\npar\r\n0\r\nLambda-Runtime-Function-Error-Type: Oops\r\n"
            b"Lambda-Runtime-Function-Error-Body: " + error + b"\r\n\r\n"
        )
        self.assertEqual(self.responses(transport)[-1][0], 202)
        answer = self.successResultOf(result)
        self.assertEqual(answer.function_error, "Unhandled")
        self.assertEqual(json.loads(answer.body)["errorType"], "Oops")

    def test_malformed_request_is_400_and_closes(self) -> None:
        """Bytes that are not HTTP get a 400 JSON error and the connection is closed."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00\x01 not http at all\r\n\r\n")
        [(status, body)] = self.responses(transport)
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["errorType"], "InvalidRequest")
        self.assertTrue(transport.disconnecting)

    def test_connection_close_is_honoured(self) -> None:
        """A request with Connection: close is answered, then the connection is closed."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        [(status, _)] = self.responses(transport)
        self.assertEqual(status, 404)
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_plain_and_chunked_requests_interleave(self) -> None:
        """
        Plain requests (parsed whole) and a chunked one (parsed by llhttp), in
        one read and the next, are answered in order on one connection.
        """
        first, result = self.invoke(payload=b'{"n":1}')
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST " + response_path(first.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n\"a\r\n1\r\n\"\r\n0\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(self.successResultOf(result).body, b'"a"')
        second, result = self.invoke(payload=b'{"n":2}')
        protocol.dataReceived(
            b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST " + response_path(second.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 3\r\n\r\n\"b\""
        )
        self.assertEqual(self.successResultOf(result).body, b'"b"')
        self.assertEqual(
            [status for status, _ in self.responses(transport)], [200, 202, 404, 200, 202]
        )

    def test_head_split_across_reads(self) -> None:
        """A head that arrives in two reads is served, and so is a whole request after it."""
        invocation, result = self.invoke(payload=b'"event"')
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHo")
        protocol.dataReceived(b"st: x\r\n\r\n")
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\n"
            b"Content-Length: 4\r\n\r\n"
        )
        protocol.dataReceived(b'"ok"')
        self.assertEqual(self.responses(transport), [(200, b'"event"'), (202, b'{"status":"OK"}')])
        self.assertEqual(self.successResultOf(result).body, b'"ok"')

    def test_repeated_content_length_is_400(self) -> None:
        """Two Content-Length headers are malformed framing: 400, and the connection is closed."""
        invocation, _ = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\n"
            b"Content-Length: 4\r\nContent-Length: 4\r\n\r\n\"ok\""
        )
        self.assertEqual(self.responses(transport)[-1][0], 400)
        self.assertTrue(transport.disconnecting)

    def test_nothing_is_read_after_connection_close(self) -> None:
        """What follows a request with Connection: close in the same read is not served."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual([status for status, _ in self.responses(transport)], [404])
        self.assertTrue(transport.disconnecting)

    def test_head_begun_after_a_chunked_request_is_continued(self) -> None:
        """
        A read that ends a chunked request and begins the next head: the next
        read continues that head (it is not taken for a request of its own).
        """
        first, result = self.invoke(payload=b'{"n":1}')
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(
            b"POST " + response_path(first.request_id).encode() + b" HTTP/1.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n\"a\r\n1\r\n\"\r\n0\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nX-Note: "
        )
        self.invoke(payload=b'{"n":2}')
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\n\r\n")  # X-Note's value
        self.assertEqual([status for status, _ in self.responses(transport)], [200, 202, 404])

    def test_wrong_method_is_405(self) -> None:
        """A known route with the wrong method is 405, and the connection stays usable."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.responses(transport)[0][0], 405)
        self.assertFalse(transport.disconnecting)

    def test_hang_up_while_waiting_for_an_event(self) -> None:
        """A runtime that hangs up its GET /next does not get the next event; a new GET /next does."""
        self.invoke()
        first, _ = self.connect()
        first.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        current = self.environment.current
        assert current is not None
        self.successResultOf(self.http.request("POST", response_path(current.request_id), b"1"))
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNot(self.environment.state, State.IDLE)
        _, result = self.invoke(payload=b'"later"')
        again, transport = self.connect()
        again.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.responses(transport), [(200, b'"later"')])


class LargeBodyTests(RawConnectionTestCase):
    """Bodies near and over the limit as curl sends them, and out-of-turn garbage."""

    def test_expect_100_continue_is_answered(self) -> None:
        """A request with Expect: 100-continue gets 100 Continue before its body is sent."""
        invocation, result = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        transport.clear()
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.clear()
        protocol.dataReceived(b"ok")
        self.assertEqual(self.responses(transport), [(202, b'{"status":"OK"}')])
        self.assertEqual(self.successResultOf(result).body, b"ok")

    def test_error_over_6_mb_answers_the_caller(self) -> None:
        """An /error body over the limit is 413 to the runtime and Function.ResponseSizeTooLarge to the caller."""
        invocation, result = self.invoke()
        self.next_event()
        reply = self.call("POST", error_path(invocation.request_id), b"e" * (MAX_RUNTIME_RESPONSE + 1))
        self.assertEqual(reply.code, 413)
        self.assertEqual(json.loads(self.successResultOf(result).body)["errorType"], "Function.ResponseSizeTooLarge")

    def test_garbage_while_waiting_for_an_event_hangs_up(self) -> None:
        """Malformed bytes behind a pending GET /next close the connection rather than answer out of order."""
        invocation, _ = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", response_path(invocation.request_id), b"1"))
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(b"\x00garbage\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)


class _CountingParser:
    """An httptools parser that counts the bytes it is fed."""

    fed = 0

    def __init__(self, protocol: Any) -> None:
        self._parser = _REAL_PARSER(protocol)

    def feed_data(self, data: Any) -> None:
        _CountingParser.fed += len(data)
        self._parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


_REAL_PARSER = httptools.HttpRequestParser


class HeadLimitTests(RawConnectionTestCase):
    """The request line and headers are capped at MAX_REQUEST_HEAD, in linear time."""

    def test_header_over_the_limit_is_431_and_closes(self) -> None:
        """A header that takes the head past 16 KB gets 431 with a JSON error, then the connection is closed."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * MAX_REQUEST_HEAD
            + b"\r\n\r\n"
        )
        [(status, body)] = self.responses(transport)
        self.assertEqual(status, 431)
        self.assertEqual(json.loads(body)["errorType"], "RequestHeaderFieldsTooLarge")
        self.assertTrue(transport.disconnecting)
        self.assertIsNot(self.environment.state, State.IDLE)

    def test_url_over_the_limit_is_414_and_closes(self) -> None:
        """A URL longer than the limit gets 414 with a JSON error, then the connection is closed."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /" + b"u" * MAX_REQUEST_HEAD + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        [(status, body)] = self.responses(transport)
        self.assertEqual(status, 414)
        self.assertEqual(json.loads(body)["errorType"], "RequestURITooLong")
        self.assertTrue(transport.disconnecting)

    def test_url_sent_in_pieces_is_capped(self) -> None:
        """A URL arriving a byte at a time is refused with 414 once it passes the limit."""
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /")
        for _ in range(MAX_REQUEST_HEAD + 10):
            protocol.dataReceived(b"u")
        [(status, _)] = self.responses(transport)
        self.assertEqual(status, 414)

    def test_head_just_under_the_limit_is_served(self) -> None:
        """A request whose line and headers are just under 16 KB is served as usual."""
        invocation, _ = self.invoke(payload=b'"event"')
        protocol, transport = self.connect()
        start = b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: "
        end = b"\r\n\r\n"
        protocol.dataReceived(start + b"a" * (MAX_REQUEST_HEAD - len(start) - len(end) - 1) + end)
        self.assertEqual(self.responses(transport), [(200, b'"event"')])

    def test_head_near_the_limit_is_answered_alike_whole_or_in_pieces(self) -> None:
        """A head just under the limit in compact headers gets the same answer sent whole as sent in two reads."""
        self.invoke()
        head = b"GET /nope HTTP/1.1" + b"".join(b"\r\nh%05d:b" % n for n in range(1820))
        answers = []
        for pieces in ([head + b"\r\n\r\n"], [head[:10], head[10:] + b"\r\n\r\n"]):
            protocol, transport = self.connect()
            for piece in pieces:
                protocol.dataReceived(piece)
            answers.append([status for status, _ in self.responses(transport)])
        self.assertEqual(answers[0], answers[1])

    def test_huge_header_is_not_fed_to_the_parser(self) -> None:
        """Of a 4 MB header sent in 64 KB reads, the parser is fed no more than the limit and one read."""
        self.patch(httptools, "HttpRequestParser", _CountingParser)
        _CountingParser.fed = 0
        self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(64):
            protocol.dataReceived(chunk)
        self.assertEqual(self.responses(transport)[0][0], 431)
        self.assertLessEqual(_CountingParser.fed, MAX_REQUEST_HEAD + 1)

    def test_large_body_then_pipelined_request(self) -> None:
        """A body over the head limit followed by a pipelined request in the same read is served whole."""
        invocation, result = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        body = b'"' + b"b" * (3 * MAX_REQUEST_HEAD) + b'"'
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
            + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(self.successResultOf(result).body, body)
        self.assertEqual([status for status, _ in self.responses(transport)], [200, 202, 404])


class MethodTests(RawConnectionTestCase):
    """405s say which method the route takes."""

    def test_405_carries_allow(self) -> None:
        """POST on next is 405 with Allow: GET; GET on a response path is 405 with Allow: POST."""
        invocation, _ = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.responses(transport)[0][0], 405)
        self.assertIn(b"\r\nAllow: GET\r\n", transport.value())
        transport.clear()
        protocol.dataReceived(
            b"GET " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        [(status, body)] = self.responses(transport)
        self.assertEqual(status, 405)
        self.assertEqual(json.loads(body)["errorType"], "MethodNotAllowed")
        self.assertIn(b"\r\nAllow: POST\r\n", transport.value())


class EnvironmentGoneTests(RawConnectionTestCase):
    """Requests on connections that outlive their runtime (a child it left holds them)."""

    def test_waiting_next_is_500_with_a_message_when_the_runtime_exits(self) -> None:
        """A GET next waiting when its runtime exits is answered 500 ContainerError saying why."""
        first, _ = self.invoke()
        self.next_event()
        self.assert_accepted(self.call("POST", response_path(first.request_id), b"1"))
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.reactor.process(self.environment.pid).exit(1)
        [(status, body)] = self.responses(transport)
        self.assertEqual(status, 500)
        document = json.loads(body)
        self.assertEqual(document["errorType"], "ContainerError")
        self.assertIn("exit status 1", document["errorMessage"])

    def test_late_response_after_exit_is_400(self) -> None:
        """A /response posted after the runtime exited is 400 InvalidRequestID, and breaks nothing."""
        invocation, result = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.reactor.process(self.environment.pid).exit(1)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.RUNTIME_EXIT)
        protocol.dataReceived(
            b"POST " + response_path(invocation.request_id).encode()
            + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlate"
        )
        status, body = self.responses(transport)[-1]
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["errorType"], "InvalidRequestID")
        self.assertEqual(self.flushLoggedErrors(), [])


class OutputOrderTests(RuntimeAPITestCase):
    """A runtime's log lines stay in the invocation they were written in."""

    def test_output_read_after_the_answer_is_in_its_tail(self) -> None:
        """Output written before the answer but read just after its socket is still in the tail."""
        invocation, result = self.invoke(tail_log=True)
        self.next_event()
        process = self.reactor.process(self.environment.pid)
        posted = self.http.request("POST", response_path(invocation.request_id), b'"ok"')
        # The reactor read the answer's socket before the pipe the log line was written to.
        process.write_output(b"written before the answer\n")
        self.reactor.advance(0)
        self.http.flush()
        self.assert_accepted(self.successResultOf(posted))
        tail = self.successResultOf(result).log_tail
        self.assertIn(b"written before the answer\n", tail)

    def test_answer_waits_no_longer_than_the_output(self) -> None:
        """Without output pending, the answer is given within the same reactor time."""
        invocation, result = self.invoke(tail_log=True)
        self.next_event()
        posted = self.http.request("POST", response_path(invocation.request_id), b'"ok"')
        self.reactor.advance(0)
        self.http.flush()
        self.assert_accepted(self.successResultOf(posted))
        self.assertEqual(self.successResultOf(result).body, b'"ok"')
