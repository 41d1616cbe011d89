from __future__ import annotations

from imds_server import parse_tags, render_instance, render_tags, stringify
from imds_server._versions import gate_compute


def test_tags_forms_are_one_set() -> None:
    expected = [("a", "1"), ("b", "x:y")]
    assert parse_tags("a:1;b:x:y") == expected
    assert parse_tags([{"name": "a", "value": "1"}, {"name": "b", "value": "x:y"}]) == expected
    assert parse_tags({"a": 1, "b": "x:y"}) == expected
    assert parse_tags(";;junk") == [("junk", "")]
    assert parse_tags(7) == []
    assert render_tags(expected) == ("a:1;b:x:y", [{"name": "a", "value": "1"},
                                                   {"name": "b", "value": "x:y"}])


def test_stringify() -> None:
    assert stringify({"a": [1, True, None, 1.5, {"b": False}]}) == \
        {"a": ["1", "true", "", "1.5", {"b": "false"}]}


def test_gating_passes_unknown_fields_and_gates_nested() -> None:
    out = gate_compute({"futureField": "x", "securityProfile": {"securityType": "T"}},
                       "2021-11-01")
    assert out["futureField"] == "x"
    assert "securityType" not in out["securityProfile"]
    assert out["securityProfile"]["encryptionAtHost"] == ""


def test_vm_id_comes_from_the_key_unless_published() -> None:
    bare = render_instance({"compute": {"name": "n"}}, "2021-02-01", tags_from_list=True,
                           vm_id="vm-7")
    assert bare["compute"]["vmId"] == "vm-7"
    pushed = render_instance({"compute": {"vmId": "from-fabric"}}, "2021-02-01",
                             tags_from_list=True, vm_id="vm-7")
    assert pushed["compute"]["vmId"] == "from-fabric"
    empty = render_instance({}, "2021-02-01", tags_from_list=True, vm_id="vm-7")
    assert empty["compute"]["vmId"] == "vm-7"


def test_an_absent_storage_profile_renders_like_other_absent_objects() -> None:
    # Azure renders every object of the version with its members, leaves "" and lists []:
    # storageProfile too (it was {}), as plan and osProfile already were.
    compute = render_instance({"compute": {"name": "n"}}, "2021-02-01",
                              tags_from_list=True)["compute"]
    assert compute["plan"] == {"name": "", "product": "", "publisher": ""}
    storage = compute["storageProfile"]
    assert storage["dataDisks"] == []
    assert storage["imageReference"] == {"id": "", "offer": "", "publisher": "", "sku": "",
                                         "version": ""}
    assert storage["osDisk"]["name"] == ""
    assert storage["osDisk"]["managedDisk"] == {"id": "", "storageAccountType": ""}
    published = render_instance(
        {"compute": {"storageProfile": {"osDisk": {"name": "d1", "diskSizeGB": 30}}}},
        "2021-02-01", tags_from_list=True)["compute"]["storageProfile"]
    assert (published["osDisk"]["name"], published["osDisk"]["diskSizeGB"]) == ("d1", "30")
    assert published["osDisk"]["vhd"] == {"uri": ""}  # lacking members filled in
    assert published["dataDisks"] == []
    assert "storageProfile" not in render_instance({}, "2019-04-30",
                                                   tags_from_list=True)["compute"]
