"""The demo fleet ``--demo`` seeds: two VMs with full documents, tags, user data and one
scheduled event; callers 127.0.0.1 -> the first VM, 127.0.0.2 -> the second. The first VM
also has a system-assigned and one user-assigned managed identity and a load balancer; the
second has neither (its token requests answer 400 "Identity not found").

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
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SUBSCRIPTION = "8d10da13-8125-4ba9-a717-bf7490507b3d"
#: The first VM's identities (ids are fixed so docs and tests can name them).
SYSTEM_IDENTITY = {"clientId": "5a3b2f44-1c7e-4b3a-9d47-0c1f2e3d4a51",
                   "objectId": "0f4c9a2e-7b1d-4e36-8a5f-3c2d1b0e9f71", "tenantId": TENANT}
USER_IDENTITY_ID = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/demo-rg/providers/"
                    "Microsoft.ManagedIdentity/userAssignedIdentities/demo-app")
USER_IDENTITY = {"clientId": "9e1d7c3b-2a4f-4c8e-b6d1-7f0a5e3c2b19",
                 "objectId": "3c7e1a9f-5d2b-4f80-9e4a-1b6c8d2f0a37", "tenantId": TENANT}
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


def loadbalancer(index: int) -> dict[str, Any]:
    """A Standard load balancer in front of the VM, in the published shape."""
    private = f"10.0.0.{4 + index}"
    return {"publicIpAddresses": [{"frontendIpAddress": "51.105.220.10",
                                   "privateIpAddress": private}],
            "inboundRules": [{"frontendIpAddress": "51.105.220.10", "protocol": "tcp",
                              "frontendPort": 443, "backendPort": 8443,
                              "privateIpAddress": private}],
            "outboundRules": [{"frontendIpAddress": "51.105.220.11",
                               "privateIpAddress": private}]}


def events(now: float) -> list[dict[str, Any]]:
    """The demo fleet as wire-form events (fixed versions: re-seeding changes nothing)."""
    out: list[dict[str, Any]] = []
    for index, (vm, name) in enumerate(((VM1, "demo-vm-1"), (VM2, "demo-vm-2"))):
        out.append(_event("fabric", ("vms", vm, "compute"), compute(vm, name, index)))
        out.append(_event("fabric", ("vms", vm, "network"), network(index)))
        out.append(_event("tags", ("vms", vm, "compute", "tagsList"), [
            {"name": "env", "value": "demo"}, {"name": "owner", "value": "team:imds"},
            {"name": "vm", "value": name}]))
    out.append(_event("fabric", ("vms", VM1, "identity", "systemAssigned"), SYSTEM_IDENTITY))
    out.append(_event("fabric", ("vms", VM1, "identity", "userAssigned", USER_IDENTITY_ID),
                      USER_IDENTITY))
    out.append(_event("fabric", ("vms", VM1, "loadbalancer"), loadbalancer(0)))
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
