from __future__ import annotations

from imds_replica import Event, Horizons, View, hlc_version
from imds_server._schedule import events_prefix, render_events

T = hlc_version(1_800_000_000_000)


def test_document_incarnation_survives_compaction_and_restart() -> None:
    # Finding 8: it was the max over the registers still held, so dropping the newest
    # tombstone made it go down, and differ from a replica that did not compact.
    prefix = events_prefix("vm1")
    view = View()
    view.apply(Event("fabric", (*prefix, "e1"), T, {"EventType": "Reboot"}))
    view.apply(Event("fabric", (*prefix, "e2"), T + 5, {"EventType": "Freeze"}))
    view.apply(Event("fabric", (*prefix, "e2"), T + 9, deleted=True))
    before = render_events(view, "vm1")
    assert before["DocumentIncarnation"] == T + 9
    assert view.compact(Horizons(hlc=T + 100)) == 1
    assert render_events(view, "vm1") == before
    restarted = View()
    restarted.load(view.registers())
    restarted.restore(view.compaction_state())
    assert render_events(restarted, "vm1") == before
    assert render_events(View(), "vm1") == {"DocumentIncarnation": 0, "Events": []}
