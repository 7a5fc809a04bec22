"""Shared pytest setup: the flat scripts at the repo root are importable;
fixtures more than one test file needs; a time limit per test."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIT_FIXTURE_REPEATS = 5  # timed rounds of the fitted_table fixture (see it)
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def fitted_table(tmp_path_factory):
    """A CPU latency table fitted here, at the smallest size build allows
    (no warm-up): built once for every test that needs one. Five rounds, not
    one: a single timing on a shared 2-core machine is off by 5-25% at times,
    and at this size (six residual degrees of freedom) one round put the fixed
    part below 0 on CI, which build rightly refuses; the median of five
    rejects such outliers."""
    import latency_build

    path = str(tmp_path_factory.mktemp("lut") / "cpu_fit.json")
    latency_build.main(latency_build.get_args_parser().parse_args(
        ["build", "--method", "fit", "--num_networks", str(latency_build.MIN_FIT_NETWORKS),
         "--repeats", str(FIT_FIXTURE_REPEATS), "--warmup_s", "0", "--out", path]))
    return path


@pytest.fixture
def spy(monkeypatch):
    """spy(module, name): module.name still runs, and the returned list
    collects the first argument of every call (as a list)."""
    def watch(module, name):
        calls, real = [], getattr(module, name)

        def recording(first, *args, **kwargs):
            calls.append(list(first))
            return real(first, *args, **kwargs)
        monkeypatch.setattr(module, name, recording)
        return calls
    return watch


@pytest.fixture(scope="session")
def seal_search():
    """seal_search(folder): a search folder made by hand (arch.json,
    metrics.jsonl, args.json) sealed as a finished search seals its own, so
    that tests can stand it in for one; left as it is where arch.json or
    metrics.jsonl cannot be read (the test is then about that)."""
    import json

    import search_imagenet
    import utils

    def seal(folder):
        folder = Path(folder)
        try:
            result = json.loads((folder / "arch.json").read_text())
            rows = utils.read_json_lines(str(folder / "metrics.jsonl"))
            arguments = json.loads((folder / "args.json").read_text())
        except (ValueError, RecursionError, utils.UserError):
            return
        if isinstance(result, dict):
            result["seal"] = search_imagenet.search_seal(result, rows, arguments)
            (folder / "arch.json").write_text(json.dumps(result))
    return seal


@pytest.fixture(scope="session")
def search_arguments():
    """search_arguments(*options): the args.json a search started with
    these search_imagenet.py options writes (its schedule filled in), for a
    search folder made by hand."""
    import search_imagenet

    def arguments(*options):
        return vars(search_imagenet.resolve_schedule(search_imagenet.get_args_parser().parse_args(list(options))))
    return arguments


# Every test gets TIMEOUT_S (pytest.ini); one marked slow, which runs a
# script end to end (several searches, a benchmark, torchrun), gets
# SLOW_TIMEOUT_S. `-m "not slow"` leaves them out for a quick pass.
SLOW_TIMEOUT_S = 600


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
