"""Helpers shared by the replica tests."""

from __future__ import annotations

from imds_replica import Event, View


def view_of(*events: Event) -> View:
    """A fresh view that applied ``events`` one by one, in order."""
    view = View()
    for event in events:
        view.apply(event)
    return view
