#!/usr/bin/env python3
"""Drives Cairn's KurrentDB-compatible facade with the real Python client
`kurrentdbclient` (PyPI), unchanged: appends with every expected-version
form, idempotent retries, reads of a stream and of $all both ways with
filters, catch-up subscriptions (checkpoints, caught-up), delete and
tombstone, stream metadata through $$streams, $ce- reads and gossip.

Usage: python3 test_kurrent.py CONNECTION_STRING

Prints one line per check and a final `python kurrent client: N passed, M
failed`; exits non-zero when any check failed.
"""

import faulthandler
import os
import sys
import traceback
import uuid

from kurrentdbclient import (
    CaughtUp,
    Checkpoint,
    KurrentDBClient,
    NewEvent,
    RecordedEvent,
    StreamState,
)
from kurrentdbclient.exceptions import (
    FailedPreconditionError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

TIMEOUT = 10.0
CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def event(kind="Happened", body=b'{"n": 1}', **kwargs):
    return NewEvent(type=kind, data=body, **kwargs)


def expect_error(kind, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except kind as error:
        return error
    raise AssertionError("expected %s" % kind.__name__)


@check
def appends_take_every_expected_version_form(client):
    stream = unique("order")
    first = client.append_to_stream(stream, events=event(), current_version=StreamState.NO_STREAM)
    assert first > 0, first
    assert client.get_current_version(stream) == 0
    # A list of events goes through BatchAppend.
    second = client.append_to_stream(stream, events=[event(), event()], current_version=0)
    assert second > first, (first, second)
    assert client.get_current_version(stream) == 2
    client.append_to_stream(stream, events=event(), current_version=StreamState.EXISTS)
    client.append_to_stream(stream, events=event(), current_version=StreamState.ANY)
    assert client.get_current_version(stream) == 4
    # The append returns the last event's commit position.
    last = client.read_all(backwards=True, limit=1, filter_exclude=())
    last = list(last)[0]
    assert last.stream_name == stream and last.stream_position == 4, last


@check
def wrong_expected_versions_raise_the_client_error(client):
    stream = unique("wev")
    client.append_to_stream(stream, events=event(), current_version=StreamState.NO_STREAM)
    for version in (StreamState.NO_STREAM, 7):
        error = expect_error(WrongCurrentVersionError, client.append_to_stream, stream,
                             events=event(), current_version=version)
        assert error.actual_version == 0, error.actual_version
        # The same through BatchAppend.
        error = expect_error(WrongCurrentVersionError, client.append_to_stream, stream,
                             events=[event(), event()], current_version=version)
        assert error.actual_version == 0, error.actual_version
    other = unique("wev")
    error = expect_error(WrongCurrentVersionError, client.append_to_stream, other,
                         events=event(), current_version=StreamState.EXISTS)
    assert error.actual_version == StreamState.NO_STREAM, error.actual_version
    assert client.get_current_version(other) == StreamState.NO_STREAM


@check
def an_identical_retry_is_idempotent(client):
    stream = unique("idem")
    events = [event(id=uuid.uuid4()), event(id=uuid.uuid4())]
    first = client.append_to_stream(stream, events=events, current_version=StreamState.NO_STREAM)
    again = client.append_to_stream(stream, events=events, current_version=StreamState.NO_STREAM)
    assert first == again, (first, again)
    single = event(id=uuid.uuid4())
    one = client.append_to_stream(stream, events=single, current_version=1)
    two = client.append_to_stream(stream, events=single, current_version=1)
    assert one == two, (one, two)
    assert len(client.get_stream(stream)) == 3


@check
def streams_read_both_ways_from_any_revision(client):
    stream = unique("read")
    ids = [uuid.uuid4() for _ in range(5)]
    client.append_to_stream(
        stream,
        events=[event("Numbered", b'{"i": %d}' % i, id=ids[i], metadata=b'{"m": %d}' % i)
                for i in range(5)],
        current_version=StreamState.NO_STREAM,
    )
    forwards = client.get_stream(stream)
    assert [e.id for e in forwards] == ids
    assert [e.stream_position for e in forwards] == [0, 1, 2, 3, 4]
    assert forwards[2].data == b'{"i": 2}' and forwards[2].metadata == b'{"m": 2}'
    assert forwards[0].type == "Numbered" and forwards[0].content_type == "application/json"
    assert forwards[0].recorded_at is not None
    assert forwards[0].commit_position > 0
    assert forwards[0].commit_position < forwards[1].commit_position
    backwards = client.get_stream(stream, backwards=True)
    assert [e.id for e in backwards] == list(reversed(ids))
    assert [e.stream_position for e in client.get_stream(stream, stream_position=2)] == [2, 3, 4]
    assert [e.stream_position for e in client.get_stream(stream, stream_position=2, backwards=True)] == [2, 1, 0]
    assert [e.stream_position for e in client.get_stream(stream, limit=2)] == [0, 1]
    expect_error(NotFoundError, client.get_stream, unique("missing"))


@check
def all_reads_both_ways_with_filters(client):
    kind = "Filtered" + uuid.uuid4().hex[:8]
    prefix = unique("flt")
    positions = []
    for i in range(3):
        positions.append(client.append_to_stream(
            "%s-%d" % (prefix, i), events=event(kind), current_version=StreamState.NO_STREAM))
    by_type = list(client.read_all(filter_include=[kind]))
    assert [e.commit_position for e in by_type] == positions, (by_type, positions)
    assert all(e.type == kind for e in by_type)
    backwards = list(client.read_all(filter_include=[kind], backwards=True))
    assert [e.commit_position for e in backwards] == list(reversed(positions))
    by_prefix = list(client.read_all(filter_include=[prefix], filter_by_stream_name=True,
                                     filter_by_prefix=True))
    assert [e.stream_name for e in by_prefix] == ["%s-%d" % (prefix, i) for i in range(3)]
    by_regex = list(client.read_all(filter_include=[prefix + "-[12]"], filter_by_stream_name=True))
    assert [e.stream_name for e in by_regex] == ["%s-%d" % (prefix, i) for i in (1, 2)]
    # A read from a position includes the event there.
    from_second = list(client.read_all(commit_position=positions[1], filter_include=[kind]))
    assert [e.commit_position for e in from_second] == positions[1:]
    # The default exclude filter (a negative look-ahead) hides $-types.
    assert client.get_commit_position() == positions[-1]
    limited = list(client.read_all(filter_include=[kind], limit=2))
    assert len(limited) == 2


@check
def stream_subscriptions_catch_up_then_go_live(client):
    stream = unique("sub")
    client.append_to_stream(stream, events=[event(), event(), event()],
                            current_version=StreamState.NO_STREAM)
    subscription = client.subscribe_to_stream(stream, include_caught_up=True, timeout=TIMEOUT)
    seen = []
    caught_up = False
    try:
        for item in subscription:
            if type(item) is CaughtUp:
                caught_up = True
                client.append_to_stream(stream, events=event("Live"), current_version=2)
                continue
            seen.append(item)
            if item.type == "Live":
                break
    finally:
        subscription.stop()
    assert caught_up
    assert [e.stream_position for e in seen] == [0, 1, 2, 3], seen
    # A subscription starts after the given revision.
    subscription = client.subscribe_to_stream(stream, stream_position=1, timeout=TIMEOUT)
    try:
        first = next(iter(subscription))
    finally:
        subscription.stop()
    assert first.stream_position == 2, first.stream_position


@check
def all_subscriptions_filter_checkpoint_and_catch_up(client):
    kind = "Subscribed" + uuid.uuid4().hex[:8]
    stream = unique("suball")
    positions = [client.append_to_stream(stream, events=event(kind), current_version=version)
                 for version in (StreamState.NO_STREAM, 0, 1)]
    subscription = client.subscribe_to_all(
        filter_include=[kind], include_checkpoints=True, include_caught_up=True,
        window_size=1, checkpoint_interval_multiplier=1, timeout=TIMEOUT)
    events, checkpoints, caught_up = [], 0, False
    try:
        for item in subscription:
            if type(item) is Checkpoint:
                checkpoints += 1
                assert item.commit_position > 0
            elif type(item) is CaughtUp:
                caught_up = True
                positions.append(client.append_to_stream(stream, events=event(kind), current_version=2))
            else:
                assert type(item) is RecordedEvent
                assert item.type == kind, item.type
                events.append(item.commit_position)
                if len(events) == 4:
                    break
    finally:
        subscription.stop()
    assert events == positions, (events, positions)
    assert checkpoints > 0 and caught_up
    # A subscription starts after the given position.
    subscription = client.subscribe_to_all(commit_position=positions[1], filter_include=[kind],
                                           timeout=TIMEOUT)
    try:
        first = next(iter(subscription))
    finally:
        subscription.stop()
    assert first.commit_position == positions[2]


@check
def delete_and_tombstone_answer_as_kurrentdb(client):
    stream = unique("del")
    client.append_to_stream(stream, events=[event(), event()], current_version=StreamState.NO_STREAM)
    expect_error(WrongCurrentVersionError, client.delete_stream, stream, current_version=0)
    client.delete_stream(stream, current_version=1)
    expect_error(NotFoundError, client.get_stream, stream)
    assert client.get_current_version(stream) == StreamState.NO_STREAM
    # Written again, it continues after the deleted revisions.
    client.append_to_stream(stream, events=event(), current_version=StreamState.NO_STREAM)
    assert [e.stream_position for e in client.get_stream(stream)] == [2]
    expect_error(NotFoundError, client.delete_stream, unique("never"), current_version=0)
    tomb = unique("tomb")
    client.append_to_stream(tomb, events=event(), current_version=StreamState.NO_STREAM)
    client.tombstone_stream(tomb, current_version=StreamState.ANY)
    # Append answers FAILED_PRECONDITION "... is deleted." as KurrentDB does
    # (this client raises its generic FailedPreconditionError for it).
    error = expect_error(FailedPreconditionError, client.append_to_stream, tomb, events=event(),
                         current_version=StreamState.ANY)
    assert "is deleted" in str(error), error
    expect_error(StreamIsDeletedError, client.append_to_stream, tomb, events=[event(), event()],
                 current_version=StreamState.ANY)
    expect_error(StreamIsDeletedError, client.get_stream, tomb)


@check
def stream_metadata_reads_and_writes_through_dollar_dollar_streams(client):
    stream = unique("meta")
    assert client.get_stream_metadata(stream) == ({}, StreamState.NO_STREAM)
    client.append_to_stream(stream, events=[event() for _ in range(4)],
                            current_version=StreamState.NO_STREAM)
    assert client.get_stream_metadata(stream) == ({}, StreamState.NO_STREAM)
    client.set_stream_metadata(stream, metadata={"$maxCount": 2, "owner": "team-a"})
    metadata, version = client.get_stream_metadata(stream)
    assert metadata == {"$maxCount": 2, "owner": "team-a"}, metadata
    assert version == 0, version
    # $maxCount applies to reads.
    assert [e.stream_position for e in client.get_stream(stream)] == [2, 3]
    client.set_stream_metadata(stream, metadata={"$maxAge": 3600}, current_version=0)
    metadata, version = client.get_stream_metadata(stream)
    assert metadata == {"$maxAge": 3600} and version == 1, (metadata, version)
    expect_error(WrongCurrentVersionError, client.set_stream_metadata, stream,
                 metadata={}, current_version=0)
    assert len(client.get_stream(stream)) == 4


@check
def category_streams_are_served_from_the_index(client):
    category = "cat" + uuid.uuid4().hex[:8]
    for i in range(3):
        client.append_to_stream("%s-%d" % (category, i), events=event("InCategory"),
                                current_version=StreamState.NO_STREAM)
    resolved = client.get_stream("$ce-" + category, resolve_links=True)
    assert [e.stream_name for e in resolved] == ["%s-%d" % (category, i) for i in range(3)]
    assert all(e.type == "InCategory" and e.link is not None for e in resolved)
    links = client.get_stream("$ce-" + category)
    assert [e.type for e in links] == ["$>"] * 3
    assert [e.data for e in links] == [b"0@%s-%d" % (category.encode(), i) for i in range(3)]


@check
def gossip_names_one_alive_leader(client):
    members = client.read_gossip()
    assert len(members) == 1, members
    assert members[0].state == "NODE_STATE_LEADER", members[0]
    assert members[0].port > 0


def main():
    # A hang shows where it is: every thread's stack on stderr, then exit
    # (before the Rust side's 180 s limit would discard the output).
    faulthandler.dump_traceback_later(150, exit=True)
    uri = sys.argv[1]
    client = KurrentDBClient(uri=uri)
    passed = failed = 0
    for function in CHECKS:
        try:
            function(client)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print("FAIL %s\n%s" % (function.__name__, traceback.format_exc()))
        else:
            passed += 1
            print("ok   %s" % function.__name__)
    client.close()
    print("python kurrent client: %d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    # grpcio can hang closing channels from __del__ at interpreter exit
    # (seen under load): everything is closed and reported, so leave at once.
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
