"""The lab keeps its discovery image current (provisioner/lab/lab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_the_lab_rebuilds_a_discovery_image_from_another_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image built from an older recipe (before an upgrade) is rebuilt; one from this
    recipe is kept; none at all is built."""
    from provisioner.image.discovery import load_recipe
    from provisioner.lab import lab

    built: list[Path] = []
    monkeypatch.setattr(lab, "build_discovery", lambda recipe, images, cache, progress:
                        built.append(images))  # fmt: skip
    said: list[str] = []
    lab.ensure_discovery_image(tmp_path, said.append)
    assert built == [tmp_path] and "first time" in said[-1]
    current = tmp_path / "discovery"
    current.mkdir()
    (current / "vmlinuz").write_bytes(b"k")
    (current / "initrd").write_bytes(b"i")
    (current / "manifest.json").write_text('{"recipe_sha256": "an older recipe"}')
    lab.ensure_discovery_image(tmp_path, said.append)
    assert len(built) == 2 and "recipe changed" in said[-1]
    sha = load_recipe(lab.DISCOVERY_RECIPE).sha256
    (current / "manifest.json").write_text(f'{{"recipe_sha256": "{sha}"}}')
    lab.ensure_discovery_image(tmp_path, said.append)
    assert len(built) == 2  # kept
