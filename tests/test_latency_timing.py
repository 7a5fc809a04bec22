"""Tests of the timing protocol (latency_timing.py) and of the two ways to
build a table (latency_build.py: isolated ops, whole-network fit).

CPU only; timing runs use one or two rounds.

    python3 -m pytest -q tests/test_latency_timing.py
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import latency_build
import latency_predictor as lp
import latency_timing
import model_train
import operations
from operations import NUM_OPS, NUM_SEARCHABLE_LAYERS, SEARCHABLE_OPS, SKIP
from utils import UserError, run_cli

SKIP_INDEX = SEARCHABLE_OPS.index(SKIP)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv):
    latency_build.main(latency_build.get_args_parser().parse_args(argv))


def known_costs(seed):
    """A constant and 21x7 positive costs with SkipConnect at 0 (the
    anchor a fit uses, so the truth is identifiable)."""
    rng = np.random.default_rng(seed)
    costs = rng.uniform(0.1, 2.0, size=(NUM_SEARCHABLE_LAYERS, NUM_OPS))
    costs[:, SKIP_INDEX] = 0.0
    return 3.0, costs


def sums(constant, costs, indices):
    return constant + costs[np.arange(NUM_SEARCHABLE_LAYERS), indices].sum(axis=1)


# ------------------------------------------------------------------ fit


def test_fit_recovers_known_per_op_costs_from_exact_sums():
    constant, costs = known_costs(0)
    indices = lp.sample_architectures(300, seed=5)
    fitted_constant, fitted, errors = lp.fit_additive(indices, sums(constant, costs, indices), non_negative=True)
    assert fitted_constant == pytest.approx(constant, abs=1e-8)
    np.testing.assert_allclose(fitted, costs, atol=1e-8)
    assert errors.max() < 1e-6  # no residual, no uncertainty


def test_fit_recovers_costs_through_noise_and_reports_its_uncertainty():
    constant, costs = known_costs(1)
    indices = lp.sample_architectures(600, seed=6)
    rng = np.random.default_rng(7)
    measured = sums(constant, costs, indices) * rng.normal(1.0, 0.01, size=len(indices))  # 1% timing noise
    fitted_constant, fitted, errors = lp.fit_additive(indices, measured)
    free = np.arange(NUM_OPS) != SKIP_INDEX
    deviation = np.abs(fitted - costs)[:, free]
    assert deviation.mean() < 0.05 and fitted_constant == pytest.approx(constant, abs=0.3)
    # The standard errors describe the deviations: most within 3 of them.
    assert (deviation <= 3 * errors[:, free]).mean() > 0.9
    assert (errors[:, free] > 0).all() and (errors[:, SKIP_INDEX] == 0).all()


def test_non_negative_fit_holds_costs_that_would_go_negative_at_zero():
    constant, costs = known_costs(2)
    costs[:, 0] = 0.0  # ops as cheap as SkipConnect: noise pushes a plain fit below 0
    indices = lp.sample_architectures(200, seed=8)
    measured = sums(constant, costs, indices) + np.random.default_rng(9).normal(0, 0.2, size=len(indices))
    _, plain, _ = lp.fit_additive(indices, measured)
    _, held, _ = lp.fit_additive(indices, measured, non_negative=True)
    assert (plain < 0).any()
    assert (held >= 0).all()
    assert np.abs(held - costs).mean() < np.abs(plain - costs).mean() + 0.01


def test_the_fit_networks_pin_the_fixed_part_at_the_smallest_fit():
    """Timing noise of 0.5 ms per network, 20 draws: with the all-SkipConnect
    network among the fitted ones the constant stays within 1.5 ms (its
    standard error about 0.5 ms); fitted from random networks alone it is an
    extrapolation about four times as uncertain, and a noisy one-round build
    once put it below 0."""
    constant, costs = known_costs(3)
    indices = latency_build.fit_architectures(latency_build.MIN_FIT_NETWORKS, seed=0)
    assert (indices == SKIP_INDEX).all(axis=1).sum() == 1
    rng = np.random.default_rng(10)
    errors = []
    for _ in range(20):
        measured = sums(constant, costs, indices) + rng.normal(0, 0.5, size=len(indices))
        fitted_constant, _, _ = lp.fit_additive(indices, measured, non_negative=True)
        errors.append(fitted_constant - constant)
    assert np.abs(errors).max() < 1.5


def test_kendall_tau_counts_agreeing_pairs():
    assert latency_build.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert latency_build.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert latency_build.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


# ------------------------------------------------------------ protocol


def test_the_reference_cancels_drift_between_rounds():
    rounds, base, reference_ms = 50, np.array([1.0, 2.5, 7.0]), 16.0
    drift = np.linspace(1.1, 1.6, rounds)  # the machine slows down by 45% during the session
    timings = latency_timing.Timings(base[None, :] * drift[:, None], reference_ms * drift)
    statistics = latency_timing.session_statistics([timings], level=reference_ms)
    assert [entry["value"] for entry in statistics] == pytest.approx(list(base), rel=1e-12)
    raw = [np.median(timings.samples[:, index]) for index in range(len(base))]
    assert not np.allclose(raw, base, rtol=0.05)  # without the reference the drift stays
    assert latency_timing.drift_pct(timings.reference) > 30  # block medians 1.13-1.57 over a median of 1.35


def test_chunks_timed_at_different_speeds_land_on_one_level():
    slow = latency_timing.Timings(np.array([[2.0], [2.0]]), np.array([20.0, 20.0]))
    fast = latency_timing.Timings(np.array([[1.0], [1.0]]), np.array([10.0, 10.0]))
    statistics = latency_timing.session_statistics([slow, fast])
    assert statistics[0]["value"] == statistics[1]["value"]


def test_measure_times_every_probe_and_the_reference():
    probes = lp.layer_probes()[:3]
    protocol = latency_timing.make_protocol("cpu", 1, 1, "wall", 0.0, 2, 0)
    timings = latency_timing.measure(probes, protocol, desc="test")
    assert timings.samples.shape == (2, 3) and timings.reference.shape == (2,)
    assert (timings.samples > 0).all() and (timings.reference > timings.samples.max(axis=1)).all()
    without = latency_timing.measure(probes, protocol._replace(reference=False), desc="test")
    assert without.reference is None and without.samples.shape == (2, 3)


def test_onnxruntime_runner_runs_the_exported_module():
    pytest.importorskip("onnxruntime")
    probe = lp.layer_probes()[5]
    inputs = torch.randn(1, *probe.input_shape)
    call = latency_timing.onnxruntime_runner(probe.module, inputs, threads=1)
    (output,) = call()
    with torch.no_grad():
        expected = probe.module.eval()(inputs)
    np.testing.assert_allclose(output, expected.numpy(), atol=1e-4)


def test_a_missing_onnxruntime_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails
    with pytest.raises(UserError, match="onnxruntime is not installed; pip install onnxruntime"):
        latency_timing.make_protocol("cpu", 1, 1, "wall", 0.0, 1, 0, runtime="onnxruntime")


def test_build_without_onnxruntime_installed_exits_2_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(latency_build.main, latency_build.get_args_parser(),
                ["build", "--runtime", "onnxruntime", "--out", str(tmp_path / "ort.json")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "pip install onnxruntime" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_is_refused_on_a_gpu_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU to reach the check")
    with pytest.raises(UserError, match="CPU execution provider"):
        latency_timing.make_protocol("cuda", 1, 1, "wall", 0.0, 1, 0, runtime="onnxruntime")


def test_noise_check_warns_and_refuses(capsys):
    noise = {"reference_jitter_pct": 30.0, "reference_drift_pct": 12.0}
    latency_build.check_noise(noise, max_jitter_pct=None)
    assert "warning: a noisy machine" in capsys.readouterr().out
    with pytest.raises(UserError, match="too noisy.*30.0%.*no table written"):
        latency_build.check_noise(noise, max_jitter_pct=25.0)
    latency_build.check_noise({"reference_jitter_pct": 5.0, "reference_drift_pct": 1.0}, max_jitter_pct=None)
    assert capsys.readouterr().out == ""


def test_a_build_noisier_than_allowed_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "noisy.json"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(latency_build.main, latency_build.get_args_parser(),
                ["build", "--method", "isolated", "--repeats", "2", "--warmup_s", "0", "--max_jitter_pct", "1e-9",
                 "--out", str(out)])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: the machine was too noisy") and "no table written" in last_line
    assert "Traceback" not in last_line and list(tmp_path.iterdir()) == []


# -------------------------------------------------------------- builds


def test_fit_build_writes_a_table_the_search_reads(fitted_table):
    table = lp.load_table(fitted_table)
    metadata = table["metadata"]
    assert metadata["source"]["method"] == "fit"
    assert metadata["source"]["networks"] == latency_build.MIN_FIT_NETWORKS + 7  # + the LightNets, all-SkipConnect
    assert metadata["noise"]["reference"] == latency_timing.REFERENCE_NETWORK
    assert metadata["protocol"]["runtime"] == "torch"
    assert all(entry["value"] >= 0 and entry["stderr"] >= 0 for entry in table["entries"].values())
    predictor = lp.load_predictor(fitted_table)
    low, high = predictor.feasible_range()
    assert 0 < low < predictor.cost(model_train.LIGHTNETS["LightNet-24ms"]) < high
    assert latency_build.table_reference_level(metadata) == metadata["noise"]["reference_median_ms"]


def test_a_fit_whose_fixed_part_comes_out_negative_writes_no_table(monkeypatch, tmp_path):
    """Timings that only a negative fixed part explains (here: exact sums of
    known costs, 5 ms short) are refused in one line, not written as a table
    that loading would refuse."""
    _, costs = known_costs(seed=4)
    timed = []
    monkeypatch.setattr(latency_build, "time_networks", lambda arch_configs, *args: timed.extend(arch_configs))
    monkeypatch.setattr(latency_build, "session_statistics", lambda sessions: [
        {"value": value} for value in sums(-5.0, costs, np.array([operations.arch_to_indices(arch)
                                                                  for arch in timed]))])
    out = tmp_path / "fit.json"
    with pytest.raises(UserError, match=r"the fit put the fixed part at -5.00 ms, below 0: .* nothing was written"):
        run(["build", "--method", "fit", "--num_networks", str(latency_build.MIN_FIT_NETWORKS), "--out", str(out)])
    assert not out.exists()


def test_fit_build_refuses_too_few_networks(tmp_path):
    out = tmp_path / "t.json"
    with pytest.raises(UserError, match="--num_networks must be at least"):
        run(["build", "--method", "fit", "--num_networks", "20", "--out", str(out)])
    assert not out.exists()


def test_isolated_build_with_onnxruntime_records_its_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    path = str(tmp_path / "ort.json")
    run(["build", "--method", "isolated", "--runtime", "onnxruntime", "--repeats", "1", "--warmup_s", "0",
         "--out", path])
    metadata = lp.load_table(path)["metadata"]
    assert metadata["protocol"]["runtime"] == "onnxruntime"
    assert metadata["runtime"]["name"].startswith("ONNX Runtime") and metadata["runtime"]["onnxruntime"]
    protocol = latency_build.validation_protocol(metadata, "cpu", None, None, 0.0, 1, 0)
    assert protocol.runtime == "onnxruntime"


def test_a_table_without_a_recorded_runtime_is_validated_with_pytorch():
    metadata = lp.load_table(lp.CPU_LUT)["metadata"]
    metadata["protocol"].pop("runtime", None)
    metadata.pop("noise", None)
    assert latency_build.table_runtime(metadata) == "torch"
    assert latency_build.table_reference_level(metadata) is None


def test_measured_networks_are_the_networks_of_their_op_rows(spy):
    largest = [SEARCHABLE_OPS.index("MBK7E6")] * NUM_SEARCHABLE_LAYERS
    smallest = [SKIP_INDEX] * NUM_SEARCHABLE_LAYERS
    asked = spy(latency_build, "measure_arch_configs")
    protocol = latency_timing.make_protocol("cpu", 1, 1, "wall", 0.0, 1, 0)
    statistics = latency_build.measure_networks(np.array([largest, smallest]), protocol, num_classes=10)
    assert asked == [[["MBK3E1"] + ["MBK7E6"] * NUM_SEARCHABLE_LAYERS, ["MBK3E1"] + [SKIP] * NUM_SEARCHABLE_LAYERS]]
    # In order: the largest network of the space is several times slower than the smallest.
    assert statistics[0]["value"] > 3 * statistics[1]["value"] > 0, statistics


@pytest.mark.slow
def test_the_latency_benchmark_runs_both_methods_side_by_side():
    script = os.path.join(REPO_ROOT, "benchmarks", "latency_tables.py")
    result = subprocess.run([sys.executable, script, "--quick", "--runtimes", "torch"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for method in ("isolated", "fit"):
        assert f"{method} vs both, at the table's reference level" in result.stdout
    assert "the held-out networks timed twice" in result.stdout and "noise floor:" in result.stdout


def test_the_allocator_setting_takes_effect_on_glibc():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert latency_timing.steady_allocator() is True
    assert "in effect" in latency_timing.describe_protocol(
        latency_timing.make_protocol("cpu", 1, 1, "wall", 0.0, 1, 0))["allocator"]


def test_an_unwritable_out_is_refused_before_any_measuring(monkeypatch, tmp_path):
    def measuring(*args, **kwargs):
        raise AssertionError("measured although --out cannot be written")
    monkeypatch.setattr(latency_build, "build_latency_table", measuring)
    with pytest.raises(UserError, match="missing-folder does not exist"):
        run(["build", "--out", str(tmp_path / "missing-folder" / "t.json")])
    with pytest.raises(UserError, match="is a folder"):
        run(["build", "--out", str(tmp_path)])


# ------------------------------------------- a network in a fresh process, as deployed


def test_a_fresh_process_under_the_tables_condition_keeps_activations_mapped():
    """The deployment condition reaches the new process and does what it is
    for: a network alone in a fresh process pays no page faults per call
    under it, and thousands in a plain process (LightNet-24ms maps a 4.8 MB
    activation afresh on every call there)."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the condition is glibc's")
    protocol = latency_timing.make_protocol("cpu", 1, 1, "wall", 0.3, 1, 0)
    arch_config = model_train.LIGHTNETS["LightNet-24ms"]
    deployed = latency_timing.time_in_fresh_process(arch_config, protocol, 10, "deployment", calls=3,
                                                    with_reference=True)
    plain = latency_timing.time_in_fresh_process(arch_config, protocol, 10, "plain", calls=3)
    assert deployed["heap_keeps_large_blocks"] is True and plain["heap_keeps_large_blocks"] is False
    assert deployed["page_faults_per_call"] * 10 < plain["page_faults_per_call"] and plain["page_faults_per_call"] > 500
    assert deployed["value"] > 0 and deployed["ratio_to_reference"] == pytest.approx(1, abs=0.5)


def test_a_fresh_process_whose_allocator_ignores_the_condition_is_refused(monkeypatch):
    monkeypatch.setattr(latency_timing, "fresh_process_env", lambda condition: dict(os.environ))
    protocol = latency_timing.make_protocol("cpu", 1, 1, "wall", 0.0, 1, 0)
    with pytest.raises(UserError, match="does not follow the setting"):
        latency_timing.time_in_fresh_process(model_train.LIGHTNETS["LightNet-20ms"], protocol, 10, "deployment",
                                             calls=1)


def test_the_condition_is_stated_by_build_and_named_by_old_tables(tmp_path, capsys):
    path = str(tmp_path / "t.json")
    run(["build", "--method", "isolated", "--repeats", "1", "--warmup_s", "0", "--threads", "2", "--out", path])
    metadata = lp.load_table(path)["metadata"]
    line = latency_build.table_condition(metadata)
    assert line == metadata["protocol"]["condition"]["line"]
    assert "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:" in line and "OMP_NUM_THREADS=2" in line
    assert f"{line} python3 your_script.py" in capsys.readouterr().out
    del metadata["protocol"]["condition"]  # a table built before the condition was recorded
    assert latency_build.table_condition(metadata) == line
    assert latency_build.table_condition(lp.load_table(lp.CPU_LUT)["metadata"]) is None  # no allocator setting


def test_validate_reports_the_table_against_fresh_processes(monkeypatch, tmp_path, capsys):
    """The fresh-process figures and CSV columns, with the timing replaced by
    a stand-in that runs 10% slower than the table says (the real timing is
    tested above)."""
    predictor = lp.table_predictor(lp.CPU_LUTS[1])
    level = latency_build.table_reference_level(predictor.metadata)

    def slower_by_a_tenth(arch_configs, protocol, num_classes, condition, with_reference=False, **kwargs):
        assert condition == "deployment" and with_reference and protocol.threads == 1
        costs = [predictor.raw_cost(arch_config) * 1.1 for arch_config in arch_configs]
        return [{"value": cost, "page_faults_per_call": 0.0, "ratio_to_reference": cost / level} for cost in costs]
    monkeypatch.setattr(latency_build, "time_in_fresh_processes", slower_by_a_tenth)
    monkeypatch.setattr(latency_build, "time_networks", lambda arch_configs, protocol, num_classes: [
        latency_timing.Timings(np.ones((1, len(arch_configs))), np.ones(1))])
    run(["validate", "--lut", lp.CPU_LUTS[1], "--num_archs", "5", "--fresh_process", "deployment",
         "--out_dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert "as measured:          mean |err|   9.09%" in output
    assert "at the table's level: mean |err|   9.09%" in output
    header = (tmp_path / "validate.csv").read_text().splitlines()[0]
    assert header.endswith("fresh_deployment_ms,fresh_deployment_page_faults_per_call,"
                           "fresh_deployment_at_table_level_ms")


def test_validate_refuses_fresh_processes_for_a_table_of_another_device():
    with pytest.raises(UserError, match="was measured on NVIDIA Jetson AGX Xavier: leave it out"):
        run(["validate", "--lut", lp.DEFAULT_LUT, "--device", "cpu", "--fresh_process", "plain"])


def test_more_threads_than_cores_is_warned_about(capsys):
    # Before: `build --threads 999` on 2 cores measured a table of contention without a word.
    cores = os.cpu_count() or 1
    latency_timing.make_protocol("cpu", 1, cores, "wall", 0.0, 1, 0)
    assert capsys.readouterr().err == ""
    latency_timing.make_protocol("cpu", 1, cores + 1, "wall", 0.0, 1, 0)
    assert capsys.readouterr().err.startswith(f"warning: --threads {cores + 1} on {cores} cores")
