"""Which image an enrolled node boots. Pure: names in, a name out.

First that says wins: the version a rolling upgrade pinned the node to (``image use
--rolling``, until the roll ends), the registry's choice for its profile (``provisioner
image use``), the profile's ``image:``, the config's ``boot.image``. The boot policy
(:mod:`provisioner.boot.policy`), the enroller's kernel check and the vLLM engine's Python
tag (:mod:`provisioner.node_image`) all ask this one function.
"""

from __future__ import annotations

from collections.abc import Mapping


def image_for(
    profile: str | None,
    profile_image: str | None,
    chosen: Mapping[str, str],
    default: str,
    pin: str | None = None,
) -> str:
    """The image ref an enrolled node of ``profile`` boots (see the module's docstring);
    ``pin``: the version a roll pinned this node to."""
    if pin:
        return pin
    if profile is not None and profile in chosen:
        return chosen[profile]
    return profile_image or default
