#!/usr/bin/env python3
"""Drives a secure Cairn server's KurrentDB facade (TLS, users, ACLs) with the
real Python client `kurrentdbclient`: credentials are checked and ACLs
enforced exactly as through cairn.v1, and a denied call changes nothing.

The Rust side (tests/kurrent.rs) made the users and set the ACLs:
`guarded-py` is readable by `reader`, writable by admins only; `secret-py`
is readable by admins only.

Usage: python3 test_kurrent_tls.py HOST:PORT CA_PEM_FILE ADMIN_PASSWORD READER_PASSWORD

Prints one line per check and a final `python kurrent tls client: N passed,
M failed`; exits non-zero when any check failed.
"""

import faulthandler
import os
import sys
import traceback

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import AccessDeniedError, UnauthenticatedError

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def client_of(context, user, password):
    return KurrentDBClient(
        uri="kurrentdb://%s:%s@%s?tlsCaFile=%s" % (user, password, context["address"], context["ca"]))


def expect_error(kind, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except kind as error:
        return error
    raise AssertionError("expected %s" % kind.__name__)


@check
def the_admin_appends_and_reads_over_tls(context):
    admin = context["admin"]
    admin.append_to_stream("guarded-py", events=NewEvent(type="ByAdmin", data=b"{}"),
                           current_version=StreamState.ANY)
    assert [e.type for e in admin.get_stream("guarded-py")] == ["Kept", "ByAdmin"]
    assert [e.type for e in admin.get_stream("secret-py")] == ["Secret"]


@check
def wrong_credentials_are_unauthenticated(context):
    wrong = client_of(context, "reader", "not-the-password")
    try:
        expect_error(UnauthenticatedError, wrong.get_stream, "guarded-py")
    finally:
        wrong.close()


@check
def the_acl_lets_the_reader_read_but_not_write(context):
    reader = context["reader"]
    assert [e.type for e in reader.get_stream("guarded-py")] == ["Kept", "ByAdmin"]
    expect_error(AccessDeniedError, reader.append_to_stream, "guarded-py",
                 events=NewEvent(type="Denied", data=b"{}"), current_version=StreamState.ANY)
    expect_error(AccessDeniedError, reader.append_to_stream, "guarded-py",
                 events=[NewEvent(type="Denied", data=b"{}")] * 2, current_version=StreamState.ANY)
    expect_error(AccessDeniedError, reader.delete_stream, "guarded-py",
                 current_version=StreamState.ANY)
    # Nothing of the denied calls happened.
    assert [e.type for e in context["admin"].get_stream("guarded-py")] == ["Kept", "ByAdmin"]


@check
def streams_the_reader_may_not_read_stay_hidden(context):
    reader = context["reader"]
    expect_error(AccessDeniedError, reader.get_stream, "secret-py")
    seen = {e.stream_name for e in reader.read_all()}
    assert "guarded-py" in seen and "secret-py" not in seen, seen


def main():
    # A hang shows where it is: every thread's stack on stderr, then exit
    # (before the Rust side's 180 s limit would discard the output).
    faulthandler.dump_traceback_later(150, exit=True)
    address, ca, admin_password, reader_password = sys.argv[1:5]
    context = {"address": address, "ca": ca}
    context["admin"] = client_of(context, "admin", admin_password)
    context["reader"] = client_of(context, "reader", reader_password)
    passed = failed = 0
    for function in CHECKS:
        try:
            function(context)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print("FAIL %s\n%s" % (function.__name__, traceback.format_exc()))
        else:
            passed += 1
            print("ok   %s" % function.__name__)
    context["admin"].close()
    context["reader"].close()
    print("python kurrent tls client: %d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    # grpcio can hang closing channels from __del__ at interpreter exit
    # (seen under load): everything is closed and reported, so leave at once.
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
