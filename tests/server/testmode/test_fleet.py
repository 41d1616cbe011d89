from __future__ import annotations

import json
from pathlib import Path

import pytest

from imds_replica import ConfigError
from imds_server import _demo
from imds_server.testmode import _fleet, load_fleet, parse_fleet
from imds_server.testmode._fleet import demo_fleet

TOML = """
[vms.vm-1]
callers = ["127.0.0.5"]
compute = { name = "web-1", vmSize = "Standard_D2s_v5" }
tags = [{ name = "env", value = "test" }]
loadbalancer = { publicIpAddresses = [], inboundRules = [], outboundRules = [] }

[vms.vm-1.identity.systemAssigned]
clientId = "c"
objectId = "o"
tenantId = "t"

[vms.vm-1.identity.userAssigned."/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u"]
clientId = "c2"
objectId = "o2"
tenantId = "t"

[[vms.vm-1.scheduledevents]]
id = "E1"
type = "Freeze"
not-before-in = 60
duration = 5

[[faults]]
path = "/metadata/instance*"
status = 410
duration = 30

[[scenario]]
at = 5
put = { vm = "vm-1", path = "compute.name", value = "web-2" }
"""


def test_a_toml_fleet_gives_documents_callers_identities_plans_faults_and_steps(
        tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(TOML)
    fleet = load_fleet(path)
    keys = {tuple(e["key"]): (e["source"], e["value"]) for e in fleet.events}
    assert keys[("callers", "127.0.0.5")] == ("hostnet", "vm-1")
    assert keys[("vms", "vm-1", "compute")][1]["name"] == "web-1"
    assert keys[("vms", "vm-1", "compute", "tagsList")][0] == "tags"
    assert keys[("vms", "vm-1", "identity", "systemAssigned")][1]["clientId"] == "c"
    user = [k for k in keys if k[2:4] == ("identity", "userAssigned")]
    assert user[0][4].endswith("userAssignedIdentities/u")
    assert ("vms", "vm-1", "loadbalancer") in keys
    assert [p.event_id for p in fleet.planned] == ["E1"]
    assert fleet.faults[0].status == 410
    assert fleet.scenario[0].action == "put"
    assert {e["version"] for e in fleet.events} == {1}  # loading again changes nothing


def test_the_shipped_demo_fleet_seeds_what_demo_seeds() -> None:
    regenerate = ("src/imds_server/testmode/demo-fleet.json differs from what --demo seeds: "
                  "python -m imds_server.testmode > src/imds_server/testmode/"
                  "demo-fleet.json")
    fleet = load_fleet(None)
    demo = [e for e in _demo.events(0.0) if e["key"][2:3] != ["scheduledevents"]]
    assert sorted(json.dumps([e["key"], e["value"]]) for e in fleet.events) == \
        sorted(json.dumps([e["key"], e["value"]]) for e in demo), regenerate
    scheduled = [e for e in _demo.events(0.0) if e["key"][2:3] == ["scheduledevents"]]
    assert [(p.vm, p.event_id, p.event_type, p.duration) for p in fleet.planned] == [
        (e["key"][1], e["key"][3], e["value"]["EventType"], e["value"]["DurationInSeconds"])
        for e in scheduled], regenerate
    assert json.loads((Path(_fleet.__file__).parent / "demo-fleet.json").read_text()) == \
        demo_fleet(), regenerate


@pytest.mark.parametrize(("data", "message"), [
    ({"machines": {}}, "unknown section 'machines'"),
    ({"vms": {"v": {"computer": {}}}}, "vms.v: unknown field 'computer'"),
    ({"vms": {"v": {"callers": "127.0.0.1"}}}, "callers must be an array"),
    ({"faults": [{"status": 999}]}, "fault status must be one of"),
    ({"scenario": [{"at": 1}]}, "scenario[0] needs exactly one of"),
    ({"scenario": [{"at": -1, "put": {}}]}, "scenario[0].at must be"),
])
def test_a_bad_fleet_names_the_file_and_the_fault(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fleet(data, where="f.json")
    assert "f.json: " in str(info.value)
    assert message in str(info.value)


def test_an_unreadable_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_fleet(bad)
