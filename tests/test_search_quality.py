"""benchmarks/search_quality.py's statistics and architecture sampling (the
benchmark itself takes tens of minutes and is run by hand)."""

import importlib.util
import math
from pathlib import Path

import pytest

import latency_predictor
import operations

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "search_quality.py"
spec = importlib.util.spec_from_file_location("search_quality", SCRIPT)
search_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(search_quality)


def test_kendall_tau_counts_concordant_pairs_and_corrects_for_ties():
    assert search_quality.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert search_quality.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 6 pairs: 5 concordant, 1 discordant -> (5 - 1) / 6
    assert search_quality.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # tau-b with a tie in x: pairs (1,2) tied in x; 5 untied pairs all concordant
    assert search_quality.kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(5 * 6))


def test_summary_ranks_the_searched_net_among_random_ones():
    searched = {"top1": [60.0, 62.0], "supernet_top1": 80.0}
    random_nets = [{"top1": [50.0, 52.0], "supernet_top1": 70.0},
                   {"top1": [70.0, 70.0], "supernet_top1": 85.0},
                   {"top1": [40.0, 44.0], "supernet_top1": 60.0}]
    summary = search_quality.summarize(searched, random_nets)
    assert summary["rank"] == 2
    assert summary["percentile"] == pytest.approx(100 * 2 / 3)
    assert summary["random_median"] == 51.0
    assert summary["kendall_tau"] == 1.0  # supernet order = standalone order
    assert summary["seed_spread"] == pytest.approx((2 ** 0.5 + 2 ** 0.5 + 0 + 8 ** 0.5) / 4)
    assert summary["arch_spread"] > summary["seed_spread"]


def test_random_architectures_lie_within_one_percent_and_differ():
    found, draws = search_quality.random_architectures(3, 24.0, seed=5)
    predictor = latency_predictor.load_predictor()
    assert len(found) == 3 and draws >= 3
    assert len({tuple(arch) for arch, _ in found}) == 3
    for arch_config, cost in found:
        assert arch_config[0] == operations.FIXED_FIRST_OP and len(arch_config) == operations.NUM_LAYERS
        assert cost == predictor.cost(arch_config)
        assert abs(cost / 24.0 - 1) <= 0.01
    assert search_quality.random_architectures(3, 24.0, seed=5) == (found, draws)  # seeded


def test_unreachable_target_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as stop:
        search_quality.utils.run_cli(search_quality.main, search_quality.get_args_parser(), ["--target", "3"])
    assert stop.value.code == 2
    assert "outside what the search space reaches" in capsys.readouterr().err
