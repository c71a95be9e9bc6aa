"""The bad-input suite's case count, printed in the terminal summary CI shows (test_bad_inputs.py)."""
import pytest

_TRIED = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_TRIED] = {}


@pytest.fixture(scope="session")
def bad_input_cases_tried(request):
    """kind -> number of bad-input cases run through the server."""
    return request.config.stash[_TRIED]


def pytest_terminal_summary(terminalreporter, config):
    tried = config.stash.get(_TRIED, {})
    if tried:
        terminalreporter.write_sep("-", "bad-input cases tried through the server")
        for kind, count in tried.items():
            terminalreporter.write_line(f"{kind:36s} {count}")
        terminalreporter.write_line(f"{'total':36s} {sum(tried.values())}")
