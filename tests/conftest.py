"""Test layers: unit (kernels, plain torch), host (ComfyUI in-process), e2e (a real server), browser.

Every layer runs in one `pytest` command. A layer whose host is missing fails with the command that
builds it; it never skips.
"""
import pathlib

import pytest

from tests.support.pack import load_pack

load_pack()

_LAYERS = ("unit", "host", "e2e", "browser")


def pytest_collection_modifyitems(config, items):
    """Mark each test with its layer, taken from its folder (tests/<layer>/...)."""
    for item in items:
        parts = pathlib.Path(str(item.fspath)).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))


def pytest_terminal_summary(terminalreporter):
    """Print how many tests of each layer ran, so CI shows that the host layers really ran."""
    counts = {layer: {"passed": 0, "failed": 0} for layer in _LAYERS}
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if report.when != "call" and outcome == "passed":
                continue
            for layer in _LAYERS:
                if layer in report.keywords:
                    counts[layer][outcome] += 1
    terminalreporter.write_sep("-", "tests per layer")
    for layer, c in counts.items():
        terminalreporter.write_line(f"{layer:8s} {c['passed']} passed, {c['failed']} failed")


@pytest.fixture(scope="session")
def comfy_server():
    """One real ComfyUI server (main.py --cpu, loopback) shared by the e2e and browser layers."""
    from tests.support.server import ComfyServer

    with ComfyServer() as server:
        yield server
