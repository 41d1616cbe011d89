from __future__ import annotations

from pathlib import Path

import pytest

from imds_replica import ConfigError
from imds_server import Address, ServerConfig, load_config


def test_defaults() -> None:
    config = load_config()
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin_listen == Address("127.0.0.1", 8081)
    assert (config.rate_limit, config.ip_ttl, config.demo) == (5.0, 1, False)
    assert config.tombstone_retention == 7 * 24 * 3600


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('listen = "169.254.169.254:80"\nrate-limit = 20\ncluster = "eu-1"\n'
                    'machine = "host-7"\n[telemetry]\nanything = {goes = "here"}\n')
    config = load_config(path, {"rate-limit": 0.0, "data-dir": None})
    assert config.listen == Address("169.254.169.254", 80)
    assert config.rate_limit == 0.0
    assert (config.cluster, config.machine) == ("eu-1", "host-7")
    assert config.telemetry == {"anything": {"goes": "here"}}


@pytest.mark.parametrize(("text", "key"), [
    ("colour = 1", "colour"),
    ('rate-limit = "x"', "rate-limit"),
    ("rate-limit = -1", "rate-limit"),
    ("demo = 1", "demo"),
    ("max-connections = true", "max-connections"),
    ('listen = "nohost"', "listen"),
    ('listen = "1.2.3.4:99999"', "listen"),
    ("ip-ttl = 300", "ip-ttl"),
    ("header-timeout = 0", "header-timeout"),
    ('admin-listen = "0.0.0.0:81"', "admin-listen"),
    ('listen = "127.0.0.1:9000"\nadmin-listen = "127.0.0.1:9000"', "admin-listen"),
    ('listen = "169.254.169.254:80"\nadmin-listen = "169.254.169.254:81"', "admin-listen"),
    ("telemetry = 3", "telemetry"),
    ("tombstone-retention = -1", "tombstone-retention"),
    ("refusals-before-close = -1", "refusals-before-close"),
    ('tombstone-retention = "7d"', "tombstone-retention"),
    ("[[", "config"),
])
def test_bad_config_names_key_and_reason(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_refusals_before_close_zero_means_never(tmp_path: Path) -> None:
    # ConnectionLimits documents 0 as "never close"; the config file refused it.
    path = tmp_path / "c.toml"
    path.write_text("refusals-before-close = 0\n")
    assert load_config(path).refusals_before_close == 0


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config: cannot read"):
        load_config(tmp_path / "absent.toml")


def test_loopback_admin_and_vm_may_share_host() -> None:
    ServerConfig(listen=Address("127.0.0.1", 8080), admin_listen=Address("127.0.0.1", 8081))
