"""Server configuration: one frozen record, loaded from TOML and flags, refused when wrong.

Every setting has one name, used both as the TOML key and (for those that have one) as the
command-line flag: ``rate-limit`` / ``--rate-limit``. Flags override the file; the file
overrides the defaults. An unknown key, a wrong type or an impossible value is refused at
start with a ``ConfigError`` naming the key and the reason. ``[[source]]`` tables (the
sources ``serve`` runs) are checked by ``_sources``. ``cluster`` and ``machine``
label telemetry; the ``[telemetry]`` table is passed through untouched (telemetry
validates it).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import attrs

from imds_replica import ConfigError

from ._listen import Address, check_separate
from ._sources import SourceSpec, parse_sources

#: Sources the server itself writes: no ``[[source]]`` may take their names (``guest``: the
#: scheduled-event approvals). ``fabric``/``hostnet`` may come from a configured source.
SERVER_SOURCES = ("guest",)

#: TOML key -> (field, accepted types, description). The table docs/server.md documents.
SETTINGS: Mapping[str, tuple[str, tuple[type, ...], str]] = {
    "listen": ("listen", (str,), "VM-facing HOST:PORT"),
    "admin-listen": ("admin_listen", (str,), "admin HOST:PORT (never VM-reachable)"),
    "data-dir": ("data_dir", (str,), "directory of the durable log"),
    "demo": ("demo", (bool,), "seed the demo fleet once"),
    "rate-limit": ("rate_limit", (int, float), "requests/s per VM; 0 disables"),
    "rate-burst": ("rate_burst", (int, float), "token bucket size (default: rate-limit)"),
    "max-watchers-per-vm": ("max_watchers_per_vm", (int,), "parked watchers per VM"),
    "max-watch-timeout": ("max_watch_timeout", (int, float), "longest timeout_sec (s)"),
    "ip-ttl": ("ip_ttl", (int,), "IP TTL of VM-facing answers; 0 = system default"),
    "max-connections": ("max_connections", (int,), "VM-facing connections in total"),
    "max-connections-per-caller": ("max_connections_per_caller", (int,),
                                   "VM-facing connections per caller address"),
    "max-unknown-connections": ("max_unknown_connections", (int,),
                                "connections all unknown callers share (within "
                                "max-connections: the rest is reserved for VMs)"),
    "unknown-rate-limit": ("unknown_rate_limit", (int, float),
                           "new connections/s per unknown caller address; 0 disables"),
    "unknown-rate-burst": ("unknown_rate_burst", (int, float),
                           "burst of new connections per unknown caller address"),
    "refusals-before-close": ("refusals_before_close", (int,),
                              "429s in a row after which a connection is closed; 0: never"),
    "refusal-log-interval": ("refusal_log_interval", (int, float),
                             "seconds per aggregated refusal line (per caller and reason)"),
    "send-timeout": ("send_timeout", (int, float),
                     "seconds an answer may wait for the client to read it"),
    "admin-body-timeout": ("admin_body_timeout", (int, float),
                           "seconds an admin request body may take to arrive"),
    "header-timeout": ("header_timeout", (int, float), "seconds to send a whole request"),
    "idle-timeout": ("idle_timeout", (int, float), "seconds a keep-alive may idle"),
    "max-request-line": ("max_request_line", (int,), "bytes of the request target"),
    "max-header-bytes": ("max_header_bytes", (int,), "bytes of request line + headers"),
    "max-body-bytes": ("max_body_bytes", (int,), "VM-facing request body bytes"),
    "admin-max-body-bytes": ("admin_max_body_bytes", (int,), "POST /events body bytes"),
    "admin-allow-owned-sources": ("admin_allow_owned_sources", (bool,),
                                  "POST /events may claim the server's own sources"),
    "shutdown-grace": ("shutdown_grace", (int, float), "seconds to finish on SIGTERM"),
    "tombstone-retention": ("tombstone_retention", (int, float),
                            "seconds a deletion (hybrid-clock tombstone) is kept before "
                            "compaction may drop it; 0 keeps every tombstone"),
    "startup-hold": ("startup_hold", (int, float),
                     "seconds a request waits for the log replay before 410"),
    "cluster": ("cluster", (str,), "telemetry label"),
    "machine": ("machine", (str,), "telemetry label"),
    "telemetry": ("telemetry", (dict,), "passed to telemetry untouched"),
    # Guest surface: managed identity and the attested document (docs/server.md).
    "identity-issuer": ("identity_issuer", (str,),
                        '"local" (sign here) or "remote" (ask a token service)'),
    "identity-signing-key": ("identity_signing_key", (str,),
                             "RSA key PEM (default DATA/identity/signing-key.pem)"),
    "identity-issuer-url": ("identity_issuer_url", (str,),
                            "the tokens' iss (default http://ADMIN-LISTEN/identity)"),
    "identity-token-lifetime": ("identity_token_lifetime", (int,),
                                "token lifetime in seconds (local issuer)"),
    "identity-token-service": ("identity_token_service", (str,),
                               "URL of the token service (remote issuer)"),
    "identity-token-service-credential": ("identity_token_service_credential", (str,),
                                          "file holding this host's secret"),
    "identity-token-service-ca": ("identity_token_service_ca", (str,),
                                  "CA bundle for an https token service"),
    "identity-rate-limit": ("identity_rate_limit", (int, float),
                            "identity requests/s per VM; 0 disables"),
    "identity-max-concurrent": ("identity_max_concurrent", (int,),
                                "identity requests waiting for the issuer per VM; 0 = any"),
    "attested-key": ("attested_key", (str,), "attested document signing key (PEM)"),
    "attested-cert": ("attested_cert", (str,), "its certificate (PEM)"),
    "attested-ca": ("attested_ca", (str,), "CA certificate(s) published at /attested/ca.pem"),
    "attested-lifetime": ("attested_lifetime", (int,), "seconds from createdOn to expiresOn"),
    "source": ("sources", (list,), "[[source]] tables: the sources serve runs"),
}
#: Settings that name files (read as paths).
_PATHS = {"identity_signing_key", "identity_token_service_credential",
          "identity_token_service_ca", "attested_key", "attested_cert", "attested_ca"}
_POSITIVE = {"max_connections", "max_connections_per_caller", "header_timeout",
             "idle_timeout", "max_request_line", "max_header_bytes", "max_body_bytes",
             "admin_max_body_bytes", "max_watch_timeout", "max_unknown_connections",
             "unknown_rate_burst", "refusal_log_interval",
             "send_timeout", "admin_body_timeout", "attested_lifetime"}
_NON_NEGATIVE = {"rate_limit", "max_watchers_per_vm", "ip_ttl", "shutdown_grace",
                 "startup_hold", "tombstone_retention", "unknown_rate_limit", "identity_rate_limit",
                 "identity_max_concurrent", "refusals_before_close"}


@attrs.frozen
class ServerConfig:
    listen: Address = attrs.field(factory=lambda: Address("127.0.0.1", 8080))
    admin_listen: Address = attrs.field(factory=lambda: Address("127.0.0.1", 8081))
    data_dir: Path | None = None
    demo: bool = False
    rate_limit: float = 5.0
    rate_burst: float | None = None
    max_watchers_per_vm: int = 64
    max_watch_timeout: float = 300.0
    ip_ttl: int = 1
    max_connections: int = 4096
    max_connections_per_caller: int = 64
    max_unknown_connections: int = 64
    unknown_rate_limit: float = 2.0
    unknown_rate_burst: float = 10.0
    refusals_before_close: int = 16
    refusal_log_interval: float = 10.0
    send_timeout: float = 30.0
    admin_body_timeout: float = 120.0
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_request_line: int = 8192
    max_header_bytes: int = 16384
    max_body_bytes: int = 65536
    admin_max_body_bytes: int = 16 * 1024 * 1024
    admin_allow_owned_sources: bool = False
    shutdown_grace: float = 10.0
    startup_hold: float = 3.0
    #: A week, like Cassandra's gc_grace (10 days): a deletion must reach every replica of
    #: it well within the retention; a later redelivery of an older write is a no-op (the
    #: persisted floor), so dropping never resurrects. Counter-versioned tombstones are kept.
    tombstone_retention: float = 7 * 24 * 3600.0
    cluster: str = ""
    machine: str = ""
    telemetry: Mapping[str, Any] = attrs.field(factory=dict)
    identity_issuer: str = "local"
    identity_signing_key: Path | None = None
    identity_issuer_url: str | None = None
    identity_token_lifetime: int = 24 * 3600
    identity_token_service: str | None = None
    identity_token_service_credential: Path | None = None
    identity_token_service_ca: Path | None = None
    identity_rate_limit: float = 20.0
    identity_max_concurrent: int = 5
    attested_key: Path | None = None
    attested_cert: Path | None = None
    attested_ca: Path | None = None
    attested_lifetime: int = 6 * 3600
    #: The checked ``[[source]]`` tables (``imds_server._sources``).
    sources: tuple[SourceSpec, ...] = ()

    def __attrs_post_init__(self) -> None:
        key = {field: name for name, (field, _, _) in SETTINGS.items()}
        for field in _POSITIVE:
            if getattr(self, field) <= 0:
                raise ConfigError("must be > 0", key=key[field])
        for field in _NON_NEGATIVE:
            if getattr(self, field) < 0:
                raise ConfigError("must be >= 0", key=key[field])
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ConfigError("must be >= 1", key="rate-burst")
        if self.ip_ttl > 255:
            raise ConfigError("must be at most 255", key="ip-ttl")
        if self.max_unknown_connections >= self.max_connections:
            raise ConfigError("must be less than max-connections (the rest is kept for "
                              "known VMs)", key="max-unknown-connections")
        if self.max_request_line > self.max_header_bytes:
            raise ConfigError("must not exceed max-header-bytes", key="max-request-line")
        check_separate(self.listen, self.admin_listen)
        self._check_guest_surface()

    def _check_guest_surface(self) -> None:
        if self.identity_issuer not in ("local", "remote"):
            raise ConfigError('must be "local" or "remote"', key="identity-issuer")
        if self.identity_issuer == "remote":
            for name in ("identity_token_service", "identity_token_service_credential"):
                if getattr(self, name) is None:
                    raise ConfigError('needed with identity-issuer = "remote"',
                                      key=name.replace("_", "-"))
        if self.identity_token_lifetime < 600:
            raise ConfigError("must be >= 600 seconds", key="identity-token-lifetime")
        if (self.attested_key is None) != (self.attested_cert is None):
            raise ConfigError("attested-key and attested-cert go together",
                              key="attested-key" if self.attested_key is None
                              else "attested-cert")


def load_config(path: Path | str | None = None,
                overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (flags, by TOML key;
    ``None`` values are ignored). Raises ``ConfigError`` naming the key and the reason."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key="config") from None
        try:
            values.update(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", key="config") from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_mapping(values)


def did_you_mean(name: str, known: Collection[str]) -> str:
    """``; did you mean 'rate-limit'?`` for ``rate_limit``, a typo or a flag's spelling
    (``--rate-limit``); ``""`` when nothing is close."""
    spelled = name.strip().lstrip("-").replace("_", "-").lower()
    if spelled in known and spelled != name:
        return f"; did you mean {spelled!r}?"
    close = difflib.get_close_matches(spelled, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def config_from_mapping(values: Mapping[str, Any]) -> ServerConfig:
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting{did_you_mean(name, SETTINGS)} "
                              f"(known: {', '.join(sorted(SETTINGS))})", key=name)
        field, types, _ = SETTINGS[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"must be {wanted}, not {type(value).__name__}", key=name)
        if field in ("listen", "admin_listen"):
            value = Address.parse(str(value), key=name)
        elif field == "data_dir" or field in _PATHS:
            value = Path(str(value))
        elif field == "sources":
            value = parse_sources(value, reserved=tuple(SERVER_SOURCES))
        elif isinstance(value, int) and float in types:
            value = float(value)
        fields[field] = value
    return ServerConfig(**fields)


def config_to_toml(config: ServerConfig) -> str:
    """The effective configuration as a TOML file ``--config`` reads back to the same
    ``ServerConfig`` (``serve --print-config``): every setting, with its description."""
    lines = ["# imds-server configuration (serve --print-config): the effective settings.",
             "# Every key is also a flag (--KEY) where one exists; flags win over the file."]
    tables: list[str] = []
    for name, (field, _, description) in SETTINGS.items():
        value = getattr(config, field)
        if isinstance(value, Mapping):
            tables.append(_toml_table(name, value, description))
            continue
        if field == "sources":  # an array of tables: [[source]] each
            tables += [_toml_array_table(name, spec.to_table(), description)
                       for spec in value]
            continue
        if value is None:
            lines.append(f"# {name} = ...  # {description} (not set)")
            continue
        try:
            lines.append(f"{name} = {_toml_value(value)}  # {description}")
        except TypeError as exc:  # a setting of a kind this writer does not know
            lines.append(f"# {name}: not printed ({exc})  # {description}")
    return "\n".join(lines + tables) + "\n"


def _toml_table(name: str, table: Mapping[str, Any], description: str) -> str:
    out = [f"\n# {description}", f"[{_toml_key(name)}]"]
    nested = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            nested.append((key, value))
        else:
            out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested:
        out.append(f"[{_toml_key(name)}.{_toml_key(key)}]")
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
    return "\n".join(out)


def _toml_array_table(name: str, table: Mapping[str, Any], description: str) -> str:
    out = [f"\n# {description}", f"[[{_toml_key(name)}]]"]
    out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(out)


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (Address, Path)):
        return _toml_string(str(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    if attrs.has(type(value)):  # a parsed table (its fields are its keys)
        return _toml_value({k.replace("_", "-"): v for k, v in attrs.asdict(value).items()
                            if v is not None})
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'
