"""The ``engine`` entry point: registers the built-in scheduling policies.

Importing this module imports no torch: the policies are pure Python.
"""

from __future__ import annotations

from ferrule_core import SchedulerSpec, hookimpl
from ferrule_engine.policies import FcfsPolicy, PriorityPolicy


@hookimpl
def ferrule_register_schedulers():
    return [
        SchedulerSpec(
            name="fcfs",
            policy=FcfsPolicy,
            preemptive=False,
            description="first come, first served; preempts the newest request when blocks run out",
        ),
        SchedulerSpec(
            name="priority",
            policy=PriorityPolicy,
            preemptive=True,
            description="lowest priority value first; preempts lower priorities for higher ones",
        ),
    ]
