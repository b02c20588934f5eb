"""Render a Kustomize directory, for the tests, on machines without kustomize.

It knows only what deploy/kubernetes uses: resources (files and directories), components,
JSON 6902 patches with a kind/name target, and image tags. Anything else is an error, so a
kustomization that outgrows it fails loudly instead of rendering wrongly. Where kubectl is
installed, tests/test_deploy.py checks that this renders what ``kubectl kustomize`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["apply_json_patch", "render"]

Resource = dict[str, Any]

_KNOWN_FIELDS = frozenset({"apiVersion", "kind", "resources", "components", "patches", "images"})


def render(directory: Path, *, components: Sequence[Path] = ()) -> list[Resource]:
    """The resources `directory` renders to; `components` are opted into as its own would be."""
    return _render(directory, [], list(components))


def _render(directory: Path, inherited: list[Resource], extra_components: list[Path]) -> list[Resource]:
    kustomization = _load(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - _KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: this renderer does not know {sorted(unknown)}")
    resources = inherited
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += _render(path, [], []) if path.is_dir() else _load(path)
    # as Kustomize does: components after the resources, before this kustomization's own patches
    for component in [*(directory / entry for entry in kustomization.get("components", [])), *extra_components]:
        resources = _render(component, resources, [])
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        if set(target) != {"kind", "name"}:
            raise ValueError(f"{directory}: patch targets other than kind and name are not supported: {target}")
        matches = [r for r in resources if (r["kind"], r["metadata"]["name"]) == (target["kind"], target["name"])]
        if len(matches) != 1:
            raise ValueError(f"{directory}: the patch {patch['path']} targets {len(matches)} resources, not 1")
        operations = _load(directory / patch["path"])[0]
        if not isinstance(operations, list):
            raise ValueError(f"{directory}: {patch['path']} is not a JSON 6902 patch (a list of operations)")
        apply_json_patch(matches[0], operations)
    for image in kustomization.get("images", []):
        for container in _containers(resources):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return resources


def apply_json_patch(document: Any, operations: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 add, remove, replace and move operations to `document` in place."""
    for operation in operations:
        op, path = operation["op"], operation["path"]
        if op == "add":
            _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            _remove(document, path)
        elif op == "replace":
            _remove(document, path)
            _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "move":
            _add(document, path, _remove(document, operation["from"]))
        else:
            raise ValueError(f"JSON patch operation {op!r} is not supported")


def _parent(document: Any, pointer: str) -> tuple[Any, str]:
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON pointer")
    tokens = [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]
    node = document
    for token in tokens[:-1]:
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node, tokens[-1]


def _add(document: Any, pointer: str, value: Any) -> None:
    parent, token = _parent(document, pointer)
    if isinstance(parent, list):
        index = len(parent) if token == "-" else int(token)
        if not 0 <= index <= len(parent):
            raise ValueError(f"{pointer}: index out of range")
        parent.insert(index, value)
    else:
        parent[token] = value


def _remove(document: Any, pointer: str) -> Any:
    parent, token = _parent(document, pointer)
    try:
        return parent.pop(int(token) if isinstance(parent, list) else token)
    except (IndexError, KeyError):
        raise ValueError(f"{pointer}: nothing there") from None


def _containers(resources: list[Resource]) -> list[dict[str, Any]]:
    found = []
    for resource in resources:
        pod = resource.get("spec", {}).get("template", {}).get("spec", {})
        found += [*pod.get("initContainers", []), *pod.get("containers", [])]
    return found


def _load(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
