"""Telemetry configuration: the ``[telemetry]`` table of the server's TOML file.

``TelemetryConfig.from_mapping(table, cluster=..., machine=...)`` validates the whole table
and raises ``ConfigError`` naming the offending key (``telemetry.warm.interval``); an
unknown key is an error too, so a typo is not silently ignored. Every field has a default,
so an empty table is a working configuration (cold path on, warm path off). Keys may be
spelled with ``-`` like the server's own (``log-dir``) or with ``_`` as first documented
(``log_dir``); giving both spellings of one key is refused. ``to_table()`` is the effective
table (every default spelled out), which ``from_mapping`` reads back to the same config.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from imds_replica import ConfigError

#: Cluster and machine names become label values and path components of the collector's
#: store, so they are restricted to characters safe in both.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LEVELS = ("debug", "info", "warning", "error", "critical")


@attrs.frozen
class ColdConfig:
    """Local retention of every line: size-rotated gzip files, bounded by count and age."""

    max_file_bytes: int = 16 * 1024 * 1024  # rotate the live file past this size
    max_files: int = 20  # compressed files kept (oldest deleted first)
    max_age_seconds: float = 14 * 86400.0  # compressed files older than this are deleted


@attrs.frozen
class WarmConfig:
    """Batched upload of info-and-above to a collector (off when ``collector_url`` is None)."""

    collector_url: str | None = None
    interval: float = 120.0  # seconds between batches
    batch_max_records: int = 50_000  # seal a batch early when this many lines wait
    spool_max_bytes: int = 64 * 1024 * 1024  # bound of the on-disk spool; oldest dropped
    timeout: float = 10.0  # per upload request
    attempts: int = 4  # per batch and cycle; the batch stays spooled for the next cycle
    level: str = "info"
    # The volume budget (``_budget.py``): what is uploaded of what is kept locally.
    sample_rate: float = 0.01  # of successful, fast access lines (errors etc.: all)
    slow_seconds: float = 0.005  # an answer at least this slow is always uploaded
    logger_rate: float = 10.0  # component lines a second per logger ...
    logger_burst: float = 200.0  # ... in bursts of at most this many
    max_line_bytes: int = 16 * 1024  # longer lines are truncated, not dropped
    budget_lines: int = 100_000  # at most this many lines per interval from this host
    budget_reserve: float = 0.1  # ... of which this share only errors may use


@attrs.frozen
class TelemetryConfig:
    cluster: str = "default"
    machine: str = "localhost"
    log_dir: Path | None = None  # None: <data-dir>/logs, decided by the server
    level: str = "info"  # minimum level of component logs (access records are info)
    access_log: bool = True
    metrics: bool = True
    queue_size: int = 100_000  # lines waiting for the writer thread; beyond, dropped+counted
    cold: ColdConfig = ColdConfig()
    warm: WarmConfig = WarmConfig()

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any] | None, *, cluster: str | None = None,
                     machine: str | None = None) -> TelemetryConfig:
        """Build from the ``[telemetry]`` table; ``cluster``/``machine`` are the top-level keys."""
        t = _canonical(table or {}, "telemetry")
        cold_t = _table(t.pop("cold", {}), "telemetry.cold")
        warm_t = _table(t.pop("warm", {}), "telemetry.warm")
        cluster_v = _name(cluster if cluster is not None else "default", "cluster")
        machine_v = _name(machine if machine is not None else _hostname(), "machine")
        log_dir = t.pop("log_dir", None)
        if log_dir is not None and not (isinstance(log_dir, str) and log_dir):
            raise ConfigError("must be a non-empty path string", key="telemetry.log_dir")
        c, cs = cold_t, "telemetry.cold"
        cold = ColdConfig(
            max_file_bytes=_int(c, cs, "max_file_bytes", _COLD.max_file_bytes, 1024),
            max_files=_int(c, cs, "max_files", _COLD.max_files, 1),
            max_age_seconds=_num(c, cs, "max_age_seconds", _COLD.max_age_seconds, 1.0),
        )
        _no_extra(cold_t, cs, attrs.fields_dict(ColdConfig))
        w, ws = warm_t, "telemetry.warm"
        url = w.pop("collector_url", None)
        if url is not None and not (isinstance(url, str)
                                    and url.startswith(("http://", "https://"))):
            raise ConfigError("must be an http:// or https:// URL", key=f"{ws}.collector_url")
        warm = WarmConfig(
            collector_url=url,
            interval=_num(w, ws, "interval", _WARM.interval, 0.01),
            batch_max_records=_int(w, ws, "batch_max_records", _WARM.batch_max_records, 1),
            spool_max_bytes=_int(w, ws, "spool_max_bytes", _WARM.spool_max_bytes, 1024),
            timeout=_num(w, ws, "timeout", _WARM.timeout, 0.01),
            attempts=_int(w, ws, "attempts", _WARM.attempts, 1),
            level=_level(w, ws, "level"),
            sample_rate=_num(w, ws, "sample_rate", _WARM.sample_rate, 0.0),
            slow_seconds=_num(w, ws, "slow_seconds", _WARM.slow_seconds, 0.0),
            logger_rate=_num(w, ws, "logger_rate", _WARM.logger_rate, 0.0),
            logger_burst=_num(w, ws, "logger_burst", _WARM.logger_burst, 1.0),
            max_line_bytes=_int(w, ws, "max_line_bytes", _WARM.max_line_bytes, 512),
            budget_lines=_int(w, ws, "budget_lines", _WARM.budget_lines, 1),
            budget_reserve=_num(w, ws, "budget_reserve", _WARM.budget_reserve, 0.0),
        )
        for name in ("sample_rate", "budget_reserve"):
            if getattr(warm, name) > 1:
                raise ConfigError("must be a number between 0 and 1", key=f"{ws}.{name}")
        _no_extra(warm_t, ws, attrs.fields_dict(WarmConfig))
        config = cls(
            cluster=cluster_v, machine=machine_v,
            log_dir=Path(log_dir) if log_dir is not None else None,
            level=_level(t, "telemetry", "level"),
            access_log=_bool(t, "telemetry", "access_log", True),
            metrics=_bool(t, "telemetry", "metrics", True),
            queue_size=_int(t, "telemetry", "queue_size", 100_000, 16),
            cold=cold, warm=warm,
        )
        _no_extra(t, "telemetry", {*attrs.fields_dict(TelemetryConfig)} - {"cluster", "machine"})
        return config

    def to_table(self) -> dict[str, Any]:
        """The effective ``[telemetry]`` table, keys spelled with ``-``, unset ones left out
        (``cluster``/``machine`` are top-level settings, not part of it)."""
        def spelled(record: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, value in attrs.asdict(record, recurse=False).items():
                if name in skip or value is None:
                    continue
                out[name.replace("_", "-")] = str(value) if isinstance(value, Path) else value
            return out

        table = spelled(self, ("cluster", "machine", "cold", "warm"))
        table["cold"] = spelled(self.cold)
        table["warm"] = spelled(self.warm)
        return table


_COLD, _WARM = ColdConfig(), WarmConfig()  # the defaults (slots hide class attrs)


def _hostname() -> str:
    import socket

    name = socket.gethostname().split(".")[0] or "localhost"
    return name if NAME_RE.match(name) else "localhost"


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table", key=key)
    return _canonical(value, key)


def _canonical(table: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``table`` with every key in its ``_`` spelling (``log-dir`` -> ``log_dir``)."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in table.items():
        canonical = str(name).replace("-", "_")
        if canonical in out:
            raise ConfigError(f"given twice (as {given[canonical]!r} and {name!r})",
                              key=f"{prefix}.{canonical}")
        out[canonical], given[canonical] = value, str(name)
    return out


def _no_extra(table: Mapping[str, Any], prefix: str, known: Any) -> None:
    for name in table:
        spelled = {k.replace("_", "-") for k in known}
        close = difflib.get_close_matches(name.replace("_", "-"), sorted(spelled), n=1,
                                          cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown setting{hint} (known: {', '.join(sorted(spelled))})",
                          key=f"{prefix}.{name}")


def _name(value: object, key: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError("must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}", key=key)
    return value


def _int(t: dict[str, Any], section: str, name: str, default: int, minimum: int) -> int:
    value = t.pop(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}", key=f"{section}.{name}")
    return value


def _num(t: dict[str, Any], section: str, name: str, default: float, minimum: float) -> float:
    value = t.pop(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"must be a number >= {minimum}", key=f"{section}.{name}")
    return float(value)


def _bool(t: dict[str, Any], section: str, name: str, default: bool) -> bool:
    value = t.pop(name, default)
    if not isinstance(value, bool):
        raise ConfigError("must be true or false", key=f"{section}.{name}")
    return value


def _level(t: dict[str, Any], section: str, name: str) -> str:
    value = t.pop(name, "info")
    if not isinstance(value, str) or value.lower() not in LEVELS:
        raise ConfigError(f"must be one of {', '.join(LEVELS)}", key=f"{section}.{name}")
    return value.lower()
