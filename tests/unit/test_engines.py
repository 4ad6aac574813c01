"""The engine seam: each engine's recipes, teardown and units, from recipe data."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from provisioner.clusters.engines import ENGINES, engine_for, engine_names
from provisioner.clusters.engines.base import teardowns, units_by_host
from provisioner.clusters.spec import ClusterError
from provisioner.postinstall.plan import Teardown
from provisioner.postinstall.recipes import DEFAULT_RECIPES, load_recipe, parse_recipe
from provisioner.profiles import Engine
from provisioner.records import Cluster, Served
from provisioner.smoke.report import Check, Report
from provisioner.smoke.verdict import verdict
from provisioner.states import NodeEvent

LLAMA = Cluster("v100s", Engine.LLAMA_RPC, "m", "node0", ("node1", "node2"))
VLLM_ONE = Cluster("rtx", Engine.VLLM, "q", "gpu0", serve=(
    Served("chat", "q", 0.45, 8000), Served("embed", "e", 0.3, 8001)))  # fmt: skip
VLLM_RAY = Cluster("pair", Engine.VLLM, "q", "a", ("b",), serve=(Served("q", "q", None, 8000),))


def test_every_engine_the_profiles_name_but_none_has_a_module() -> None:
    assert set(ENGINES) == {e for e in Engine if e is not Engine.NONE}
    assert engine_names() == ["llama-rpc", "vllm"]
    with pytest.raises(ClusterError, match="available: llama-rpc, vllm"):
        engine_for(Engine.NONE)
    assert engine_for("vllm") is ENGINES[Engine.VLLM]


def test_a_cluster_engine_is_typed_even_from_a_string() -> None:
    c = Cluster("c", "vllm", "m", "h")  # type: ignore[arg-type]  # as JSON and old callers give it
    assert c.engine is Engine.VLLM
    assert Cluster.from_json(c.to_json()).engine is Engine.VLLM
    with pytest.raises(ValueError):
        Cluster("c", "tgi", "m", "h")  # type: ignore[arg-type]


def test_llama_rpc_teardown_stops_each_role_s_unit_and_drops_the_rpc_firewall() -> None:
    undo = teardowns(engine_for(LLAMA), LLAMA)
    node_table = "nft delete table inet provisioner_node"  # the base recipe's firewall
    assert undo["node0"] == Teardown(("llama-server.service",), (node_table,))
    assert undo["node1"] == Teardown(
        ("llama-rpc.service",), (node_table, "nft delete table inet provisioner_llama_rpc")
    )
    line = undo["node1"].shell()
    assert line.startswith("systemctl disable --now llama-rpc.service 2>/dev/null; ")
    assert "rm -f /etc/systemd/system/llama-rpc.service" in line
    assert "{ nft delete table inet provisioner_llama_rpc ; } 2>/dev/null" in line
    assert line.endswith("systemctl daemon-reload ; true")


def test_vllm_units_are_one_per_served_model_on_the_head_and_ray_only_across_nodes() -> None:
    assert engine_for(VLLM_ONE).recipes(VLLM_ONE) == ("vllm",)
    assert units_by_host(engine_for(VLLM_ONE), VLLM_ONE) == {
        "gpu0": ("vllm-rtx-chat.service", "vllm-rtx-embed.service")
    }
    assert engine_for(VLLM_RAY).recipes(VLLM_RAY) == ("vllm", "ray")
    undo = teardowns(engine_for(VLLM_RAY), VLLM_RAY)
    assert undo["a"].units == ("vllm-pair-q.service", "ray-pair.service")
    assert undo["b"] == Teardown(
        ("ray-pair.service",),
        ("nft delete table inet provisioner_node", "nft delete table inet provisioner_ray"),
    )


def test_vllm_fills_in_one_served_model_and_llama_serves_one_name_on_its_port() -> None:
    plain = Cluster("c", Engine.VLLM, "q", "h")
    assert engine_for(plain).complete(plain).served() == (Served("q", "q", None, 8000),)
    named = Cluster("c", Engine.LLAMA_RPC, "m", "h", serve=(Served("smol", "m", None, 8000),))
    assert engine_for(LLAMA).complete(named).served() == (Served("smol", "m", None, 8080),)
    assert engine_for(LLAMA).complete(LLAMA).served() == (Served("m", "m", None, 8080),)
    two = Cluster("c", Engine.LLAMA_RPC, "m", "h", serve=(Served("a", "m", None, 1),) * 2)
    with pytest.raises(ClusterError, match="llama-rpc serves one model"):
        engine_for(LLAMA).complete(two)
    with pytest.raises(ClusterError, match="a memory share is for --engine vllm"):
        engine_for(LLAMA).complete(replace(named, serve=(Served("a", "m", 0.5, 1),)))
    with pytest.raises(ClusterError, match="give one model"):
        engine_for(LLAMA).complete(replace(named, model="other"))


@pytest.mark.parametrize("name", sorted(p.stem for p in DEFAULT_RECIPES.glob("*.yaml")))
def test_every_unit_a_recipe_installs_is_named_in_its_teardown(name: str) -> None:
    """Smoke checks and `cluster remove` stop exactly the units under teardown:."""
    recipe = load_recipe(name)
    named = {(u, role) for t in recipe.teardown for u in t.units for role in t.roles}
    for step in recipe.steps:
        if step.kind == "unit":
            for role in step.roles:
                assert (step.body["name"], role) in named, (name, step.name, role)


@pytest.mark.parametrize(
    ("teardown", "reason"),
    [
        ("teardown: {units: [a]}", "teardown: a list"),
        ("teardown:\n  - {units: [a], colour: red}", "each entry has units"),
        ("teardown:\n  - {roles: [head]}", "names units or commands"),
        ("teardown:\n  - {units: [a], roles: [boss]}", "roles among"),
        ("teardown:\n  - {units: a}", "units: a list of strings"),
    ],
)
def test_a_bad_teardown_is_refused_with_file_and_line(teardown: str, reason: str) -> None:
    text = f"name: x\nsteps:\n  - {{name: a, command: {{check: c, action: a}}}}\n{teardown}\n"
    with pytest.raises(Exception, match=rf"x\.yaml:\d+: .*{re.escape(reason)}"):
        parse_recipe(text, DEFAULT_RECIPES / "x.yaml")


def _report(*checks: Check) -> Report:
    return Report("c", checks, {})


def test_the_verdict_degrades_on_floors_only_and_fails_on_anything_else() -> None:
    ok = Check("health", True)
    slow = Check("decode_tokens_per_s[chat]", False, 3.0, 10.0)
    down = Check("unit[n1:llama-rpc.service]", False, "failed", "active")
    assert verdict(_report(ok)) == (NodeEvent.SMOKE_PASS, "smoke passed")
    assert verdict(_report(ok, slow)) == (
        NodeEvent.SMOKE_DEGRADED,
        "below floor: decode_tokens_per_s[chat]",
    )
    event, reason = verdict(_report(slow, down))
    assert event is NodeEvent.FAIL and reason == (
        "smoke failed: decode_tokens_per_s[chat], unit[n1:llama-rpc.service]"
    )
