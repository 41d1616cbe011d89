"""Public testing helpers, like ``trio.testing``: port contracts, hypothesis strategies,
simulated replicas and fleets, and a convergence checker users can point at their own
logs and source adapters.

Needs the test extras (pytest, hypothesis).
"""

from ._contracts import EventLogContract
from ._convergence import (
    ConvergenceError,
    ConvergenceOutcome,
    check_convergence,
    check_convergence_async,
)
from ._fleet import FleetConfig, FleetReport, simulate_fleet
from ._sim import (
    Deliver,
    Deliverer,
    Interrupt,
    LogFactory,
    Restart,
    Schedule,
    SimHost,
    Simulation,
    memory_logs,
    push_delivery,
)
from ._source_contract import DELETED, SourceContract
from ._strategies import (
    any_events,
    any_keys,
    batches,
    convergence_cases,
    events,
    json_values,
    schedule_sets,
    schedules,
    source_names,
    tight_events,
    versions,
    vm_keys,
)

__all__ = [
    "DELETED",
    "ConvergenceError",
    "ConvergenceOutcome",
    "Deliver",
    "Deliverer",
    "EventLogContract",
    "FleetConfig",
    "FleetReport",
    "Interrupt",
    "LogFactory",
    "Restart",
    "Schedule",
    "SimHost",
    "Simulation",
    "SourceContract",
    "any_events",
    "any_keys",
    "batches",
    "check_convergence",
    "check_convergence_async",
    "convergence_cases",
    "events",
    "json_values",
    "memory_logs",
    "push_delivery",
    "schedule_sets",
    "schedules",
    "simulate_fleet",
    "source_names",
    "tight_events",
    "versions",
    "vm_keys",
]
