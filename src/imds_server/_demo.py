"""The demo fleet ``--demo`` seeds: two VMs with full documents, tags, user data and one
scheduled event; callers 127.0.0.1 -> the first VM, 127.0.0.2 -> the second.

Seeded once: if the first caller mapping already exists (a data directory seeded before)
nothing is submitted, so edits made through the admin API survive restarts.
"""

from __future__ import annotations

import base64
import email.utils
from typing import Any

from imds_replica import Replica

VM1 = "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
VM2 = "13f1a6a8-8e8f-4f1b-9c7a-5b3c2d1e0f91"
EVENT_ID = "C7061BAC-AFDC-4513-B24B-AA5F13A16123"
CALLERS = {"127.0.0.1": VM1, "127.0.0.2": VM2}
VERSION = 1


def compute(vm: str, name: str, index: int) -> dict[str, Any]:
    return {
        "azEnvironment": "AzurePublicCloud", "isHostCompatibilityLayerVm": False,
        "licenseType": "", "location": "westeurope", "name": name,
        "offer": "0001-com-ubuntu-server-jammy", "osType": "Linux",
        "placementGroupId": "", "plan": {"name": "", "product": "", "publisher": ""},
        "platformFaultDomain": index, "platformSubFaultDomain": "",
        "platformUpdateDomain": index, "priority": "", "evictionPolicy": "",
        "provider": "Microsoft.Compute", "publisher": "canonical",
        "publicKeys": [{"keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemo demo",
                        "path": "/home/azureuser/.ssh/authorized_keys"}],
        "resourceGroupName": "demo-rg",
        "resourceId": f"/subscriptions/8d10da13-8125-4ba9-a717-bf7490507b3d/resourceGroups/"
                      f"demo-rg/providers/Microsoft.Compute/virtualMachines/{name}",
        "securityProfile": {"secureBootEnabled": True, "virtualTpmEnabled": True,
                            "encryptionAtHost": False, "securityType": "TrustedLaunch"},
        "osProfile": {"adminUsername": "azureuser", "computerName": name,
                      "disablePasswordAuthentication": True},
        "sku": "22_04-lts-gen2", "storageProfile": {
            "imageReference": {"id": "", "offer": "0001-com-ubuntu-server-jammy",
                               "publisher": "canonical", "sku": "22_04-lts-gen2",
                               "version": "latest"},
            "osDisk": {"caching": "ReadWrite", "createOption": "FromImage",
                       "diskSizeGB": 30, "name": f"{name}-osdisk", "osType": "Linux"},
            "dataDisks": []},
        "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
        "userData": base64.b64encode(f"#cloud-config\nhostname: {name}\n".encode()).decode(),
        "version": "22.04.202401010", "vmId": vm, "vmScaleSetName": "",
        "vmSize": "Standard_D2s_v5", "zone": str(index + 1),
        "additionalCapabilities": {"hibernationEnabled": False},
        "host": {"id": ""}, "hostGroup": {"id": ""},
        "extendedLocation": {"type": "", "name": ""},
        "virtualMachineScaleSet": {"id": ""}, "physicalZone": "",
    }


def network(index: int) -> dict[str, Any]:
    return {"interface": [{
        "ipv4": {"ipAddress": [{"privateIpAddress": f"10.0.0.{4 + index}",
                                "publicIpAddress": f"203.0.113.{10 + index}"}],
                 "subnet": [{"address": "10.0.0.0", "prefix": "24"}]},
        "ipv6": {"ipAddress": []},
        "macAddress": f"000D3AF806E{index}"}]}


def events(now: float) -> list[dict[str, Any]]:
    """The demo fleet as wire-form events (fixed versions: re-seeding changes nothing)."""
    out: list[dict[str, Any]] = []
    for index, (vm, name) in enumerate(((VM1, "demo-vm-1"), (VM2, "demo-vm-2"))):
        out.append(_event("fabric", ("vms", vm, "compute"), compute(vm, name, index)))
        out.append(_event("fabric", ("vms", vm, "network"), network(index)))
        out.append(_event("tags", ("vms", vm, "compute", "tagsList"), [
            {"name": "env", "value": "demo"}, {"name": "owner", "value": "team:imds"},
            {"name": "vm", "value": name}]))
    out.append(_event("fabric", ("vms", VM1, "scheduledevents", EVENT_ID), {
        "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["demo-vm-1"],
        "EventStatus": "Scheduled",
        "NotBefore": email.utils.formatdate(now + 15 * 60, usegmt=True),
        "Description": "Host maintenance (demo)", "EventSource": "Platform",
        "DurationInSeconds": 600}))
    for address, vm in CALLERS.items():
        out.append(_event("hostnet", ("callers", address), vm))
    return out


def _event(source: str, key: tuple[str, ...], value: Any) -> dict[str, Any]:
    return {"source": source, "key": list(key), "version": VERSION, "value": value}


async def seed(replica: Replica) -> bool:
    """Seed the demo fleet unless it was seeded before; True if it did."""
    if replica.view.get(("callers", "127.0.0.1")) is not None:
        return False
    await replica.submit(events(replica.now()))
    return True
