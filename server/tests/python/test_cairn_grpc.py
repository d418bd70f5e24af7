#!/usr/bin/env python3
"""Talks to a running Cairn server from Python through stubs generated from
proto/cairn/v1/cairn.proto, to prove the protocol works for a client that is not
the Rust crate.

Usage: python3 test_cairn_grpc.py HOST:PORT

Needs grpcio, grpcio-tools and grpcio-reflection (`.ci/run` installs them). The
stubs are generated into a temporary directory on every run, so they always
match the .proto in this checkout. Prints one line per check and a final
`python client: N passed, M failed`; exits non-zero when any check failed.
"""

import os
import subprocess
import sys
import tempfile
import traceback
import uuid

import grpc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")
TIMEOUT = 10.0


def generate_stubs(out_dir):
    """Runs grpc_tools' bundled protoc; its own include path has google/protobuf/*."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        PROTO_DIR,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        "cairn/v1/cairn.proto",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit("protoc failed (exit %d):\n%s%s" % (result.returncode, result.stdout, result.stderr))
    sys.path.insert(0, out_dir)


class Checks:
    def __init__(self, address):
        from google.protobuf import empty_pb2

        from cairn.v1 import cairn_pb2, cairn_pb2_grpc

        self.pb = cairn_pb2
        self.empty = empty_pb2.Empty
        # Never route the loopback connection through an HTTP proxy from the
        # environment.
        self.channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)
        self.streams = cairn_pb2_grpc.StreamsStub(self.channel)
        self.server = cairn_pb2_grpc.ServerStub(self.channel)
        # Unique names so the script can run against a server that has data.
        self.suffix = uuid.uuid4().hex[:12]
        self.order = "pyorder-" + self.suffix
        self.appended = []  # (id, stream, revision, position) acknowledged so far

    # -- helpers ---------------------------------------------------------------

    def event(self, event_type, data, event_id=None):
        return self.pb.ProposedEvent(
            id=event_id or str(uuid.uuid4()),
            type=event_type,
            content_type="application/json",
            metadata=b'{"source":"python"}',
            data=data,
        )

    def no_stream(self):
        return self.pb.ExpectedRevision(no_stream=self.empty())

    def exact(self, revision):
        return self.pb.ExpectedRevision(exact=revision)

    def read(self, stream, **fields):
        events = []
        for response in self.streams.Read(self.pb.ReadRequest(stream=stream, **fields), timeout=TIMEOUT):
            events.extend(response.events)
        return events

    def record(self, stream, events, response):
        expect(response.HasField("first_position") and response.HasField("last_position"), "positions are set")
        expect(
            response.last_position - response.first_position == len(events) - 1,
            "positions span the events: %s" % response,
        )
        first_revision = response.current_revision - (len(events) - 1)
        for offset, event in enumerate(events):
            self.appended.append((event.id, stream, first_revision + offset, response.first_position + offset))

    # -- checks (run in order; later ones use what earlier ones wrote) -----------

    def check_append_no_stream_and_idempotent_retry(self):
        events = [self.event("OrderPlaced", b'{"n":%d}' % n) for n in range(3)]
        request = self.pb.AppendRequest(stream=self.order, expected=self.no_stream(), events=events)
        first = self.streams.Append(request, timeout=TIMEOUT)
        expect(first.HasField("current_revision") and first.current_revision == 2, "current revision 2: %s" % first)
        expect(not first.idempotent_replay, "first append is not a replay")
        self.record(self.order, events, first)
        retry = self.streams.Append(request, timeout=TIMEOUT)
        expect(retry.idempotent_replay, "the identical retry is an idempotent replay: %s" % retry)
        expect(
            (retry.current_revision, retry.first_position, retry.last_position)
            == (first.current_revision, first.first_position, first.last_position),
            "the retry returns the original result: %s vs %s" % (retry, first),
        )

    def check_append_multi(self):
        payment = "pypayment-" + self.suffix
        order_events = [self.event("OrderPaid", b'{"paid":true}')]
        payment_events = [self.event("PaymentTaken", b'{"amount":12}'), self.event("PaymentSettled", b"{}")]
        request = self.pb.AppendMultiRequest(
            parts=[
                self.pb.AppendRequest(stream=self.order, expected=self.exact(2), events=order_events),
                self.pb.AppendRequest(stream=payment, expected=self.no_stream(), events=payment_events),
            ]
        )
        response = self.streams.AppendMulti(request, timeout=TIMEOUT)
        expect(len(response.results) == 2, "one result per part: %s" % response)
        expect(response.results[0].current_revision == 3, "order now at revision 3")
        expect(response.results[1].current_revision == 1, "payment now at revision 1")
        self.record(self.order, order_events, response.results[0])
        self.record(payment, payment_events, response.results[1])
        # Atomic: a failing part writes nothing, not even the parts that would pass.
        failing = self.pb.AppendMultiRequest(
            parts=[
                self.pb.AppendRequest(
                    stream="pyother-" + self.suffix, expected=self.no_stream(), events=[self.event("X", b"{}")]
                ),
                self.pb.AppendRequest(stream=payment, expected=self.no_stream(), events=[self.event("Y", b"{}")]),
            ]
        )
        code = rpc_error_code(lambda: self.streams.AppendMulti(failing, timeout=TIMEOUT))
        expect(code == grpc.StatusCode.FAILED_PRECONDITION, "failing part: FAILED_PRECONDITION, got %s" % code)
        code = rpc_error_code(lambda: self.read("pyother-" + self.suffix))
        expect(code == grpc.StatusCode.NOT_FOUND, "the passing part was not written: read gave %s" % code)

    def check_read_stream(self):
        events = self.read(self.order)
        mine = [entry for entry in self.appended if entry[1] == self.order]
        read = [(e.id, e.stream, e.revision, e.position) for e in events]
        expect(read == mine, "stream read returns exactly what was acknowledged:\n  %s\n  %s" % (read, mine))
        expect([e.type for e in events] == ["OrderPlaced"] * 3 + ["OrderPaid"], "event types survive")
        expect(events[1].data == b'{"n":1}', "data survives: %r" % events[1].data)
        expect(events[0].metadata == b'{"source":"python"}', "metadata survives")
        expect(events[0].content_type == "application/json", "content type survives")
        expect(events[0].created.seconds > 0, "created is set")
        backwards = self.read(self.order, direction=self.pb.BACKWARDS, max_count=2)
        expect([e.revision for e in backwards] == [3, 2], "backwards, 2 events: %s" % [e.revision for e in backwards])

    def check_read_all(self):
        events = self.read("$all")
        positions = [e.position for e in events]
        expect(positions == list(range(len(positions))), "$all is gap-free from 0")
        by_id = {e.id: (e.id, e.stream, e.revision, e.position) for e in events}
        for entry in self.appended:
            expect(by_id.get(entry[0]) == entry, "$all holds %s, found %s" % (entry, by_id.get(entry[0])))
        category = self.read("$ce-pyorder", filter=self.pb.ReadFilter(stream_prefixes=[self.order]))
        expect(len(category) == 4, "category read with a filter: %d events" % len(category))

    def check_wrong_expected_revision(self):
        request = self.pb.AppendRequest(stream=self.order, expected=self.exact(0), events=[self.event("Late", b"{}")])
        try:
            self.streams.Append(request, timeout=TIMEOUT)
        except grpc.RpcError as error:
            expect(error.code() == grpc.StatusCode.FAILED_PRECONDITION, "code: %s" % error.code())
            details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
            # google.rpc.Status with an ErrorInfo(reason, domain "cairn"); checked as
            # bytes so the script needs no googleapis package.
            expect(b"WRONG_EXPECTED_REVISION" in details, "ErrorInfo reason in the status details: %r" % details)
            expect(b"cairn" in details, "ErrorInfo domain in the status details")
            expect("3" in error.details(), "the message names the current revision: %r" % error.details())
        else:
            fail("appending at revision 0 to a stream at revision 3 succeeded")
        expect(len(self.read(self.order)) == 4, "nothing was written")

    def check_invalid_arguments(self):
        cases = {
            "malformed id": self.pb.AppendRequest(
                stream=self.order, expected=self.exact(3), events=[self.event("Bad", b"{}", event_id="not-a-uuid")]
            ),
            "missing expectation": self.pb.AppendRequest(stream=self.order, events=[self.event("Bad", b"{}")]),
            "reserved stream": self.pb.AppendRequest(
                stream="$all", expected=self.pb.ExpectedRevision(any=self.empty()), events=[self.event("Bad", b"{}")]
            ),
            "missing type": self.pb.AppendRequest(
                stream=self.order, expected=self.exact(3), events=[self.pb.ProposedEvent(id=str(uuid.uuid4()))]
            ),
        }
        for name, request in cases.items():
            code = rpc_error_code(lambda: self.streams.Append(request, timeout=TIMEOUT))
            expect(code == grpc.StatusCode.INVALID_ARGUMENT, "%s: INVALID_ARGUMENT, got %s" % (name, code))
        expect(len(self.read(self.order)) == 4, "nothing was written")

    def check_server_info(self):
        info = self.server.Info(self.empty(), timeout=TIMEOUT)
        expect(info.version != "", "version is set")
        highest = max(entry[3] for entry in self.appended)
        expect(info.head_position >= highest + 1, "head %d is past %d" % (info.head_position, highest))
        expect(info.event_count >= len(self.appended), "event count %d" % info.event_count)
        expect(info.stream_count >= 2, "stream count %d" % info.stream_count)
        expect(info.max_append_bytes > 0 and info.max_read_page > 0, "limits are reported")
        expect(info.durability in ("sync", "unsynced"), "durability: %r" % info.durability)

    def check_reflection(self):
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        database = ProtoReflectionDescriptorDatabase(self.channel)
        services = set(database.get_services())
        for service in ("cairn.v1.Streams", "cairn.v1.Server", "grpc.health.v1.Health"):
            expect(service in services, "%s is listed: %s" % (service, sorted(services)))
        file = database.FindFileContainingSymbol("cairn.v1.Streams")
        expect(file.package == "cairn.v1", "package: %r" % file.package)
        methods = {m.name for s in file.service if s.name == "Streams" for m in s.method}
        expect({"Append", "AppendMulti", "Read"} <= methods, "Streams methods: %s" % sorted(methods))


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def fail(message):
    raise CheckFailed(message)


def rpc_error_code(call):
    """The status code `call` fails with; None when it succeeds."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as error:
        return error.code()
    return None


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: %s HOST:PORT" % sys.argv[0])
    with tempfile.TemporaryDirectory(prefix="cairn-py-") as out_dir:
        generate_stubs(out_dir)
        checks = Checks(sys.argv[1])
        names = [name for name in vars(Checks) if name.startswith("check_")]
        passed = failed = 0
        for name in names:
            try:
                getattr(checks, name)()
            except CheckFailed as error:
                failed += 1
                print("FAIL %s: %s" % (name, error))
            except Exception:  # an unexpected RpcError or bug: report, go on
                failed += 1
                print("FAIL %s:\n%s" % (name, traceback.format_exc()))
            else:
                passed += 1
                print("ok   %s" % name)
        checks.channel.close()
    print("python client: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
