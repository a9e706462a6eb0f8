"""Scheduling policies: the order in which the scheduler serves and preempts requests.

A policy is an object with ``key(request) -> tuple``; a lower key is served first, and
preemption takes victims from the highest key (the *lowest end* of the order). A policy
with ``preemptive = True`` may also preempt a running request to admit a waiting request
whose key is lower (see :mod:`ferrule_engine.scheduler`).

- ``fcfs``: first come, first served: ``(arrival_time, arrival_seq)``.
- ``priority``: ``(priority, arrival_time, arrival_seq)``; a lower ``priority`` value is
  served first (as in vLLM), ties in arrival order.

``arrival_seq`` is the order of ``Scheduler.add_request`` calls, so requests with equal
arrival times keep a stable order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferrule_engine.request import Request


class FcfsPolicy:
    """First come, first served; never preempts to admit a newcomer."""

    name = "fcfs"
    preemptive = False

    def key(self, request: Request) -> tuple:
        return (request.arrival_time, request.arrival_seq)


class PriorityPolicy:
    """Lower ``request.priority`` first; a waiting request may preempt lower-priority ones."""

    name = "priority"
    preemptive = True

    def key(self, request: Request) -> tuple:
        return (request.priority, request.arrival_time, request.arrival_seq)


BUILTIN_POLICIES = {"fcfs": FcfsPolicy, "priority": PriorityPolicy}
