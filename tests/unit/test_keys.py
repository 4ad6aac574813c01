"""A cluster's secrets on the control node: made once, 0600 in a 0700 folder, forgotten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from provisioner.clusters import keys
from provisioner.clusters.engines.vllm_site import ray_token
from provisioner.config import Mode, load_config, render_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = keys.secret(tmp_path, "c1", "engine")
    assert len(first) >= 40 and keys.secret(tmp_path, "c1", "engine") == first
    path = keys.key_path(tmp_path, "c1", "engine")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert keys.secret(tmp_path, "c1", "gateway") != first
    assert keys.existing(tmp_path, "c2", "engine") is None  # reading makes nothing
    assert not keys.key_path(tmp_path, "c2", "engine").exists()
    keys.forget(tmp_path, "c1")
    assert list((tmp_path / "keys").iterdir()) == []
    with pytest.raises(ValueError, match="one of engine, gateway, ray"):
        keys.key_path(tmp_path, "c1", "ssh")


def test_matching_is_exact_and_nothing_matches_a_missing_secret() -> None:
    assert keys.matches("s3cret", "s3cret")
    assert not keys.matches("s3cret", "s3cre")
    assert not keys.matches("s3cret", None)
    assert not keys.matches(None, "")
    assert not keys.matches("", "")


def test_a_ray_token_made_before_the_keys_folder_is_kept(tmp_path: Path) -> None:
    from provisioner.records import Cluster

    conf = tmp_path / "p.toml"
    conf.write_text(render_config(interface="eth0", address="10.1.0.1/24", mode=Mode.PROXY,
                                  dhcp_range=None, state_dir=tmp_path / "state"))  # fmt: skip
    cfg = load_config(conf)
    old = cfg.state_dir / "ray" / "pair.token"
    old.parent.mkdir(parents=True)
    old.write_text("old-token\n")
    cluster = Cluster("pair", "vllm", "m", "a", ("b",))  # type: ignore[arg-type]
    assert ray_token(cfg, cluster) == "old-token"
    assert not old.exists() and ray_token(cfg, cluster) == "old-token"
