"""Helpers for tests that drive the core's progress generators."""

from __future__ import annotations


def drain(generator):
    """Run a generator to its end and return its return value (events are dropped)."""
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


def collect(generator):
    """Run a progress generator to its end; return (its events, its return value)."""
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value
