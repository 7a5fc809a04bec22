"""benchmarks/search_quality.py: its statistics, its architecture sampling,
and its whole pipeline at toy size (--toy: two searches, two random nets,
two seeds, one retraining epoch each; the full benchmark takes over an hour
and is run by hand)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
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


def test_summary_places_each_searched_net_among_the_random_ones():
    searched = [{"name": "searched 1", "top1": [60.0, 62.0], "supernet_top1": [80.0]},
                {"name": "searched 2", "top1": [80.0, 80.0], "supernet_top1": [90.0]}]
    random_nets = [{"name": "random 1", "top1": [50.0, 52.0], "supernet_top1": [70.0]},
                   {"name": "random 2", "top1": [70.0, 70.0], "supernet_top1": [85.0]},
                   {"name": "random 3", "top1": [40.0, 44.0], "supernet_top1": [60.0]}]
    summary = search_quality.summarize(searched, random_nets, supernets=1)
    random_means = [51.0, 70.0, 42.0]
    mean = sum(random_means) / 3
    std = math.sqrt(sum((value - mean) ** 2 for value in random_means) / 2)
    first, second = summary["searched"]
    assert (first["rank"], second["rank"]) == (2, 1)
    assert first["percentile"] == pytest.approx(100 * 2 / 3) and second["percentile"] == 100.0
    assert first["z"] == pytest.approx((61.0 - mean) / std) and second["z"] == pytest.approx((80.0 - mean) / std)
    assert summary["random_median"] == 51.0
    assert summary["arch_spread"] == pytest.approx(std)
    # pooled over all five nets: variances 2, 0, 2, 0, 8
    assert summary["seed_spread"] == pytest.approx(math.sqrt((2 + 0 + 2 + 0 + 8) / 5))
    supernet = summary["supernets"][0]
    assert supernet["kendall_tau"] == 1.0  # supernet order = standalone order
    assert supernet["control"]["name"] == "random 2" and supernet["control"]["percentile"] == 100.0 * 2 / 3


def test_bootstrap_interval_brackets_the_statistic_and_narrows_with_agreement():
    xs = list(range(20))
    noisy = [x + (7 if x % 3 == 0 else -5) for x in xs]
    low, high = search_quality.bootstrap_interval(xs, noisy, search_quality.kendall_tau, samples=500)
    tau = search_quality.kendall_tau(xs, noisy)
    assert -1 <= low < tau < high <= 1
    assert search_quality.bootstrap_interval(xs, xs, search_quality.kendall_tau, samples=200) == (1.0, 1.0)
    # resampling is seeded: the same interval twice
    assert search_quality.bootstrap_interval(xs, noisy, search_quality.kendall_tau, samples=500) == (low, high)


def test_op_mix_counts_skips_and_averages_the_mbconvs():
    arch = [operations.FIXED_FIRST_OP, "SkipConnect", "MBK3E6", "MBK7E3"] + ["SkipConnect"] * 18
    mix = search_quality.op_mix(arch)
    # the fixed first op is not searched; layers 1, 3, 6 and 13 have stride 2 (here 1, 6 and 13 skip)
    assert mix == {"skips": 19, "strided_skips": 3, "kernel": 5.0, "expansion": 4.5}


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


@pytest.mark.slow
def test_the_whole_benchmark_runs_at_toy_size_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "sq"
    command = [sys.executable, str(SCRIPT), "--toy", "--random_nets", "2", "--seeds", "2", "--reference", "none",
               "--out", str(out)]
    environment = dict(os.environ, OMP_NUM_THREADS="1", LIGHTNAS_DATA=str(tmp_path / "data"))
    first = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((out / "search_quality.json").read_text())
    nets = {net["name"]: net for net in report["networks"]}
    assert sorted(nets) == ["random 1", "random 2", "searched 1", "searched 2"]
    predictor = latency_predictor.load_predictor()
    for index, seed in enumerate((0, 1)):  # two independent searches, their arch.json as found
        arch = json.loads((out / "searches" / f"seed{seed}" / "arch.json").read_text())
        assert arch["search"]["seed"] == seed and arch["target"] == 24.0
        assert nets[f"searched {index + 1}"]["arch_config"] == arch["arch_config"]
    for name, net in nets.items():
        assert net["predicted"] == pytest.approx(predictor.cost(net["arch_config"]))
        if net["kind"] == "random":
            assert abs(net["predicted"] / 24.0 - 1) <= 0.01
        assert len(net["supernet_top1"]) == 2  # one score per search's supernet
        assert len(net["top1"]) == 2
        for seed, top1 in enumerate(net["top1"]):  # paired seeds: seed s for every network
            folder = out / "retrain" / f"{name}-seed{seed}"
            command_line = json.loads((folder / "retrain_command.json").read_text())
            assert command_line[command_line.index("--seed") + 1] == str(seed)
            assert json.loads(command_line[command_line.index("--arch_config") + 1]) == net["arch_config"]
            records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            assert len(records) == 1 and top1 == records[-1]["val_top1"]
    random_means = [sum(nets[name]["top1"]) / 2 for name in ("random 1", "random 2")]
    assert report["summary"]["random_mean"] == pytest.approx(sum(random_means) / 2)
    assert "searched 1: rank" in first.stdout and "Kendall tau" in first.stdout
    assert (out / "search_quality.png").stat().st_size > 0

    stamps = {path: path.stat().st_mtime_ns for path in (out / "retrain").glob("*/metrics.jsonl")}
    second = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("kept from an earlier run") == 2
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # nothing retrained
    assert json.loads((out / "search_quality.json").read_text())["networks"] == report["networks"]
