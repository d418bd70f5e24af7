#!/usr/bin/env python3
"""Drives a 3-node Cairn cluster's KurrentDB facades with the real Python
client `kurrentdbclient` (PyPI), unchanged: a client given every node finds
the leader through gossip and appends there, `kurrentdb+discover://` from one
follower does the same, gossip names one leader on every node, and a client
pinned to one follower is told `not-leader` with the leader's endpoint.

Usage: python3 test_kurrent_cluster.py LEADER FOLLOWER FOLLOWER
(each host:port of a node's KurrentDB facade; the first one leads)

Prints one line per check and a final `python kurrent cluster: N passed, M
failed`; exits non-zero when any check failed.
"""

import faulthandler
import os
import sys
import traceback
import uuid

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import NodeIsNotLeaderError

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def append_and_read(uri):
    """Appends two events to a new stream through `uri`, reads them back."""
    client = KurrentDBClient(uri=uri)
    try:
        name = unique("cluster")
        events = [NewEvent(type="Happened", data=b'{"n": %d}' % n) for n in range(2)]
        client.append_to_stream(name, current_version=StreamState.NO_STREAM, events=events)
        read = list(client.get_stream(name))
        assert [event.id for event in read] == [event.id for event in events], read
    finally:
        client.close()


@check
def every_seed_finds_the_leader(nodes):
    append_and_read("kurrentdb://%s?tls=false" % ",".join(nodes))


@check
def discover_from_a_follower_finds_the_leader(nodes):
    append_and_read("kurrentdb+discover://%s?tls=false" % nodes[1])


@check
def gossip_names_the_same_leader_everywhere(nodes):
    for node in nodes:
        client = KurrentDBClient(uri="kurrentdb://%s?tls=false" % node)
        try:
            members = client.read_gossip()
        finally:
            client.close()
        assert len(members) == 3, members
        leaders = [member for member in members if member.state == "NODE_STATE_LEADER"]
        assert len(leaders) == 1, members
        assert "%s:%d" % (leaders[0].address, leaders[0].port) == nodes[0], (node, leaders)


@check
def a_follower_answers_not_leader_with_the_leaders_endpoint(nodes):
    client = KurrentDBClient(uri="kurrentdb://%s?tls=false" % nodes[2])
    try:
        events = [NewEvent(type="Happened", data=b"{}"), NewEvent(type="Happened", data=b"{}")]
        try:
            client.append_to_stream(unique("refused"), current_version=StreamState.ANY, events=events)
        except NodeIsNotLeaderError as error:
            assert "%s:%s" % (error.host, error.port) == nodes[0], (error.host, error.port)
        else:
            raise AssertionError("a follower accepted a write")
    finally:
        client.close()


def main():
    faulthandler.dump_traceback_later(150, exit=True)
    nodes = sys.argv[1:4]
    passed = failed = 0
    for function in CHECKS:
        try:
            function(nodes)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print("FAIL %s\n%s" % (function.__name__, traceback.format_exc()))
        else:
            passed += 1
            print("ok   %s" % function.__name__)
    print("python kurrent cluster: %d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    # grpcio can hang closing channels from __del__ at interpreter exit.
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
