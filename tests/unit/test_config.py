from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisioner.config import (
    Mode,
    ensure_api_token,
    load_config,
    normalize_mac,
    parse_config,
    render_config,
    set_value,
    summary,
    write_config,
)
from provisioner.errors import ConfigError


def full_text(**overrides: str) -> str:
    text = render_config(
        interface="enx8cae4cf44e21",
        address="10.10.0.1",
        mode=Mode.FULL,
        dhcp_range="10.10.0.100-10.10.0.199",
        state_dir=Path("/tmp/state"),
    )
    for old, new in overrides.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_rendered_config_is_commented_and_valid() -> None:
    text = full_text()
    assert text.count("#") >= 5
    cfg = parse_config(text)
    assert cfg.network.interface == "enx8cae4cf44e21"
    assert cfg.network.server_ip == IPv4Address("10.10.0.1")
    assert str(cfg.network.subnet) == "10.10.0.0/24"
    assert cfg.network.mode is Mode.FULL
    assert cfg.dhcp.range_start == IPv4Address("10.10.0.100")
    assert cfg.dhcp.range_end == IPv4Address("10.10.0.199")
    assert (cfg.dhcp.port, cfg.dhcp.pxe_port, cfg.tftp.port, cfg.http.port) == (67, 4011, 69, 8080)
    assert cfg.tftp_root == Path("/tmp/state/tftp")
    assert cfg.http_base == "http://10.10.0.1:8080"


def test_proxy_mode_needs_no_range() -> None:
    text = render_config(
        interface="eth0", address="192.168.1.5/24", mode=Mode.PROXY, dhcp_range=None
    )
    cfg = parse_config(text)
    assert cfg.network.mode is Mode.PROXY
    assert cfg.dhcp.range_start is None


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ('mode = "full"', 'mode = "fast"', "network.mode", "proxy"),
        ('range = "10.10.0.100-10.10.0.199"', 'range = ""', "dhcp.range", "full mode"),
        (
            'range = "10.10.0.100-10.10.0.199"',
            'range = "10.10.0.199-10.10.0.100"',
            "dhcp.range",
            "after",
        ),
        (
            'range = "10.10.0.100-10.10.0.199"',
            'range = "10.10.1.1-10.10.1.9"',
            "dhcp.range",
            "not a host address",
        ),
        (
            'range = "10.10.0.100-10.10.0.199"',
            'range = "10.10.0.1-10.10.0.9"',
            "dhcp.range",
            "own address",
        ),
        ("port = 69", "port = 70000", "tftp.port", "1-65535"),
        ("port = 8080", 'port = "http"', "http.port", "1-65535"),
        ('address = "10.10.0.1/24"', 'address = "10.10.0.300/24"', "network.address", "IPv4"),
        ('efi_binary = "ipxe.efi"', 'efi_binary = "grub.efi"', "boot.efi_binary", "one of"),
        ('state_dir = "/tmp/state"', 'state_dir = "relative"', "paths.state_dir", "absolute"),
        ("pxe_port = 4011", "pxe_port = 67", "dhcp.pxe_port", "differ"),
        ('bind = ""', 'bind = "eth0"', "http.bind", "IPv4"),
        ('bind = ""', 'bind = "::"', "http.bind", '"0.0.0.0": all'),
        ("open_reads = false", 'open_reads = "no"', "http.open_reads", "true or false"),
        ("open_metrics = true", "open_metrics = 1", "http.open_metrics", "true or false"),
        ("watch_interval = 30", "watch_interval = -1", "cluster.watch_interval", "0 (off)"),
        ("watch_interval = 30", "watch_interval = true", "cluster.watch_interval", "seconds"),
        ("lease_seconds = 3600", "lease_seconds = 30", "dhcp.lease_seconds", ">= 60"),
        # A misspelt or stale key is refused (ignored, it would leave the default in force)
        (
            "profiles = ",
            "profiles_dir = ",
            "cluster.profiles_dir",
            "did you mean cluster.profiles?",
        ),
        ("auto_enroll = false", "autoenroll = true", "cluster.autoenroll", "auto_enroll?"),
        ("[paths]", "[path]", "path", "unknown table (did you mean [paths]?)"),
        ('routing = "least-outstanding"', 'routing = "random"', "gateway.routing", "one of"),
        ("open = false", 'open = false\nhosts = ["gw"]', "gateway.hosts", "IPv4"),
        ("open = false", 'open = false\nhosts = "10.0.0.7"', "gateway.hosts", "a list"),
        ("open = false", 'open = false\nlisten = "8090"', "gateway.listen", "ADDRESS:PORT"),
        ("port = 6666", "port = 0", "console.port", "port number"),
        ("port = 6666", "port = 69", "dhcp.pxe_port", "UDP ports must differ"),
        (
            "max_bytes_per_node = 1048576",
            "max_bytes_per_node = 10",
            "console.max_bytes_per_node",
            "between",
        ),
        (
            "enabled = true\nport = 6666",
            'enabled = "yes"\nport = 6666',
            "console.enabled",
            "true or",
        ),
        ("[gateway]", '[prometheus]\nhosts = ["prom"]\n[gateway]', "prometheus.hosts", "IPv4"),
    ],
)
def test_bad_values_are_refused_with_key_value_and_reason(
    old: str, new: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(full_text(**{old: new}), source="p.toml")
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"p.toml: {key} = ")


def test_reservations_are_normalised_and_checked() -> None:
    text = full_text() + '\n[dhcp.reservations]\n"AA-BB-CC-DD-EE-01" = "10.10.0.11"\n'
    # the rendered file already has an (empty) reservations table: replace it instead
    text = full_text().replace(
        "[dhcp.reservations]", '[dhcp.reservations]\n"AA-BB-CC-DD-EE-01" = "10.10.0.11"'
    )
    cfg = parse_config(text)
    assert cfg.dhcp.reservations == {"aa:bb:cc:dd:ee:01": IPv4Address("10.10.0.11")}
    bad = full_text().replace("[dhcp.reservations]", '[dhcp.reservations]\n"zz" = "10.10.0.11"')
    with pytest.raises(ConfigError, match="not a MAC"):
        parse_config(bad)
    outside = full_text().replace(
        "[dhcp.reservations]", '[dhcp.reservations]\n"aa:bb:cc:dd:ee:01" = "10.99.0.11"'
    )
    with pytest.raises(ConfigError, match="free host address"):
        parse_config(outside)


def test_not_toml_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[network\n")


def test_set_value_keeps_comments_and_refuses_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "provisioner.toml"
    write_config(path, full_text())
    before = path.read_text()
    path.write_text(before.replace("[tftp]", "# my own note about TFTP\n[tftp]"))
    cfg = set_value(path, "http.port", 8081)
    assert cfg.http.port == 8081
    text = path.read_text()
    assert "# my own note about TFTP" in text
    assert "port = 8081" in text
    with pytest.raises(ConfigError):
        set_value(path, "http.port", 0)
    assert path.read_text() == text  # refused: nothing changed
    assert load_config(path).http.port == 8081


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_api_token_is_private_and_stable(tmp_path: Path) -> None:
    token = ensure_api_token(tmp_path)
    assert len(token) >= 32
    assert (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600
    assert ensure_api_token(tmp_path) == token


@pytest.mark.parametrize(
    ("raw", "mac"),
    [
        ("AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
        ("aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff"),
        ("aabb.ccdd.eeff", "aa:bb:cc:dd:ee:ff"),
        ("aa:bb:cc:dd:ee", None),
        ("gg:bb:cc:dd:ee:ff", None),
        ("", None),
    ],
)
def test_normalize_mac(raw: str, mac: str | None) -> None:
    assert normalize_mac(raw) == mac


@pytest.mark.parametrize("pattern", ["node", "node{x}", "Node{n}", "{n}-", "n{n}{n}{"])
def test_bad_hostname_patterns(pattern: str) -> None:
    text = full_text().replace('hostname_pattern = "node{n}"', f'hostname_pattern = "{pattern}"')
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.key == "cluster.hostname_pattern"


def test_cluster_defaults() -> None:
    cfg = parse_config(full_text())
    assert cfg.cluster.hostname_pattern.format(n=3) == "node3"
    assert cfg.cluster.profiles_dir.name == "hwprofiles"
    assert cfg.cluster.watch_interval == 30.0
    off = full_text(**{"watch_interval = 30": "watch_interval = 0"})
    assert parse_config(off).cluster.watch_interval == 0.0
    assert (
        parse_config(
            full_text(**{"watch_interval = 30": "watch_interval = 2.5"})
        ).cluster.watch_interval
        == 2.5
    )


def test_http_listens_on_the_cluster_address_unless_told_otherwise() -> None:
    cfg = parse_config(full_text())
    assert cfg.http.bind == "10.10.0.1"  # the rendered file leaves bind empty
    assert parse_config(full_text(**{'bind = ""\n': ""})).http.bind == "10.10.0.1"  # no key
    assert parse_config(full_text(**{'bind = ""': 'bind = "0.0.0.0"'})).http.bind == "0.0.0.0"
    assert parse_config(full_text(**{'bind = ""': 'bind = "127.0.0.1"'})).http.bind == "127.0.0.1"


def test_reads_need_the_token_and_metrics_are_open_by_default() -> None:
    http = parse_config(full_text()).http
    assert (http.open_reads, http.open_metrics) == (False, True)
    bare = '[network]\ninterface = "eth0"\naddress = "10.10.0.1/24"\nmode = "proxy"\n'
    http = parse_config(bare).http
    assert (http.bind, http.open_reads, http.open_metrics) == ("10.10.0.1", False, True)
    swapped = {
        "open_reads = false": "open_reads = true",
        "open_metrics = true": "open_metrics = false",
    }
    http = parse_config(full_text(**swapped)).http
    assert (http.open_reads, http.open_metrics) == (True, False)


def test_the_http_settings_are_explained_in_the_rendered_file() -> None:
    http = full_text().split("[http]", 1)[1].split("\n[", 1)[0]
    for key, comment in (
        ('bind = ""', '"0.0.0.0" listens on every interface'),
        ("open_reads = false", "needs the API token"),
        ("open_metrics = true", "/metrics without the token"),
    ):
        assert key in http and comment in http


def test_config_show_summary_has_the_http_settings_in_effect() -> None:
    shown = summary(parse_config(full_text(), source="p.toml"))
    assert shown["http"] == {"bind": "10.10.0.1", "open_reads": False, "open_metrics": True}
    assert shown["ports"] == {"dhcp": 67, "pxe": 4011, "tftp": 69, "http": 8080}
    assert shown["address"] == "10.10.0.1/24" and shown["source"] == "p.toml"


def test_the_prometheus_section() -> None:
    cfg = parse_config(full_text())
    assert cfg.prometheus.node_exporter_port == 9100 and cfg.prometheus.hosts == ()
    text = full_text(**{"[gateway]": '[prometheus]\nhosts = ["10.10.0.8"]\n[gateway]'})
    assert parse_config(text).prometheus.hosts == ("10.10.0.8",)


def test_the_gateway_section() -> None:
    cfg = parse_config(full_text(**{"open = false": 'open = false\nhosts = ["10.10.0.7"]'}))
    assert cfg.gateway.hosts == ("10.10.0.7",) and not cfg.gateway.open
    assert cfg.gateway.routing == "least-outstanding" and cfg.gateway.max_attempts == 3


def test_consoles_are_kept_by_default_and_can_be_turned_off() -> None:
    cfg = parse_config(full_text())
    assert (cfg.console.enabled, cfg.console.port) == (True, 6666)
    assert cfg.console.max_bytes_per_node == 1024 * 1024
    off = parse_config(full_text(**{"enabled = true\nport = 6666": "enabled = false\nport = 69"}))
    assert not off.console.enabled  # and, off, its port may be another service's
