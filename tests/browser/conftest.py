"""The real frontend in Debian's chromium: the one ComfyUI 0.3.75 ships (1.32.9) and the newest
comfyui-frontend-package (scripts/newest_frontend.txt), both served by the shared test server (the newest to tabs
with its cookie, tests/support/second_frontend), so both share one output cache; test_frontend.py checks a real
--front-end-root server serves the newest one the same."""
import pathlib

import pytest

from tests.support.host import CHROMIUM
from tests.support.pack import REPO
from tests.support.server import FRONTENDS, ComfyServer

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = REPO / "tests" / "artifacts"
SHIPPED, NEWEST = list(FRONTENDS)
VIEWPORT = {"width": 1920, "height": 1000}   # a desktop browser window; the examples' saved view fits it



@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is missing: run `bash scripts/dev-env.sh --ui`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def newest_server():
    """A server of its own started with --front-end-root at the newest frontend."""
    with ComfyServer(frontend=NEWEST) as server:
        yield server


def open_page(browser, server, frontend=None):
    """A fresh tab on the server's ComfyUI page in `frontend` (default: the server's own), the graph ready, page
    errors collected in page.errors."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_cookies(server.page_cookie(frontend or server.frontend))
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda err: tab.errors.append(str(err)))
    tab.goto(server.url + "/", wait_until="domcontentloaded")
    tab.wait_for_function("window.app && window.app.graph && window.app.canvas && window.app.extensionManager",
                          timeout=90000)
    tab.wait_for_function("app.extensions.some(e => e.name === 'DragEdit.Points')", timeout=30000)
    version = tab.evaluate("window.__COMFYUI_FRONTEND_VERSION__")
    assert version == (frontend or server.frontend), f"the page runs frontend {version}"
    tab.keyboard.press("Escape")
    return tab


@pytest.fixture
def page(browser, comfy_server):
    """A tab on the shipped frontend, classic display."""
    from tests.browser import ui

    tab = open_page(browser, comfy_server)
    ui.set_display(tab, "classic")
    yield tab
    tab.context.close()


def artifact(name) -> pathlib.Path:
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def pytest_terminal_summary(terminalreporter):
    from tests.browser.ui import EXAMPLE_RUNS

    if not EXAMPLE_RUNS:
        return
    examples = sorted({r[0] for r in EXAMPLE_RUNS})
    displays = sorted({r[1] for r in EXAMPLE_RUNS})
    frontends = sorted({r[2] for r in EXAMPLE_RUNS})
    terminalreporter.write_sep("-", "example workflows run from the frontend (graphToPrompt, Run)")
    terminalreporter.write_line(f"{len(EXAMPLE_RUNS)} runs succeeded: {len(examples)} examples x {len(displays)} "
                                f"displays ({', '.join(displays)}) x {len(frontends)} frontends "
                                f"({', '.join(frontends)})")
