#!/usr/bin/env python3
"""Runs a Python `eventsourcing` application on Cairn through its KurrentDB
persistence module (`eventsourcing-kurrentdb`, on `kurrentdbclient`): saves
aggregates, reloads them, reads the notification log and follows new
notifications through a subscription.

Usage: python3 test_kurrent_eventsourcing.py CONNECTION_STRING

Prints one line per check and a final `python eventsourcing: N passed, M
failed`; exits non-zero when any check failed.
"""

import os
import faulthandler
import sys
import traceback

os.environ["PERSISTENCE_MODULE"] = "eventsourcing_kurrentdb"
os.environ["KURRENTDB_URI"] = sys.argv[1]

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402


class Dog(Aggregate):
    # KurrentDB stream revisions start at 0 (eventsourcing-kurrentdb's rule).
    INITIAL_VERSION = 0

    @event("Registered")
    def __init__(self, name):
        self.name = name
        self.tricks = []

    @event("TrickAdded")
    def add_trick(self, trick):
        self.tricks.append(trick)


class DogSchool(Application):
    def register(self, name):
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id, trick):
        dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)

    def tricks(self, dog_id):
        return self.repository.get(dog_id).tricks


CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def aggregates_are_saved_and_reloaded(context):
    app = context["app"]
    dog = app.register("Fido")
    app.add_trick(dog, "roll over")
    app.add_trick(dog, "play dead")
    assert app.tricks(dog) == ["roll over", "play dead"]
    # A second application instance (a new client) sees the same state.
    other = DogSchool()
    try:
        assert other.tricks(dog) == ["roll over", "play dead"]
    finally:
        other.close()
    context["dog"] = dog


@check
def the_notification_log_lists_the_events(context):
    app = context["app"]
    notifications = app.notification_log.select(start=None, limit=10)
    topics = [n.topic.rsplit(".", 1)[-1] for n in notifications]
    assert topics == ["Registered", "TrickAdded", "TrickAdded"], topics
    ids = [n.id for n in notifications]
    assert ids == sorted(ids) and ids[0] > 0, ids
    assert app.recorder.max_notification_id() == ids[-1]


@check
def new_notifications_are_followed(context):
    app = context["app"]
    last = app.recorder.max_notification_id()
    with app.recorder.subscribe(gt=last) as subscription:
        app.register("Rex")
        notification = next(iter(subscription))
    assert notification.id > last
    assert notification.topic.endswith("Registered"), notification.topic


def main():
    # A hang shows where it is: every thread's stack on stderr, then exit
    # (before the Rust side's 180 s limit would discard the output).
    faulthandler.dump_traceback_later(150, exit=True)
    context = {"app": DogSchool()}
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
    context["app"].close()
    print("python eventsourcing: %d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    # grpcio can hang closing channels from __del__ at interpreter exit
    # (seen under load): everything is closed and reported, so leave at once.
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
