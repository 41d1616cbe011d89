"""Which host may ask the token service for which VM's identities: the placement file.

Without it, any host holding a credential can ask for a token of any identity it names —
one compromised host would speak for every tenant of the region. With it
(``token-service --placement FILE``), a host gets tokens only for VMs placed on it, and
only for identities those VMs have, exactly as listed: the identity in a request must
equal a listed one field for field, so a host cannot borrow a real object id and forge
the client id, tenant or resource id beside it. The file is JSON::

    {"host-1": {"VM-ID": [{"kind": "systemAssigned", "clientId": "...",
                           "objectId": "...", "tenantId": "...", "resourceId": "..."}]}}

(``Identity.to_dict`` shape, the layout the host replicates under ``("vms", VM,
"identity", ...)``). Placements move, so ``PlacementFile`` re-reads the file when its
modification time or size changes; a file that no longer parses is refused with the
reason and the last good placement stays in force, so a bad deploy cannot open the service.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from imds_replica import ConfigError

from ._port import Identity


@attrs.frozen
class Placement:
    """host -> VM -> the identities that VM has (sans-I/O: built from parsed JSON)."""

    hosts: Mapping[str, Mapping[str, frozenset[Identity]]]

    @classmethod
    def from_json(cls, value: object, *, where: str = "placement") -> Placement:
        """Raises ``ValueError`` naming the entry that is wrong."""
        if not isinstance(value, dict):
            raise ValueError(f"{where}: must be an object of hosts")
        hosts: dict[str, dict[str, frozenset[Identity]]] = {}
        for host, vms in value.items():
            if not isinstance(vms, dict):
                raise ValueError(f"{where}: host {host!r} must map VM ids to identity lists")
            placed: dict[str, frozenset[Identity]] = {}
            for vm, identities in vms.items():
                if not isinstance(identities, list):
                    raise ValueError(f"{where}: {host!r}/{vm!r} must be a list of identities")
                try:
                    placed[vm] = frozenset(Identity.from_dict(i) for i in identities)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{where}: {host!r}/{vm!r}: {exc}") from None
            hosts[host] = placed
        return cls(hosts)

    def refusal(self, host: str, vm: str, identity: Identity) -> str | None:
        """Why ``host`` may not have a token of ``identity`` for ``vm``; None if it may."""
        vms = self.hosts.get(host)
        if vms is None:
            return f"host {host} has no VMs in the placement"
        identities = vms.get(vm)
        if identities is None:
            return f"VM {vm} is not placed on host {host}"
        if identity not in identities:
            return f"VM {vm} has no such identity (objectId {identity.object_id})"
        return None


class PlacementFile:
    """The placement in ``path``, re-read when the file changes (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reloads = 0
        self.reload_errors = 0
        self.last_error: str | None = None
        self._stamp: tuple[int, int] | None = None
        try:
            self._placement = self._read()
        except ValueError as exc:
            raise ConfigError(str(exc), key="placement") from None

    def current(self) -> Placement:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            self._failed(f"cannot read {self.path}: {exc.strerror}")
            return self._placement
        if stamp != self._stamp:
            try:
                self._placement = self._read()
                self.reloads += 1
                self.last_error = None
            except ValueError as exc:
                self._stamp = stamp  # not re-read until it changes again
                self._failed(str(exc))
        return self._placement

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            self.reload_errors += 1
            self.last_error = reason

    def _read(self) -> Placement:
        try:
            stat = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{self.path} is not JSON: {exc}") from None
        placement = Placement.from_json(value, where=str(self.path))
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return placement
