"""Imports go one way in every package of the tree: no module of mlesam_core, mlesam_ros, training, benchmarks or
demo imports (directly or through others, at module level, inside functions, or under TYPE_CHECKING) a module that
imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

from fixtures import REPO_ROOT

PACKAGES = ("mlesam_core", "mlesam_ros", "training", "benchmarks", "demo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the tree's modules it imports, from every import statement in its source (ast.walk). `from pkg
    import name` leads to the module pkg.name where there is one, else to pkg (its __init__)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                candidates = [n for n in names if n in modules]
                if len(candidates) < len(names):  # some names are objects of the module (or package) itself
                    candidates.append(node.module)
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in modules and c != name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_package_of_the_tree_has_an_import_cycle():
    graph = import_graph()
    for package in PACKAGES:  # the graph was really read, every package of it
        assert any(name.startswith(f"{package}.") and targets for name, targets in graph.items()), package
    assert "training.eval_request" in graph["training.predict"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {**import_graph()}
    lora, build = "mlesam_core.model.lora", "mlesam_core.model.build"
    graph[lora] = {*graph[lora], build}  # lora -> build -> ... -> lora
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and lora in cycle
    graph = {**import_graph()}
    graph["training.predict"] = {*graph["training.predict"], "training.evaluate"}  # across modules of a package
    assert find_cycle(graph) is not None


def test_a_submodule_import_leads_to_the_submodule_and_a_name_import_to_its_module():
    graph = import_graph()
    assert "mlesam_core.data.base" in graph["mlesam_core.data.deliver"]  # from mlesam_core.data import base
    assert "mlesam_core.data" not in graph["mlesam_core.data.deliver"]
    assert "mlesam_core.model" in graph["mlesam_core.model.summary"]  # from mlesam_core.model import build_model


def test_the_builder_injects_the_sam2_parts_it_built():
    from fixtures.model import tiny_config

    from mlesam_core.model import build_model
    from mlesam_core.model.sam2_parts import build_sam2_parts

    config = tiny_config()
    parts = build_sam2_parts(config)
    model = type(build_model(config))(config, parts)
    assert model.image_encoder is parts.image_encoder and model.backbone_id == parts.backbone_id


def test_two_builds_of_one_config_have_identical_weights_and_init_seed_changes_only_the_trainable_ones():
    import torch
    from fixtures.model import tiny_config

    from mlesam_core.model import build_model

    config = tiny_config()
    first, second, reseeded = build_model(config), build_model(config), build_model(config, init_seed=7)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value, rtol=0, atol=0, msg=key)
    trainable = first.adapter_state_dict()
    changed = [k for k, v in reseeded.adapter_state_dict().items() if not torch.equal(v, trainable[k])]
    assert any(".lora_A" in k for k in changed) and any(k.startswith("fusion.") for k in changed)
    frozen = [k for k in first.state_dict() if k not in trainable]
    assert all(torch.equal(reseeded.state_dict()[k], first.state_dict()[k]) for k in frozen)
