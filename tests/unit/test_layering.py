"""The kernel/host split as a checked rule (style.md §4.1, §5 rule 4): kernels import no ComfyUI module, and in
nodes/ only host.py reaches into comfy internals (the V3 API comfy_api is the node layer's public interface)."""
import ast

import pytest

from tests.support.pack import REPO

HOST_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "nodes", "execution", "latent_preview",
                "node_helpers", "comfy_execution"}


def imported_roots(path):
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((REPO / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_no_host_module(path):
    assert not imported_roots(path) & (HOST_MODULES | {"comfy_api"}), path.name


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "nodes").glob("*.py") if p.name != "host.py"),
                         ids=lambda p: p.name)
def test_only_host_touches_comfy_internals(path):
    assert not imported_roots(path) & HOST_MODULES, path.name
