#!/usr/bin/env python3
"""Drives the persistent subscriptions of Cairn's KurrentDB-compatible facade
with the real Python client `kurrentdbclient` (PyPI), unchanged: groups on a
stream, on `$ce-` and on `$all` (filtered, from a position); create, read,
ack, nack park/retry/skip, replay parked, get info, list, update, delete;
and a group's max_subscriber_count and the server's consumer limit as
"maximum subscriptions reached".

Usage: python3 test_kurrent_persistent.py CONNECTION_STRING MAX_CONSUMERS

Prints one line per check and a final `python kurrent persistent: N passed,
M failed`; exits non-zero when any check failed.
"""

import faulthandler
import os
import sys
import time
import traceback
import uuid

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import (
    AlreadyExistsError,
    MaximumSubscriptionsReachedError,
    NotFoundError,
)

# Deadline of every Read call: a missing event fails the check, never hangs it.
TIMEOUT = 10.0
CHECKS = []
MAX_CONSUMERS = 0


def check(function):
    CHECKS.append(function)
    return function


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def append(client, stream, kinds, current_version=StreamState.ANY):
    events = [NewEvent(type=kind, data=b'{"i": %d}' % i) for i, kind in enumerate(kinds)]
    client.append_to_stream(stream, events=events, current_version=current_version)
    return [e.id for e in events]


def eventually(condition, what):
    """Polls `condition` (the server applies acks asynchronously) for up to
    TIMEOUT seconds; fails naming `what` and the last value seen."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = condition()
        if value is True:
            return
        if time.monotonic() > deadline:
            raise AssertionError("%s: never true (last: %r)" % (what, value))
        time.sleep(0.05)


def info_of(client, group, stream=None):
    return client.get_subscription_info(group, stream)


@check
def stream_group_create_read_ack_info_list_update_delete(client):
    stream = unique("order")
    group = unique("billing")
    ids = append(client, stream, ["Placed", "Paid", "Shipped"], StreamState.NO_STREAM)
    client.create_subscription_to_stream(group, stream)
    try:
        client.create_subscription_to_stream(group, stream)
    except AlreadyExistsError:
        pass
    else:
        raise AssertionError("a second create of the same group succeeded")
    subscription = client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    received = []
    for recorded in subscription:
        assert recorded.retry_count == 0, recorded
        received.append(recorded)
        subscription.ack(recorded)
        if len(received) == 3:
            break
    assert [e.id for e in received] == ids, received
    assert [e.stream_position for e in received] == [0, 1, 2]
    assert received[1].type == "Paid" and received[1].data == b'{"i": 1}'
    info = info_of(client, group, stream)
    assert info.event_source == stream and info.group_name == group, info
    assert info.consumer_strategy == "DispatchToSingle", info
    assert info.max_retry_count == 10 and info.message_timeout == 30.0, info
    assert info.checkpoint_after == 2.0 and info.max_checkpoint_count == 1000, info
    assert len(info.connections) == 1, info.connections
    eventually(
        lambda: info_of(client, group, stream).last_checkpointed_event_position == "2"
        or info_of(client, group, stream).last_checkpointed_event_position,
        "the acks moved the checkpoint to revision 2",
    )
    subscription.stop()
    listed = [(i.event_source, i.group_name) for i in client.list_subscriptions()]
    assert (stream, group) in listed, listed
    for_stream = client.list_subscriptions_to_stream(stream)
    assert [(i.event_source, i.group_name) for i in for_stream] == [(stream, group)]
    client.update_subscription_to_stream(
        group, stream, max_retry_count=2, consumer_strategy="RoundRobin", message_timeout=5.0
    )
    info = info_of(client, group, stream)
    assert info.max_retry_count == 2 and info.consumer_strategy == "RoundRobin", info
    assert info.message_timeout == 5.0, info
    client.delete_subscription(group, stream)
    try:
        info_of(client, group, stream)
    except NotFoundError:
        pass
    else:
        raise AssertionError("the deleted group still has info")
    assert (stream, group) not in [
        (i.event_source, i.group_name) for i in client.list_subscriptions()
    ]


@check
def nacks_retry_skip_and_park_and_parked_events_replay(client):
    stream = unique("nack")
    group = unique("worker")
    retried, skipped, parked = append(client, stream, ["Retried", "Skipped", "Parked"])
    client.create_subscription_to_stream(group, stream)
    subscription = client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    seen = []
    for recorded in subscription:
        seen.append((recorded.type, recorded.retry_count))
        if recorded.id == retried and recorded.retry_count == 0:
            subscription.nack(recorded, action="retry")
        elif recorded.id == retried:
            subscription.ack(recorded)
        elif recorded.id == skipped:
            subscription.nack(recorded, action="skip")
        elif recorded.id == parked:
            subscription.nack(recorded, action="park")
        if ("Retried", 1) in seen and ("Skipped", 0) in seen and ("Parked", 0) in seen:
            break
    eventually(
        lambda: info_of(client, group, stream).parked_message_count == 1
        or info_of(client, group, stream).parked_message_count,
        "one event parked",
    )
    client.replay_parked_events(group, stream)
    for recorded in subscription:
        assert recorded.id == parked, recorded
        subscription.ack(recorded)
        break
    eventually(
        lambda: info_of(client, group, stream).parked_message_count == 0
        or info_of(client, group, stream).parked_message_count,
        "the parked event was replayed",
    )
    eventually(
        lambda: info_of(client, group, stream).total_in_flight_messages == 0
        or info_of(client, group, stream).total_in_flight_messages,
        "nothing left in flight",
    )
    subscription.stop()
    client.delete_subscription(group, stream)


@check
def a_stop_nack_ends_the_consumer_and_gives_its_events_back(client):
    stream = unique("stop")
    group = unique("stopper")
    ids = append(client, stream, ["First", "Second"])
    client.create_subscription_to_stream(group, stream)
    subscription = client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    first = next(iter(subscription))
    assert first.id == ids[0], first
    subscription.nack(first, action="stop")
    eventually(
        lambda: len(info_of(client, group, stream).connections) == 0
        or info_of(client, group, stream).connections,
        "the stop nack ended the consumer",
    )
    subscription.stop()
    # Nothing was lost: a new consumer gets both events again (in any order:
    # given-back events are not ordered), the stopped one with no retry counted.
    again = client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    redelivered = {}
    for recorded in again:
        redelivered[recorded.id] = recorded.retry_count
        again.ack(recorded)
        if len(redelivered) == 2:
            break
    assert set(redelivered) == set(ids), (redelivered, ids)
    assert redelivered[ids[0]] == 0, redelivered
    again.stop()
    client.delete_subscription(group, stream)


@check
def stream_groups_start_at_a_revision_or_the_end(client):
    stream = unique("start")
    ids = append(client, stream, ["A", "B", "C"])
    from_revision = unique("from-revision")
    client.create_subscription_to_stream(from_revision, stream, stream_position=1)
    assert info_of(client, from_revision, stream).start_from == "1"
    subscription = client.read_subscription_to_stream(from_revision, stream, timeout=TIMEOUT)
    first = next(iter(subscription))
    assert first.id == ids[1] and first.stream_position == 1, first
    subscription.stop()
    from_end = unique("from-end")
    client.create_subscription_to_stream(from_end, stream, from_end=True)
    later = append(client, stream, ["D"])
    subscription = client.read_subscription_to_stream(from_end, stream, timeout=TIMEOUT)
    first = next(iter(subscription))
    assert first.id == later[0] and first.stream_position == 3, first
    subscription.stop()
    for group in (from_revision, from_end):
        client.delete_subscription(group, stream)


@check
def category_groups_deliver_links_acked_by_link_id(client):
    category = "cat%s" % uuid.uuid4().hex[:10]
    group = unique("projector")
    client.create_subscription_to_stream(group, "$ce-" + category, resolve_links=True)
    ids = append(client, category + "-1", ["InCategory"]) + append(
        client, category + "-2", ["InCategory"]
    )
    subscription = client.read_subscription_to_stream(
        group, "$ce-" + category, timeout=TIMEOUT
    )
    received = []
    for recorded in subscription:
        assert recorded.link is not None and recorded.link.type == "$>", recorded
        received.append(recorded.id)
        subscription.ack(recorded)
        if len(received) == 2:
            break
    assert received == ids, (received, ids)
    eventually(
        lambda: info_of(client, group, "$ce-" + category).total_in_flight_messages == 0
        or info_of(client, group, "$ce-" + category).total_in_flight_messages,
        "the acks of the links finished the events",
    )
    assert info_of(client, group, "$ce-" + category).resolve_links is True
    subscription.stop()
    client.delete_subscription(group, "$ce-" + category)


@check
def all_groups_filter_and_start_at_a_commit_position(client):
    kind = "Filtered%s" % uuid.uuid4().hex[:10]
    stream = unique("everywhere")
    append(client, stream, [kind, "Other", kind, kind])
    positions = [e.commit_position for e in client.get_stream(stream)]
    group = unique("all-group")
    client.create_subscription_to_all(
        group, filter_include=[kind], commit_position=positions[1], consumer_strategy="RoundRobin"
    )
    info = info_of(client, group)
    assert info.event_source == "$all" and info.group_name == group, info
    assert info.start_from == "C:%d/P:%d" % (positions[1], positions[1]), info.start_from
    assert info.consumer_strategy == "RoundRobin", info
    subscription = client.read_subscription_to_all(group, timeout=TIMEOUT)
    received = []
    for recorded in subscription:
        assert recorded.type == kind, recorded
        received.append(recorded.stream_position)
        subscription.ack(recorded)
        if len(received) == 2:
            break
    assert received == [2, 3], received
    subscription.stop()
    assert group in [i.group_name for i in client.list_subscriptions() if i.event_source == "$all"]
    # The client updates from the info it reads (start_from parsed back).
    client.update_subscription_to_all(group, max_retry_count=4)
    info = info_of(client, group)
    assert info.max_retry_count == 4 and info.consumer_strategy == "RoundRobin", info
    assert info.start_from == "C:%d/P:%d" % (positions[1], positions[1]), info.start_from
    # The client's default filter (excluding system events) is accepted too.
    default = unique("all-default")
    client.create_subscription_to_all(default, from_end=True, consumer_strategy="Pinned")
    assert info_of(client, default).consumer_strategy == "Pinned"
    for name in (group, default):
        client.delete_subscription(name)


@check
def reading_a_missing_group_is_not_found(client):
    try:
        client.read_subscription_to_stream(unique("nobody"), unique("nowhere"), timeout=TIMEOUT)
    except NotFoundError:
        pass
    else:
        raise AssertionError("a missing group could be read")


@check
def more_consumers_than_the_server_takes_is_maximum_subscriptions_reached(client):
    stream = unique("crowded")
    group = unique("crowd")
    client.create_subscription_to_stream(group, stream, consumer_strategy="RoundRobin")
    subscriptions = [
        client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
        for _ in range(MAX_CONSUMERS)
    ]
    assert len(info_of(client, group, stream).connections) == MAX_CONSUMERS
    try:
        client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    except MaximumSubscriptionsReachedError:
        pass
    else:
        raise AssertionError("one consumer more than the limit joined")
    for subscription in subscriptions:
        subscription.stop()
    client.delete_subscription(group, stream)


@check
def a_groups_max_subscriber_count_refuses_the_consumer_beyond_it(client):
    stream = unique("solo")
    group = unique("single")
    client.create_subscription_to_stream(group, stream, max_subscriber_count=1)
    assert info_of(client, group, stream).max_subscriber_count == 1
    first = client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    try:
        client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    except MaximumSubscriptionsReachedError:
        pass
    else:
        raise AssertionError("a second reader joined a group of max_subscriber_count 1")
    assert len(info_of(client, group, stream).connections) == 1
    # Raised by an update, the limit lets the second reader in; the client
    # updates from the info it reads, so an unrelated update keeps it.
    client.update_subscription_to_stream(group, stream, max_subscriber_count=2)
    client.update_subscription_to_stream(group, stream, max_retry_count=3)
    info = info_of(client, group, stream)
    assert info.max_subscriber_count == 2 and info.max_retry_count == 3, info
    second = client.read_subscription_to_stream(group, stream, timeout=TIMEOUT)
    assert len(info_of(client, group, stream).connections) == 2
    for subscription in (first, second):
        subscription.stop()
    client.delete_subscription(group, stream)


def main():
    global MAX_CONSUMERS
    # A hang shows where it is: every thread's stack on stderr, then exit
    # (before the Rust side's 180 s limit would discard the output).
    faulthandler.dump_traceback_later(150, exit=True)
    uri = sys.argv[1]
    MAX_CONSUMERS = int(sys.argv[2])
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
    print("python kurrent persistent: %d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    # grpcio can hang closing channels from __del__ at interpreter exit.
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
