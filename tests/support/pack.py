"""Import the pack as the package `comfyui_dragedit`, whatever the checkout's folder is called.

ComfyUI itself imports the pack under a path-derived name, so inside the pack every import is relative;
the tests give it one stable name. Importing the package does not import ComfyUI.
"""
import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "comfyui_dragedit"


def load_pack():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module
