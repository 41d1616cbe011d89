"""``[[source]]`` tables: checked whole at start, errors naming the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from imds_replica import ConfigError, FileSource, PollSource, StreamSource
from imds_server._config import load_config
from imds_server._sources import build_source


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return load_config(path)


def test_three_kinds(tmp_path: Path) -> None:
    config = _load(tmp_path, f"""
[[source]]
kind = "file"
name = "files"
directory = "{tmp_path}"
interval = 2

[[source]]
kind = "poll"
name = "region"
url = "http://127.0.0.1:9/events"
interval = 30
stale-after = 90
expired-after = 900

[[source]]
kind = "stream"
name = "fleet"
servers = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
cluster = "west"
host = "host-7"
user = "host-7"
password = "secret"
""")
    specs = config.sources  # type: ignore[attr-defined]
    assert [s.kind for s in specs] == ["file", "poll", "stream"]
    built = [build_source(s) for s in specs]
    assert isinstance(built[0], FileSource)
    assert built[0].policy.interval == 2.0
    assert isinstance(built[1], PollSource)
    assert (built[1].policy.interval, built[1].policy.stale_after,
            built[1].policy.expired_after) == (30.0, 90.0, 900.0)
    assert isinstance(built[2], StreamSource)
    assert built[2].stream == "IMDS_WEST"
    assert built[2].options.user == "host-7"
    assert (built[2].batch, built[2].prefetch) == (256, True)  # the defaults


def test_stream_batch_and_prefetch(tmp_path: Path) -> None:
    config = _load(tmp_path, '[[source]]\nkind = "stream"\nname = "fleet"\n'
                   'servers = ["nats://a"]\ncluster = "c"\nhost = "h"\nbatch = 64\n'
                   'prefetch = false\n')
    source = build_source(config.sources[0])  # type: ignore[attr-defined]
    assert isinstance(source, StreamSource)
    assert (source.batch, source.prefetch) == (64, False)


def test_no_sources_by_default(tmp_path: Path) -> None:
    assert _load(tmp_path, "").sources == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("table", "key", "reason"), [
    ('kind = "ftp"\nname = "x"', "source[1].kind", "must be one of"),
    ('kind = "file"\nname = "Bad Name"\ndirectory = "/d"', "source[1].name", "must match"),
    ('kind = "file"\nname = "x"', "source[1] (x).directory", "missing"),
    ('kind = "file"\nname = "x"\ndirectory = "/d"\nurl = "http://a"', "source[1] (x).url",
     "unknown key"),
    ('kind = "poll"\nname = "x"\nurl = "ftp://a"', "source[1] (x).url", "http"),
    ('kind = "poll"\nname = "x"\nurl = "http://a"\ninterval = "5"', "source[1] (x).interval",
     "must be int or float"),
    ('kind = "poll"\nname = "x"\nurl = "http://a"\nstale-after = 1\ninterval = 5',
     "source[1] (x).interval", "interval <= stale_after"),
    ('kind = "stream"\nname = "x"\nservers = ["nats://a"]\ncluster = "c"', "source[1] (x).host",
     "missing"),
    ('kind = "stream"\nname = "x.y"\nservers = ["nats://a"]\ncluster = "c"\nhost = "h"',
     "source[1] (x.y).source", "no dots"),
    ('kind = "stream"\nname = "x"\nservers = ["http://a"]\ncluster = "c"\nhost = "h"',
     "source[1] (x).servers", "nats://"),
    ('kind = "stream"\nname = "x"\nservers = ["nats://a"]\ncluster = "C"\nhost = "h"',
     "source[1] (x).cluster", "lower-case"),
    ('kind = "stream"\nname = "x"\nservers = ["nats://a"]\ncluster = "c"\nhost = "h"\n'
     'user = "u"', "source[1] (x).user", "go together"),
    ('kind = "stream"\nname = "x"\nservers = ["nats://a"]\ncluster = "c"\nhost = "h"\n'
     'batch = 0', "source[1] (x).batch", "must be in 1..10000"),
    ('kind = "stream"\nname = "x"\nservers = ["nats://a"]\ncluster = "c"\nhost = "h"\n'
     'prefetch = 1', "source[1] (x).prefetch", "must be bool"),
    ('kind = "file"\nname = "guest"\ndirectory = "/d"', "source[1] (guest).name",
     "server itself writes"),
])
def test_bad_tables_are_refused_naming_table_and_key(tmp_path: Path, table: str, key: str,
                                                     reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        _load(tmp_path, f"[[source]]\n{table}\n")
    assert caught.value.key == key


def test_duplicate_names(tmp_path: Path) -> None:
    table = '[[source]]\nkind = "file"\nname = "x"\ndirectory = "/d"\n'
    with pytest.raises(ConfigError, match="already the name") as caught:
        _load(tmp_path, table * 2)
    assert caught.value.key == "source[2] (x).name"


def test_source_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be list"):
        _load(tmp_path, 'source = "x"\n')


def test_print_config_writes_the_tables_back(tmp_path: Path) -> None:
    from imds_server._config import config_to_toml

    config = _load(tmp_path, '''
[[source]]
kind = "stream"
name = "fleet"
servers = ["nats://127.0.0.1:4222"]
cluster = "west"
host = "host-7"
stale-after = 90

[[source]]
kind = "file"
name = "files"
directory = "/d"
''')
    printed = config_to_toml(config)  # type: ignore[arg-type]
    assert printed.count("\n[[source]]\n") == 2
    again = _load(tmp_path, printed)
    assert again == config


def test_stream_sources_whose_consumer_names_collide_are_refused(tmp_path: Path) -> None:
    """A source ``x-all`` next to ``x`` on one host: ``x``'s all lane and ``x-all``'s host
    lane would both be ``imds-host-7-x-all``."""
    tables = "".join(f"""
[[source]]
kind = "stream"
name = "{name}"
servers = ["nats://127.0.0.1:4222"]
cluster = "west"
host = "host-7"
""" for name in ("x", "x-all"))
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, tables)
    message = str(caught.value)
    assert "imds-host-7-x-all" in message
    assert "source 'x'" in message
    assert "source 'x-all'" in message
