"""The `provisioner image` commands: build, list, show, use, diff, remove (thin: parse,
call, print).

``build`` takes a recipe file, or a recipe's name in ``images/`` (``discovery``,
``debian-bookworm``); a recipe with a ``[debian]`` table (or a ``base`` recipe and a
``[layer]``) is a full image (mmdebstrap), any other is the discovery initramfs.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from provisioner.boot.policy import wanted_image
from provisioner.cli.common import (
    add_command,
    load_cfg,
    open_registry,
    print_json,
    stamped,
    table,
)
from provisioner.clusters.roll import BACK_TIMEOUT_S, Roll
from provisioner.clusters.rolling import prepare, reboot_node
from provisioner.clusters.site import Site
from provisioner.config import Config
from provisioner.data import IMAGES
from provisioner.errors import NotFound, Refused, UsageError
from provisioner.image import guardrails
from provisioner.image.choice import image_for
from provisioner.image.diff import diff_manifests
from provisioner.image.discovery import build_discovery, default_cache
from provisioner.image.rootfs import build_rootfs
from provisioner.image.store import ImageInUse, ImageRef, ImageStore, StoredImage, users_of
from provisioner.kernel_need import refusal
from provisioner.profiles import Profile, load_profiles
from provisioner.registry import Registry

RECIPES = IMAGES


def recipe_path(text: str) -> Path:
    """A recipe file, or the name of one in ``images/`` (``debian-bookworm``)."""
    path = Path(text)
    if path.suffix == ".toml" or "/" in text:
        return path
    named = RECIPES / f"{text}.toml"
    if not named.is_file():
        have = ", ".join(sorted(p.stem for p in RECIPES.glob("*.toml")))
        raise NotFound(f"no recipe {text!r}: give a file, or one of {have}")
    return named


def is_rootfs_recipe(path: Path) -> bool:
    try:
        data = tomllib.loads(path.read_text())
        return "debian" in data or "base" in data  # a base recipe, or a layer on one
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # the builder's own reader gives the precise error


def cmd_image_build(args: argparse.Namespace) -> int:

    recipe = recipe_path(args.recipe)
    cfg = load_cfg(args)
    manifest: Any
    if is_rootfs_recipe(recipe):
        manifest = build_rootfs(recipe, cfg.image_dir, default_cache(), stamped)
    else:
        manifest = build_discovery(recipe, cfg.image_dir, default_cache(), stamped)
    image = ImageStore(cfg.image_dir).get(manifest.name)
    if args.json:
        print_json(_details(image))
        return 0
    sizes = ", ".join(f"{k} {v} B" for k, v in image.summary()["sizes"].items())
    print(f"{image.ref}: kernel {manifest.kernel_release}, {sizes} in {image.path}")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    images = ImageStore(cfg.image_dir).images()
    if args.json:
        print_json([i.summary() for i in images])
        return 0
    if not images:
        print("no images yet: provisioner image build discovery")
        return 0
    newest = {i.name: i.version for i in images}
    used = _used_by(cfg, images)
    table(
        ("IMAGE", "KIND", "KERNEL", "SIZE", "BUILT", "NODES"),
        [
            (
                i.ref + (" (newest)" if newest[i.name] == i.version else ""),
                i.kind,
                str(i.manifest.get("kernel_release", "-")),
                _mib(sum(i.summary()["sizes"].values())),
                str(i.manifest.get("built_at", "-")),
                str(len(used.get(i.ref, {}))),
            )
            for i in images
        ],
    )
    return 0


def cmd_image_show(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    image = ImageStore(cfg.image_dir).get(args.image)
    details = _details(image, _used_by(cfg, [image]).get(image.ref, {}))
    details["profiles"] = _profiles_of(cfg, image)
    if args.json:
        print_json(details)
        return 0
    print(f"{image.ref} ({image.kind}) in {image.path}")
    for key in ("kernel_release", "suite", "mirror", "built_at", "build_seconds"):
        if key in image.manifest:
            print(f"  {key}: {image.manifest[key]}")
    for key, size in details["sizes"].items():
        print(f"  {key}: {size} B ({_mib(size)}), sha256 {image.manifest[key]['sha256']}")
    layer = image.manifest.get("layer")
    if layer:
        limit = f" (max {_mib(layer['max_bytes'])})" if layer.get("max_bytes") else ""
        print(
            f"  layer {layer['recipe']} on {layer['base']}: {len(layer['packages'])} packages"
            f" on {layer['base_packages']}, +{_mib(layer['added_bytes'])} unpacked{limit}"
        )
        if layer.get("kernel_suite"):
            print(f"  kernel from {layer['kernel_suite']}")
        for name, module in (layer.get("modules") or {}).items():
            print(f"  module {name}: {module['path']} (vermagic {module['vermagic']})")
    if image.kind == "rootfs":
        print(f"  RAM a node needs for this root: {_mib(details['ram_needed'])}")
        if details["python_version"]:
            print(f"  Python {details['python_version']} (vLLM wheelhouses are built for it)")
        print(f"  profiles that boot it: {', '.join(details['profiles']) or 'none'}")
    for finding in details["findings"]:
        print(f"  {finding['level']}: {finding['reason']}")
    packages = image.manifest.get("packages") or []
    if packages:
        print(f"  packages: {len(packages)} (--json lists them)")
    users = details["nodes"]
    print(f"  nodes: {', '.join(f'{n} ({w})' for n, w in users.items()) or 'none'}")
    return 0


def cmd_image_use(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    if args.rolling or args.rollback:
        return _roll(cfg, args)
    if args.image is None:
        raise UsageError("give the image (name or name@version), or --rollback")
    ref = ImageRef.parse(args.image)
    profiles = load_profiles(cfg.cluster.profiles_dir)
    if args.profile not in profiles:
        raise NotFound(f"no profile {args.profile!r} (have: {', '.join(profiles.names)})")
    store = ImageStore(cfg.image_dir)
    image = store.get(ref)  # refuse an image that is not built
    _kernel_fits(profiles.get(args.profile), image)
    registry = open_registry(cfg)
    registry.set_profile_image(args.profile, str(ref))
    follows = "its newest version" if ref.version is None else "pinned"
    if args.json:
        print_json({"profile": args.profile, "image": str(ref), "resolves_to": image.ref})
    else:
        print(f"{args.profile} boots {ref} ({follows}: now {image.ref}) from its next boot")
    return 0


def _kernel_fits(profile: Profile | None, image: StoredImage) -> None:
    """Refused (exit 4) when ``profile`` needs a newer kernel than ``image`` has: its
    nodes would boot it and never drive their hardware (kernel_need.py)."""
    if profile is None or profile.kernel is None:
        return
    why = refusal(profile.name, profile.kernel, image.ref, image.kernel_release)
    if why is not None:
        raise Refused(why)


def cmd_image_diff(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    store = ImageStore(cfg.image_dir)
    a, b = store.get(args.a), store.get(args.b)
    diff = diff_manifests(a.ref, a.manifest, b.ref, b.manifest)
    if args.json:
        print_json(diff.as_dict())
    else:
        print("\n".join(diff.lines()))
    return 0


def cmd_image_remove(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    store = ImageStore(cfg.image_dir)
    ref = ImageRef.parse(args.image)
    targets = store.versions(ref.name) if ref.version is None else [store.get(ref)]
    if not targets:
        store.get(ref)  # raises "no image ..."
    used = _used_by(cfg, targets)
    for image in targets:
        if used.get(image.ref):
            raise ImageInUse(image.ref, used[image.ref])
    for image in targets:
        store.remove(image)
    removed = [i.ref for i in targets]
    if args.json:
        print_json({"removed": removed})
    else:
        print(f"removed {', '.join(removed)}")
    return 0


def _roll(cfg: Config, args: argparse.Namespace) -> int:
    """``image use ... --rolling`` / ``--rollback``: one node at a time, each back serving
    before the next (provisioner.clusters.roll); 1 when the roll stopped at a node."""
    if args.rollback and args.image is not None:
        raise UsageError("--rollback takes no image: it returns to the one the profile had")
    if not args.rollback and args.image is None:
        raise UsageError("give the image to roll to (name or name@version)")
    site = Site.open(cfg, open_registry(cfg))
    store = ImageStore(cfg.image_dir)
    profile = site.profiles.get(args.profile)
    now = image_for(
        args.profile,
        profile.image if profile else None,
        site.registry.profile_images(),
        cfg.boot.image,
    )
    found = store.find(now)
    current = found.ref if found else None
    plan = prepare(site, args.profile, args.image, current=current, rollback=args.rollback)
    target = store.find(plan.target)
    if target is not None:
        _kernel_fits(profile, target)
    say = (lambda line: None) if args.json else stamped
    what = "rollback" if args.rollback else "roll"
    order = ", ".join(s.name for s in plan.steps) or "none"
    say(f"{what} of {args.profile} to {plan.target}: {len(plan.steps)} node(s) ({order})")
    roll = Roll(
        site.registry,
        lambda node: reboot_node(site, node),
        timeout=args.timeout,
        progress=say,
    )
    report = roll.run(plan)
    if args.json:
        print_json(report.as_dict())
    elif report.ok:
        kept = f"; already there: {', '.join(plan.already)}" if plan.already else ""
        print(f"{args.profile} boots {plan.target}: {len(report.done)} node(s) moved{kept}")
    else:
        failed = report.done[-1]
        print(
            f"{what} stopped at {failed.node}: {failed.error}; "
            f"not moved: {', '.join(report.left) or 'none'} "
            f"(provisioner image use --profile {args.profile} --rollback)",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


# ------------------------------------------------------------------ helpers


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _details(image: StoredImage, users: dict[str, str] | None = None) -> dict[str, Any]:
    details = image.summary()
    details["manifest"] = dict(image.manifest)
    findings = guardrails.check_initrd(image.size("initrd"))
    details["findings"] = [{"level": f.level, "reason": f.reason} for f in findings]
    if image.kind == "rootfs":
        details["ram_needed"] = guardrails.ram_needed(
            image.size("squashfs"), image.size("initrd"), image.size("vmlinuz")
        )
        details["python_version"] = image.python_version  # what a vLLM wheelhouse targets
    details["nodes"] = users or {}
    return details


def _profiles_of(cfg: Config, image: StoredImage) -> list[str]:
    """The profiles whose nodes would boot ``image`` (its name, or this version pinned)."""
    chosen: dict[str, str] = {}
    if cfg.registry_url or cfg.registry_path.exists():
        registry = open_registry(cfg, readonly=True)
        try:
            chosen = registry.profile_images()
        finally:
            registry.close()
    out = []
    for profile in load_profiles(cfg.cluster.profiles_dir):
        ref = ImageRef.parse(image_for(profile.name, profile.image, chosen, cfg.boot.image))
        if ref.name == image.name and ref.version in (None, image.version):
            out.append(profile.name)
    return sorted(out)


def _used_by(cfg: Config, images: list[StoredImage]) -> dict[str, dict[str, str]]:
    """image ref -> {node: why} for nodes that booted it last or boot it next."""
    if not (cfg.registry_url or cfg.registry_path.exists()):
        return {}
    registry = open_registry(cfg, readonly=True)
    try:
        planned = _planned(cfg, registry, ImageStore(cfg.image_dir))
        booted = {n.hostname or n.mac: n.image for n in registry.nodes()}
    finally:
        registry.close()
    return {i.ref: users_of(i, booted, planned) for i in images}


def _planned(cfg: Config, registry: Registry, store: ImageStore) -> dict[str, str | None]:
    """node -> the version it boots next (the boot policy's choice, resolved)."""
    try:
        profiles = load_profiles(cfg.cluster.profiles_dir)
    except Exception:  # a broken profile set must not hide which nodes use an image
        profiles = None
    chosen = registry.profile_images()
    pins = registry.image_pins()
    planned: dict[str, str | None] = {}
    for node in registry.nodes():
        profile = profiles.get(node.profile) if profiles and node.profile else None
        wanted = wanted_image(
            node,
            image_for(
                node.profile,
                profile.image if profile else None,
                chosen,
                cfg.boot.image,
                pins.get(node.mac),
            ),
        )
        found = store.find(wanted) if wanted else None
        planned[node.hostname or node.mac] = found.ref if found else None
    return planned


def add_image_commands(sub: Any) -> None:
    image = sub.add_parser("image", help="the image store: build, list, show, use, diff, remove")
    image_sub = image.add_subparsers(dest="subcommand", required=True)
    build = add_command(
        image_sub, "build", cmd_image_build, "build an image into the store (a new version)"
    )
    build.add_argument(
        "recipe",
        help="a recipe file, or a name in images/: discovery, debian-bookworm, a layer"
        " (debian-trixie-vulkan)",
    )
    add_command(image_sub, "list", cmd_image_list, "every version in the store")
    show = add_command(
        image_sub, "show", cmd_image_show, "one image: files, sha256, RAM, nodes using it"
    )
    show.add_argument("image", help="name (its newest version) or name@version")
    use = add_command(
        image_sub, "use", cmd_image_use, "the image a profile's nodes boot from now on"
    )
    use.add_argument(
        "image",
        nargs="?",
        help="name (follows its newest version) or name@version (pinned); none with --rollback",
    )
    use.add_argument("--profile", required=True, help="a profile in hwprofiles/")
    use.add_argument(
        "--rolling",
        action="store_true",
        help="reboot the profile's nodes onto it now, one at a time, each back serving "
        "(its cluster's smoke passed) before the next; stops at the first that is not",
    )
    use.add_argument(
        "--rollback",
        action="store_true",
        help="roll back the same way: after a stopped roll, to the profile's image; "
        "else to the image it booted before its last `image use`",
    )
    use.add_argument(
        "--timeout",
        type=float,
        default=BACK_TIMEOUT_S,
        help="seconds a node may take to come back (boot, convergence, smoke)",
    )
    diff = add_command(
        image_sub, "diff", cmd_image_diff, "what changed between two images (packages, kernel)"
    )
    diff.add_argument("a", help="name@version (or name: its newest)")
    diff.add_argument("b", help="name@version (or name: its newest)")
    remove = add_command(
        image_sub, "remove", cmd_image_remove, "delete a version (refused while nodes use it)"
    )
    remove.add_argument("image", help="name@version, or name for all its versions")
