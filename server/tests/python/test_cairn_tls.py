#!/usr/bin/env python3
"""Talks to a secure Cairn server (TLS, authentication on) from Python with a
bearer token, through stubs generated from proto/cairn/v1/cairn.proto: proof
that a client in another language needs nothing but standard gRPC TLS and
call credentials.

Usage: python3 test_cairn_tls.py HOST:PORT CA_PEM_FILE TOKEN

Prints one line per check and a final `python tls client: N passed, M failed`;
exits non-zero when any check failed.
"""

import os
import subprocess
import sys
import tempfile
import uuid

import grpc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")
TIMEOUT = 10.0
# The dev certificate names localhost (and 127.0.0.1); verify against the name.
OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.ssl_target_name_override", "localhost")]


def generate_stubs(out_dir):
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_DIR,
        "--python_out=" + out_dir, "--grpc_python_out=" + out_dir, "cairn/v1/cairn.proto",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit("protoc failed:\n%s%s" % (result.stdout, result.stderr))
    sys.path.insert(0, out_dir)


def main():
    address, ca_file, token = sys.argv[1], sys.argv[2], sys.argv[3]
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(out_dir)
        from google.protobuf import empty_pb2
        from cairn.v1 import cairn_pb2 as pb, cairn_pb2_grpc as stubs

        with open(ca_file, "rb") as ca:
            tls = grpc.ssl_channel_credentials(root_certificates=ca.read())
        passed, failed = 0, 0

        def check(name, condition):
            nonlocal passed, failed
            print(("ok   " if condition else "FAIL ") + name)
            if condition:
                passed += 1
            else:
                failed += 1

        def code_of(call):
            try:
                call()
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

        stream = "pytls-" + uuid.uuid4().hex[:12]
        request = pb.AppendRequest(
            stream=stream,
            expected=pb.ExpectedRevision(no_stream=empty_pb2.Empty()),
            events=[pb.ProposedEvent(id=str(uuid.uuid4()), type="Tried", content_type="application/json", data=b"{}")],
        )

        # TLS without credentials: the server answers, and refuses the call.
        anonymous = grpc.secure_channel(address, tls, options=OPTIONS)
        grpc.channel_ready_future(anonymous).result(timeout=TIMEOUT)
        code = code_of(lambda: stubs.StreamsStub(anonymous).Append(request, timeout=TIMEOUT))
        check("no token: UNAUTHENTICATED (got %s)" % code, code == grpc.StatusCode.UNAUTHENTICATED)

        # A wrong token is refused too.
        wrong = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials("cairn_wrong"))
        wrong_channel = grpc.secure_channel(address, wrong, options=OPTIONS)
        code = code_of(lambda: stubs.StreamsStub(wrong_channel).Append(request, timeout=TIMEOUT))
        check("wrong token: UNAUTHENTICATED (got %s)" % code, code == grpc.StatusCode.UNAUTHENTICATED)

        # The token (sent as `authorization: Bearer ...`) over TLS.
        credentials = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
        channel = grpc.secure_channel(address, credentials, options=OPTIONS)
        streams = stubs.StreamsStub(channel)
        appended = streams.Append(request, timeout=TIMEOUT)
        check("append with the token", appended.current_revision == 0 and not appended.idempotent_replay)
        events = [e for response in streams.Read(pb.ReadRequest(stream=stream), timeout=TIMEOUT) for e in response.events]
        check("read it back", len(events) == 1 and events[0].type == "Tried")
        info = stubs.ServerStub(channel).Info(empty_pb2.Empty(), timeout=TIMEOUT)
        check("server info", info.head_position > 0)

        # Plaintext against the TLS port fails cleanly (no hang).
        plain = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        code = code_of(lambda: stubs.ServerStub(plain).Info(empty_pb2.Empty(), timeout=5.0))
        check("plaintext to the TLS port fails (got %s)" % code, code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))

        print("python tls client: %d passed, %d failed" % (passed, failed))
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
