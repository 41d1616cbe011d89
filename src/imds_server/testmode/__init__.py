"""Test mode: ``imds-server serve --test-mode``, a metadata service to test guest software
against — a fleet from one file, scheduled events that run their course, injected faults,
replayable scenarios. Kept apart from the production request path: nothing outside this
package imports it except the CLI, and the production handler (``VmApi``) never sees a
fault rule.
"""

from __future__ import annotations

from ._faults import FORCED_STATUSES, FaultRule, FaultTable
from ._fleet import Fleet, load_fleet, parse_fleet
from ._lifecycle import Lifecycle, PlannedEvent
from ._mode import HEADER, TestMode, TestModeServer, refuse_production
from ._scenario import Step, parse_steps

__all__ = [
    "FORCED_STATUSES", "HEADER", "FaultRule", "FaultTable", "Fleet", "Lifecycle",
    "PlannedEvent", "Step", "TestMode", "TestModeServer", "load_fleet", "parse_fleet",
    "parse_steps", "refuse_production",
]
