"""
The Invoke API over HTTP with a fake invoker, through the same QuietSite and
BoundedRequest the daemon serves it with (treq's StubTreq cannot take them).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import botocore.parsers
import botocore.session
from botocore.awsrequest import HTTPHeaders
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lambdarapid import errors
from lambdarapid.config import Function
from lambdarapid.errors import APIError
from lambdarapid.invocation import (
    FunctionNotFound,
    IInvoker,
    Invocation,
    InvocationType,
    Outcome,
    Result,
    ServiceUnavailable,
    TooManyRequests,
)
from lambdarapid.invoke_api import InvokeAPI, split_function_name
from lambdarapid.invoke_protocol import InvokeAPIFactory

from .fakes import InMemoryHTTP, Reply

ARN = "arn:aws:lambda:us-east-1:012345678912:function:echo"


def json_string(size: int) -> bytes:
    """A JSON document (one string) of exactly C{size} bytes."""
    return b'"' + b"x" * (size - 2) + b'"'


def invocations_path(name: str, query: str = "") -> str:
    return f"/2015-03-31/functions/{name}/invocations{query}"


@implementer(IInvoker)
class FakeInvoker:
    """An invoker that records what it is asked and answers what the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Invocation]] = []
        #: What invoke / dry_run / accept_event return next (None: a success echo).
        self.answer: Deferred[Any] | None = None

    def _answer(self, kind: str, invocation: Invocation, default: Any) -> Deferred[Any]:
        self.calls.append((kind, invocation))
        answer, self.answer = self.answer, None
        return answer if answer is not None else succeed(default)

    def invoke(self, invocation: Invocation) -> Deferred[Result]:
        echo = Result(Outcome.SUCCESS, invocation.payload, invocation.request_id)
        return self._answer("invoke", invocation, echo)

    def dry_run(self, invocation: Invocation) -> Deferred[None]:
        return self._answer("dry_run", invocation, None)

    def accept_event(self, invocation: Invocation) -> Deferred[None]:
        return self._answer("accept_event", invocation, None)

    def withdraw(self, invocation: Invocation) -> bool:
        return False

    @property
    def only(self) -> tuple[str, Invocation]:
        """The one call made."""
        [call] = self.calls
        return call


class InvokeAPITestCase(SynchronousTestCase):
    """The daemon's Invoke API for a function called echo."""

    function: Function | None = Function(name="echo")
    openfaas = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.invoker = FakeInvoker()
        self.ready = True
        api = InvokeAPI(
            self.invoker,
            self.clock,
            self.function,
            openfaas=self.openfaas,
            ready=lambda: self.ready,
        )
        # As served: invoke requests on the fast connection, the rest handed to
        # the site (the hot route below Klein, the rest through the Klein app).
        self.http = InMemoryHTTP(InvokeAPIFactory(api, self.clock))

    def post(
        self,
        name: str = "function",
        body: bytes = b'{"k":"v"}',
        headers: Mapping[str, str] | None = None,
        query: str = "",
    ) -> Reply:
        return self.successResultOf(
            self.http.request("POST", invocations_path(name, query), body, headers)
        )

    def assert_invoke_error(self, reply: Reply, status: int, error_type: str) -> dict[str, Any]:
        """C{reply} is the error botocore expects; returns its JSON body."""
        self.assertEqual(reply.code, status)
        self.assertEqual(reply.header("x-amzn-errortype"), error_type)
        self.assertEqual(reply.header("content-type"), "application/json")
        document: dict[str, Any] = reply.json()
        self.assertEqual(document["Type"], "User")
        self.assertIsInstance(document["Message"], str)
        return document

    def botocore_parse(self, reply: Reply) -> dict[str, Any]:
        """What botocore's rest-json parser makes of C{reply} for Invoke."""
        model = botocore.session.get_session().get_service_model("lambda")
        operation = model.operation_model("Invoke")
        headers = HTTPHeaders()
        for name, values in reply.headers.getAllRawHeaders():
            headers[name.decode()] = values[-1].decode()
        parsed: dict[str, Any] = botocore.parsers.create_parser("rest-json").parse(
            {"status_code": reply.code, "headers": headers, "body": reply.body},
            operation.output_shape,
        )
        return parsed


class SuccessTests(InvokeAPITestCase):
    """Synchronous invocations that run."""

    def test_success(self) -> None:
        """A success is 200 with the result body, X-Amz-Executed-Version and X-Amzn-RequestId, no function error."""
        reply = self.post(body=b'{"hello":"world"}')
        kind, invocation = self.invoker.only
        self.assertEqual(kind, "invoke")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.body, b'{"hello":"world"}')
        self.assertEqual(reply.header("content-type"), "application/json")
        self.assertEqual(reply.header("x-amz-executed-version"), "$LATEST")
        self.assertEqual(reply.header("x-amzn-requestid"), invocation.request_id)
        self.assertIsNone(reply.header("x-amz-function-error"))
        self.assertIsNone(reply.header("x-amz-log-result"))

    def test_invocation_fields(self) -> None:
        """The invoker gets the payload, routed name, invoked ARN, type, arrival time and a generated trace id."""
        self.post(body=b"[1,2]")
        _, invocation = self.invoker.only
        self.assertEqual(invocation.payload, b"[1,2]")
        self.assertEqual(invocation.function_name, "echo")
        self.assertEqual(invocation.function_arn, ARN)
        self.assertIsNone(invocation.qualifier)
        self.assertEqual(invocation.invocation_type, InvocationType.REQUEST_RESPONSE)
        self.assertFalse(invocation.tail_log)
        self.assertIsNone(invocation.client_context)
        self.assertEqual(invocation.arrived, 1_700_000_000)
        assert invocation.trace_id is not None
        self.assertTrue(invocation.trace_id.startswith("Root=1-6553f100-"), invocation.trace_id)

    def test_empty_body_is_empty_object(self) -> None:
        """An invocation with no body sends the event {}."""
        self.post(body=b"")
        self.assertEqual(self.invoker.only[1].payload, b"{}")

    def test_trace_and_tenant_headers_are_passed(self) -> None:
        """X-Amzn-Trace-Id and X-Amz-Tenant-Id reach the invocation unchanged."""
        trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        self.post(headers={"X-Amzn-Trace-Id": trace, "X-Amz-Tenant-Id": "t-1"})
        _, invocation = self.invoker.only
        self.assertEqual((invocation.trace_id, invocation.tenant_id), (trace, "t-1"))

    def test_explicit_request_response(self) -> None:
        """X-Amz-Invocation-Type: RequestResponse is a synchronous invoke."""
        self.assertEqual(self.post(headers={"X-Amz-Invocation-Type": "RequestResponse"}).code, 200)
        self.assertEqual(self.invoker.only[0], "invoke")

    def test_function_error_is_unhandled(self) -> None:
        """An error outcome is 200 with X-Amz-Function-Error: Unhandled and the runtime's body."""
        body = b'{"errorMessage":"boom","errorType":"ValueError"}'
        self.invoker.answer = succeed(
            Result(Outcome.FUNCTION_ERROR, body, "rid", error_type="ValueError")
        )
        reply = self.post()
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.header("x-amz-function-error"), "Unhandled")
        self.assertEqual(reply.body, body)
        parsed = self.botocore_parse(reply)
        self.assertEqual((parsed["StatusCode"], parsed["FunctionError"]), (200, "Unhandled"))

    def test_function_error_comes_from_the_result(self) -> None:
        """X-Amz-Function-Error is the result's own function_error, not a constant."""

        class Handled(Result):
            @property
            def function_error(self) -> str | None:
                return "Handled"

        self.invoker.answer = succeed(Handled(Outcome.FUNCTION_ERROR, b"{}", "rid"))
        self.assertEqual(self.post().header("x-amz-function-error"), "Handled")

    def test_every_error_outcome_is_unhandled(self) -> None:
        """Timeout, init error and runtime exit all answer 200 with X-Amz-Function-Error: Unhandled."""
        for outcome in (Outcome.TIMEOUT, Outcome.INIT_ERROR, Outcome.RUNTIME_EXIT):
            self.invoker.answer = succeed(Result(outcome, b"{}", "rid"))
            reply = self.post()
            self.assertEqual((reply.code, reply.header("x-amz-function-error")), (200, "Unhandled"))

    def test_tail_log(self) -> None:
        """With X-Amz-Log-Type: Tail, X-Amz-Log-Result is the base64 of the result's log tail."""
        tail = b"START RequestId: r Version: $LATEST\nhello\nEND RequestId: r\n"
        self.invoker.answer = succeed(Result(Outcome.SUCCESS, b"1", "r", log_tail=tail))
        reply = self.post(headers={"X-Amz-Log-Type": "Tail"})
        self.assertTrue(self.invoker.only[1].tail_log)
        self.assertEqual(base64.b64decode(reply.header("x-amz-log-result") or ""), tail)
        self.assertEqual(self.botocore_parse(reply)["LogResult"], base64.b64encode(tail).decode())

    def test_log_type_none(self) -> None:
        """X-Amz-Log-Type: None asks for no log tail."""
        self.post(headers={"X-Amz-Log-Type": "None"})
        self.assertFalse(self.invoker.only[1].tail_log)

    def test_executed_version_comes_from_result(self) -> None:
        """X-Amz-Executed-Version is the version the result ran."""
        self.invoker.answer = succeed(Result(Outcome.SUCCESS, b"1", "r", executed_version="7"))
        reply = self.post()
        self.assertEqual(reply.header("x-amz-executed-version"), "7")
        self.assertEqual(self.botocore_parse(reply)["ExecutedVersion"], "7")

    def test_hang_up_cancels_invoker_deferred(self) -> None:
        """A caller hanging up cancels the Deferred the invoker returned (which must not stop the run)."""
        pending: Deferred[Result] = Deferred()
        cancelled: list[bool] = []

        def record(failure: Failure) -> Failure:
            cancelled.append(failure.check(CancelledError) is not None)
            return failure

        pending.addErrback(record)
        self.invoker.answer = pending
        reply = self.http.request("POST", invocations_path("function"), b"{}")
        self.assertNoResult(reply)
        reply.cancel()
        self.http.flush()
        self.failureResultOf(reply)
        self.assertEqual(cancelled, [True])


class NameTests(InvokeAPITestCase):
    """Which function names the daemon answers to."""

    def assert_routed(self, name: str, arn: str = ARN, query: str = "") -> None:
        reply = self.post(name, query=query)
        self.assertEqual(reply.code, 200, reply.body)
        _, invocation = self.invoker.calls[-1]
        self.assertEqual((invocation.function_name, invocation.function_arn), ("echo", arn))

    def test_name(self) -> None:
        """The function's own name is served."""
        self.assert_routed("echo")

    def test_rie_name(self) -> None:
        """The RIE's name 'function' is served as the function, with the function's own ARN."""
        self.assert_routed("function")

    def test_full_arn(self) -> None:
        """A full ARN of the function is served."""
        self.assert_routed(ARN)

    def test_full_arn_url_encoded(self) -> None:
        """A full ARN with its colons percent-encoded, as botocore sends it, is served."""
        self.assert_routed(ARN.replace(":", "%3A"))

    def test_full_arn_with_qualifier(self) -> None:
        """A full ARN ending in :$LATEST is served and keeps the qualifier in the invoked ARN."""
        self.assert_routed(ARN + ":$LATEST", ARN + ":$LATEST")

    def test_partial_arn(self) -> None:
        """A partial ARN (account:function:name) is served."""
        self.assert_routed("012345678912:function:echo")

    def test_name_with_qualifier(self) -> None:
        """name:$LATEST is served with the qualifier in the invoked ARN."""
        self.assert_routed("echo:$LATEST", ARN + ":$LATEST")
        self.assertEqual(self.invoker.calls[-1][1].qualifier, "$LATEST")

    def test_name_with_encoded_qualifier(self) -> None:
        """echo%3A%24LATEST (botocore's encoding of echo:$LATEST) is served."""
        self.assert_routed("echo%3A%24LATEST", ARN + ":$LATEST")

    def test_qualifier_parameter(self) -> None:
        """?Qualifier=$LATEST (also percent-encoded) is served with the qualifier in the ARN."""
        self.assert_routed("echo", ARN + ":$LATEST", "?Qualifier=$LATEST")
        self.assert_routed("echo", ARN + ":$LATEST", "?Qualifier=%24LATEST")

    def test_decides_as_function_serves(self) -> None:
        """The daemon serves exactly the names and qualifiers Function.serves takes (as the AMQP consumer decides)."""
        function = Function(name="echo", version="7")
        api = InvokeAPI(self.invoker, self.clock, function)
        http = InMemoryHTTP(InvokeAPIFactory(api, self.clock))
        for name, qualifier in (
            ("echo", None), ("echo", "$LATEST"), ("echo", "7"), ("function", "7"),
            ("echo", "8"), ("other", None), ("function", "prod"),
        ):
            query = f"?Qualifier={qualifier}" if qualifier else ""
            reply = self.successResultOf(http.request("POST", invocations_path(name, query), b"{}"))
            expected = 200 if function.serves(name, qualifier) else 404
            self.assertEqual(reply.code, expected, (name, qualifier))

    def test_other_name_is_404(self) -> None:
        """Another function name is 404 ResourceNotFoundException naming its ARN, and nothing runs."""
        reply = self.post("other")
        document = self.assert_invoke_error(reply, 404, "ResourceNotFoundException")
        self.assertEqual(
            document,
            {
                "Type": "User",
                "Message": "Function not found: arn:aws:lambda:us-east-1:012345678912:function:other",
            },
        )
        self.assertEqual(self.invoker.calls, [])
        parsed = self.botocore_parse(reply)
        self.assertEqual(parsed["Error"]["Code"], "ResourceNotFoundException")
        self.assertEqual(
            parsed["Error"]["Message"],
            "Function not found: arn:aws:lambda:us-east-1:012345678912:function:other",
        )

    def test_unknown_qualifier_is_404(self) -> None:
        """An unknown qualifier, in the name or as ?Qualifier=, is 404 naming the qualified ARN."""
        document = self.assert_invoke_error(
            self.post("echo:prod"), 404, "ResourceNotFoundException"
        )
        self.assertEqual(document["Message"], f"Function not found: {ARN}:prod")
        document = self.assert_invoke_error(
            self.post("echo", query="?Qualifier=7"), 404, "ResourceNotFoundException"
        )
        self.assertEqual(document["Message"], f"Function not found: {ARN}:7")
        self.assertEqual(self.invoker.calls, [])

    def test_other_arn_is_404(self) -> None:
        """A full ARN naming another function is 404."""
        self.assert_invoke_error(
            self.post("arn:aws:lambda:us-east-1:012345678912:function:other"),
            404,
            "ResourceNotFoundException",
        )

    def test_conflicting_qualifiers_are_400(self) -> None:
        """A qualifier in the name that differs from ?Qualifier= is 400 InvalidParameterValueException."""
        self.assert_invoke_error(
            self.post("echo:$LATEST", query="?Qualifier=prod"),
            400,
            "InvalidParameterValueException",
        )

    def test_invoker_function_not_found_is_404(self) -> None:
        """FunctionNotFound from the invoker is 404 ResourceNotFoundException."""
        self.invoker.answer = fail(FunctionNotFound(ARN))
        document = self.assert_invoke_error(self.post(), 404, "ResourceNotFoundException")
        self.assertEqual(document["Message"], f"Function not found: {ARN}")


class SplitFunctionNameTests(SynchronousTestCase):
    """split_function_name on its own."""

    def test_forms(self) -> None:
        """Each accepted form gives the name and qualifier."""
        cases = {
            "echo": ("echo", None),
            "echo:1": ("echo", "1"),
            ARN: ("echo", None),
            ARN + ":prod": ("echo", "prod"),
            "012345678912:function:echo": ("echo", None),
            "012345678912:function:echo:prod": ("echo", "prod"),
        }
        for raw, expected in cases.items():
            self.assertEqual(split_function_name(raw, None), expected, raw)

    def test_qualifier_argument(self) -> None:
        """A separate qualifier applies when the name has none, and must match when it has one."""
        self.assertEqual(split_function_name("echo", "prod"), ("echo", "prod"))
        self.assertEqual(split_function_name("echo:prod", "prod"), ("echo", "prod"))
        error = self.assertRaises(APIError, split_function_name, "echo:prod", "1")
        self.assertEqual((error.status, error.error_type), (400, "InvalidParameterValueException"))

    def test_malformed(self) -> None:
        """Empty names and ARN-like strings of the wrong shape are 400."""
        for raw in (
            "",
            ":prod",
            "a:b:c",
            "arn:aws:lambda:us-east-1:012345678912:layer:x",
            "a:b:c:d:e",
        ):
            error = self.assertRaises(APIError, split_function_name, raw, None)
            self.assertEqual(error.status, 400, raw)


class InvalidNameTests(InvokeAPITestCase):
    """Names and qualifiers AWS would refuse."""

    def test_invalid_names_are_400(self) -> None:
        """An over-long name, odd characters or a bad qualifier are 400 InvalidParameterValueException."""
        for name, query in (("x" * 65, ""), ("a%20b", ""), ("echo", "?Qualifier=a%2Fb")):
            reply = self.post(name, query=query)
            self.assert_invoke_error(reply, 400, "InvalidParameterValueException")
        self.assertEqual(self.invoker.calls, [])


class ServerModeTests(InvokeAPITestCase):
    """The Lambda Server's Invoke API: no function of its own."""

    function = None

    def test_any_name_is_passed_on(self) -> None:
        """Without a function, every name goes to the invoker, with an ARN in the server's region."""
        self.post("anything:prod")
        _, invocation = self.invoker.only
        self.assertEqual(invocation.function_name, "anything")
        self.assertEqual(invocation.qualifier, "prod")
        self.assertEqual(
            invocation.function_arn, "arn:aws:lambda:us-east-1:012345678912:function:anything:prod"
        )


class LimitTests(InvokeAPITestCase):
    """Payload sizes."""

    def test_sync_payload_limit(self) -> None:
        """A synchronous payload of 6,291,456 bytes runs; one byte more is 413 RequestTooLargeException."""
        self.assertEqual(self.post(body=json_string(errors.MAX_SYNC_PAYLOAD)).code, 200)
        self.assertEqual(len(self.invoker.only[1].payload), errors.MAX_SYNC_PAYLOAD)
        reply = self.post(body=json_string(errors.MAX_SYNC_PAYLOAD + 1))
        self.assert_invoke_error(reply, 413, "RequestTooLargeException")
        self.assertEqual(len(self.invoker.calls), 1)
        self.assertEqual(self.botocore_parse(reply)["Error"]["Code"], "RequestTooLargeException")

    def test_event_payload_limit(self) -> None:
        """An Event payload of 1 MB is accepted; one byte more is 413."""
        event = {"X-Amz-Invocation-Type": "Event"}
        reply = self.post(body=json_string(errors.MAX_ASYNC_PAYLOAD), headers=event)
        self.assertEqual(reply.code, 202)
        reply = self.post(body=json_string(errors.MAX_ASYNC_PAYLOAD + 1), headers=event)
        self.assert_invoke_error(reply, 413, "RequestTooLargeException")
        self.assertEqual(len(self.invoker.calls), 1)


class InvalidJSONTests(InvokeAPITestCase):
    """Payloads that are not JSON, refused as AWS refuses them."""

    def test_invalid_json_is_400(self) -> None:
        """A payload that is not JSON is 400 InvalidRequestContentException, for every invocation type, and nothing runs."""
        for kind in ("RequestResponse", "Event", "DryRun"):
            for body in (b"not json", b'{"a":', b"\xff\xfe", b"[1,]"):
                reply = self.post(body=body, headers={"X-Amz-Invocation-Type": kind})
                document = self.assert_invoke_error(reply, 400, "InvalidRequestContentException")
                self.assertTrue(
                    document["Message"].startswith("Could not parse request body into json: "),
                    document,
                )
        self.assertEqual(self.invoker.calls, [])
        parsed = self.botocore_parse(self.post(body=b"nope"))
        self.assertEqual(parsed["Error"]["Code"], "InvalidRequestContentException")

    def test_any_json_value_runs(self) -> None:
        """Any JSON value (not only objects) is an event, passed byte for byte."""
        for body in (b'"a string"', b"42", b"null", b" [1, 2] ", b'{"nested": {"k": [true]}}'):
            self.assertEqual(self.post(body=body).code, 200)
            self.assertEqual(self.invoker.calls[-1][1].payload, body)


class ServerInvalidJSONTests(InvalidJSONTests):
    """The Lambda Server's Invoke API refuses them the same way, before publishing anything."""

    function = None


class ClientContextTests(InvokeAPITestCase):
    """X-Amz-Client-Context."""

    def context(self, document: bytes) -> str:
        return base64.b64encode(document).decode()

    def test_client_context_is_decoded(self) -> None:
        """The invoker gets the decoded JSON of the base64 client context."""
        document = b'{"custom":{"k":"v"},"env":{"platform":"test"}}'
        reply = self.post(headers={"X-Amz-Client-Context": self.context(document)})
        self.assertEqual(reply.code, 200)
        self.assertEqual(self.invoker.only[1].client_context, document.decode())

    def test_client_context_becomes_one_line(self) -> None:
        """A pretty-printed or non-ASCII client context reaches the runtime as one compact ASCII line."""
        document = '{\n  "custom": {"name": "Zoë",\r\n "k": 1}\n}'.encode()
        reply = self.post(headers={"X-Amz-Client-Context": self.context(document)})
        self.assertEqual(reply.code, 200)
        self.assertEqual(
            self.invoker.only[1].client_context, '{"custom":{"name":"Zo\\u00eb","k":1}}'
        )

    def test_deeply_nested_client_context_is_400(self) -> None:
        """A client context nested too deep to parse is 400 InvalidRequestContentException, not 500."""
        document = b'{"a":' + b"[" * 1300 + b"]" * 1300 + b"}"
        reply = self.post(headers={"X-Amz-Client-Context": self.context(document)})
        self.assert_invoke_error(reply, 400, "InvalidRequestContentException")

    def test_longest_client_context(self) -> None:
        """A client context of 3,580 base64 bytes (the longest under 3,583) is accepted."""
        header = self.context(b'{"k":"' + b"v" * 2677 + b'"}')
        self.assertEqual(len(header), 3580)
        self.assertEqual(self.post(headers={"X-Amz-Client-Context": header}).code, 200)

    def test_bad_client_contexts_are_400(self) -> None:
        """A client context that is not base64, not a JSON object, or too long is 400 InvalidRequestContentException."""
        bad = [
            "not base64!",
            self.context(b"not json"),
            self.context(b"[1, 2]"),
            self.context(b'"a string"'),
            self.context(b"\xff\xfe"),
            self.context(b'{"k":"' + b"v" * 2680 + b'"}'),
        ]
        self.assertEqual(len(bad[-1]), 3584)
        for header in bad:
            reply = self.post(headers={"X-Amz-Client-Context": header})
            self.assert_invoke_error(reply, 400, "InvalidRequestContentException")
        self.assertEqual(self.invoker.calls, [])


class HeaderTests(InvokeAPITestCase):
    """Invocation and log type headers."""

    def test_bad_invocation_type_is_400(self) -> None:
        """An unknown X-Amz-Invocation-Type is 400 InvalidRequestContentException."""
        reply = self.post(headers={"X-Amz-Invocation-Type": "Sometime"})
        self.assert_invoke_error(reply, 400, "InvalidRequestContentException")
        self.assertEqual(self.invoker.calls, [])

    def test_bad_log_type_is_400(self) -> None:
        """An unknown X-Amz-Log-Type is 400 InvalidRequestContentException."""
        reply = self.post(headers={"X-Amz-Log-Type": "Full"})
        self.assert_invoke_error(reply, 400, "InvalidRequestContentException")
        self.assertEqual(self.invoker.calls, [])


class AsyncTests(InvokeAPITestCase):
    """Event and DryRun."""

    def test_event_is_202(self) -> None:
        """An Event invocation is 202 with an empty body, once the invoker accepted it."""
        pending: Deferred[None] = Deferred()
        self.invoker.answer = pending
        reply = self.http.request(
            "POST", invocations_path("function"), b"{}", {"X-Amz-Invocation-Type": "Event"}
        )
        self.assertNoResult(reply)
        pending.callback(None)
        self.http.flush()
        response = self.successResultOf(reply)
        kind, invocation = self.invoker.only
        self.assertEqual((kind, invocation.invocation_type), ("accept_event", InvocationType.EVENT))
        self.assertEqual((response.code, response.body), (202, b""))
        self.assertEqual(response.header("x-amzn-requestid"), invocation.request_id)
        self.assertEqual(self.botocore_parse(response)["StatusCode"], 202)

    def test_dry_run_is_204(self) -> None:
        """A DryRun invocation is 204 with an empty body and runs nothing."""
        reply = self.post(headers={"X-Amz-Invocation-Type": "DryRun"})
        kind, invocation = self.invoker.only
        self.assertEqual((kind, invocation.invocation_type), ("dry_run", InvocationType.DRY_RUN))
        self.assertEqual((reply.code, reply.body), (204, b""))

    def test_dry_run_of_other_function_is_404(self) -> None:
        """DryRun for another function is 404, like a real invocation."""
        reply = self.post("other", headers={"X-Amz-Invocation-Type": "DryRun"})
        self.assert_invoke_error(reply, 404, "ResourceNotFoundException")


class InvokeErrorTests(InvokeAPITestCase):
    """What the invoker's failures become."""

    def test_too_many_requests_is_429(self) -> None:
        """TooManyRequests is 429 TooManyRequestsException with Retry-After and a Reason."""
        self.invoker.answer = fail(TooManyRequests("full"))
        reply = self.post()
        document = self.assert_invoke_error(reply, 429, "TooManyRequestsException")
        self.assertEqual(document["Reason"], "ReservedFunctionConcurrentInvocationLimitExceeded")
        self.assertTrue((reply.header("retry-after") or "").isdigit())
        self.assertEqual(self.botocore_parse(reply)["Error"]["Code"], "TooManyRequestsException")

    def test_too_many_events_is_429(self) -> None:
        """An Event refused by a full queue is 429 too."""
        self.invoker.answer = fail(TooManyRequests("full"))
        reply = self.post(headers={"X-Amz-Invocation-Type": "Event"})
        self.assert_invoke_error(reply, 429, "TooManyRequestsException")

    def test_service_unavailable_is_503(self) -> None:
        """ServiceUnavailable is 503 ServiceException with Retry-After."""
        self.invoker.answer = fail(ServiceUnavailable("shutting down"))
        reply = self.post()
        self.assert_invoke_error(reply, 503, "ServiceException")
        self.assertIsNotNone(reply.header("retry-after"))

    def test_unexpected_error_is_an_invoke_api_500(self) -> None:
        """An invoker's unexpected exception is logged and answered 500 ServiceException in the Invoke API's shape."""
        self.invoker.answer = fail(RuntimeError("a bug"))
        reply = self.post()
        self.assertEqual(reply.code, 500)
        self.assertEqual(reply.header("x-amzn-errortype"), "ServiceException")
        self.assertEqual(reply.header("content-type"), "application/json")
        document = reply.json()
        self.assertEqual(document["Type"], "Service")
        self.assertIsInstance(document["Message"], str)
        self.assertEqual(self.botocore_parse(reply)["Error"]["Code"], "ServiceException")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_dry_run_while_stopping_is_503(self) -> None:
        """A DryRun refused because the daemon is stopping is 503."""
        self.invoker.answer = fail(ServiceUnavailable("shutting down"))
        reply = self.post(headers={"X-Amz-Invocation-Type": "DryRun"})
        self.assert_invoke_error(reply, 503, "ServiceException")


class FakeInvokerTests(SynchronousTestCase):
    """The fake itself."""

    def test_provides_iinvoker(self) -> None:
        """FakeInvoker provides IInvoker, so the tests exercise the real seam."""
        self.assertTrue(verifyObject(IInvoker, FakeInvoker()))


class OpenFaaSTests(InvokeAPITestCase):
    """The OpenFaaS watchdog routes, with ENABLE_OPENFAAS=true."""

    openfaas = True

    def test_root_invokes_with_the_body_as_event(self) -> None:
        """Any method on / invokes the function with the body as the event; 200 with the result."""
        for method in ("POST", "PUT"):
            reply = self.successResultOf(self.http.request(method, "/", b'{"of": 1}'))
            self.assertEqual((reply.code, reply.body), (200, b'{"of": 1}'))
        kind, invocation = self.invoker.calls[-1]
        self.assertEqual(kind, "invoke")
        self.assertEqual(invocation.function_arn, "arn:aws:lambda:us-east-1:012345678912:function:echo")

    def test_function_error_is_500(self) -> None:
        """A function error through / is a 500 carrying the error document."""
        self.invoker.answer = succeed(
            Result(Outcome.FUNCTION_ERROR, b'{"errorType": "Oops"}', "id")
        )
        reply = self.successResultOf(self.http.request("POST", "/", b"{}"))
        self.assertEqual((reply.code, reply.body), (500, b'{"errorType": "Oops"}'))
        self.assertEqual(reply.header("x-amz-function-error"), "Unhandled")

    def test_health_and_ready_follow_readiness(self) -> None:
        """/_/health and /_/ready answer 200 while the daemon can serve, 503 while it cannot."""
        for path in ("/_/health", "/_/ready"):
            self.ready = True
            self.assertEqual(self.successResultOf(self.http.request("GET", path)).code, 200)
            self.ready = False
            self.assertEqual(self.successResultOf(self.http.request("GET", path)).code, 503)


    def test_root_passes_any_body(self) -> None:
        """/ passes a body that is not JSON to the function unchanged, as the watchdog does."""
        reply = self.successResultOf(self.http.request("POST", "/", b"plain text, not JSON"))
        self.assertEqual((reply.code, reply.body), (200, b"plain text, not JSON"))

    def test_wrong_method_on_health_is_405_with_allow(self) -> None:
        """POST /_/health is 405 with Allow listing GET (and HEAD)."""
        reply = self.successResultOf(self.http.request("POST", "/_/health", b"{}"))
        self.assertEqual(reply.code, 405)
        self.assertEqual(reply.header("x-amzn-errortype"), "UnknownOperationException")
        self.assertIn("GET", (reply.header("allow") or "").split(", "))


class OpenFaaSOffTests(InvokeAPITestCase):
    """Without ENABLE_OPENFAAS the watchdog routes do not exist."""

    def test_watchdog_routes_are_404(self) -> None:
        """/, /_/health and /_/ready are 404 and nothing is invoked."""
        for method, path in (("POST", "/"), ("GET", "/_/health"), ("GET", "/_/ready")):
            self.assertEqual(self.successResultOf(self.http.request(method, path, b"{}")).code, 404)
        self.assertEqual(self.invoker.calls, [])


class UnknownOperationTests(InvokeAPITestCase):
    """Requests that are no Invoke API operation."""

    def test_unknown_path_and_method_are_json(self) -> None:
        """An unknown path is 404 and a GET on the invocations path 405, both AWS-shaped JSON."""
        for method, path, status in (
            ("GET", "/nothing", 404),
            ("GET", invocations_path("echo"), 405),
        ):
            reply = self.successResultOf(self.http.request(method, path))
            self.assertEqual(reply.code, status)
            self.assertEqual(reply.header("x-amzn-errortype"), "UnknownOperationException")
            self.assertEqual(reply.json(), {"message": "Unknown operation"})
        self.assertEqual(self.invoker.calls, [])

    def test_wrong_method_on_invocations_is_405_with_allow(self) -> None:
        """Every other method on the invocations path is 405 with Allow: POST."""
        for method in ("GET", "PUT", "DELETE"):
            reply = self.successResultOf(self.http.request(method, invocations_path("echo")))
            self.assertEqual(reply.code, 405, method)
            self.assertEqual(reply.header("allow"), "POST")
            self.assertEqual(reply.header("x-amzn-errortype"), "UnknownOperationException")
        self.assertEqual(self.invoker.calls, [])
