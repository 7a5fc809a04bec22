"""reproduce_tables.py: the quick mode end to end (as CI runs it), a rerun
that keeps finished searches, the design-cost count, weights lookup and
evaluation, bad input; and tools/make_imagenet100.py."""

import csv
import errno
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

import evaluate
import latency_predictor
import model_train
import reproduce_tables
import search_imagenet
from tools import make_imagenet100
from utils import UserError, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_script(*arguments, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def read_csv(path):
    with open(path) as file:
        return list(csv.DictReader(file))


# The quick mode with one of its six targets and one of its three grid
# values: every step runs, in 3 searches instead of 10.
TARGETS = (20.0,)
GRID = (8e-4,)
QUICK_RUN = ["reproduce_tables.py", "--quick", "--targets", *map(str, TARGETS), "--grid", *map(str, GRID)]
TOLERANCE = reproduce_tables.get_args_parser().get_default("tolerance")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "quick"
    result = run_script(*QUICK_RUN, "--out", str(out), "--jobs", "2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, result.stdout


@pytest.mark.slow
def test_quick_mode_writes_both_tables_and_figures(quick_run):
    out, stdout = quick_run
    report = (out / "report.md").read_text()
    assert "## Table 1: the LightNets" in report and "## Table 2: you only search once" in report
    assert "quick mode" in report and "Machine:" in report
    for figure in ("search_curves.png", "baseline_grid.png", "found_networks.png", "latency_accuracy.png",
                   "peers.png"):
        assert (out / figure).stat().st_size > 10_000
    assert "## The LightNets beside the networks users would pick instead" in report
    peer_rows = {row["network"]: row for row in read_csv(out / "peers.csv")}
    assert {"MobileNetV2", "EfficientNet-B0", "ShuffleNetV2 x2.0", "LightNet-30ms"} <= set(peer_rows)
    assert float(peer_rows["MobileNetV2"]["top1"]) == pytest.approx(71.878)
    assert all(float(row["torch_ms"]) > 0 and float(row["onnxruntime_ms"]) > 0 for row in peer_rows.values())

    lightnets = {row["model"]: row for row in read_csv(out / "lightnets.csv")}
    assert set(lightnets) == set(model_train.LIGHTNETS)
    row = lightnets["LightNet-20ms"]
    network = model_train.LightNet(model_train.LIGHTNETS["LightNet-20ms"])
    assert float(row["params_m"]) == pytest.approx(sum(parameter.numel() for parameter in network.parameters()) / 1e6)
    assert float(row["flops_m"]) == pytest.approx(model_train.count_params_and_flops(network)[1] / 1e6)
    jetson = latency_predictor.load_predictor(None)
    assert float(row["jetson_table_ms"]) == pytest.approx(jetson.cost(model_train.LIGHTNETS["LightNet-20ms"]))
    assert float(row["readme_ms"]) == 20.0 and float(row["exact_top1"]) == 74.996
    assert lightnets["LightNet-20ms-SE"]["jetson_table_ms"] == ""  # SE ops are not in the tables
    assert all(float(row["cpu_measured_ms"]) > 0 for row in lightnets.values())

    searches = read_csv(out / "searches.csv")
    assert [float(row["target_ms"]) for row in searches] == list(TARGETS)
    # The learned multiplier lands every target within the report's own
    # tolerance, by itself (no landing step); a random architecture is
    # typically several ms away.
    for row in searches:
        assert abs(float(row["lightnas_error_percent"])) <= TOLERANCE, row
        assert row["lightnas_within"] == "True"
        table_ms = jetson.cost(row["arch_config"].split())
        assert float(row["lightnas_ms"]) == pytest.approx(table_ms, abs=0.01)  # the found network's own cost
    grid = read_csv(out / "baseline_grid.csv")
    assert [float(row["c_per_ms"]) for row in grid] == list(GRID)
    # every found network retrained once (1 epoch in quick mode), its top-1 beside its latency
    distinct = {row["arch_config"] for row in searches} | {row["arch_config"] for row in grid}
    assert len(list((out / "retrain").glob("*/metrics.jsonl"))) == len(distinct)
    assert all(0 <= float(row["lightnas_retrained_top1"]) <= 100 for row in searches)
    assert all(0 <= float(row["retrained_top1"]) <= 100 for row in grid)
    assert "Retrained from scratch (1 epoch of the short CPU recipe" in report

    metadata = json.loads((out / "metadata.json").read_text())
    reference = metadata["cpu_reference"]
    assert reference["now_ms"] > 0
    # Which note the report carries depends on the CPU: say each case's.
    drift_note = "The timing protocol's reference network ran at" in report
    mismatch_note = "Note: the CPU table was built on" in report
    if metadata["cpu_mismatch"]:  # no shipped table of this CPU: the report says whose table it used
        assert mismatch_note and not drift_note
    else:  # a table of this CPU: the machine's speed now against then, when the table recorded it
        assert not mismatch_note and drift_note == (reference["built_ms"] is not None)
    assert metadata["machine"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert metadata["jetson"]["identifier"] == jetson.identifier
    assert "Table 1" in stdout  # the report is printed too


@pytest.mark.slow
def test_rerun_keeps_finished_searches_and_refuses_other_settings(quick_run, capsys):
    out, _ = quick_run
    first_report = (out / "report.md").read_text()
    again = run_script(*QUICK_RUN, "--out", str(out), "--jobs", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    progress = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 1 + len(TARGETS) + len(GRID)
    assert all(line.endswith("(kept from an earlier run)") for line in progress)
    assert "Table 1 and the peers: kept from an earlier run" in again.stdout
    report = (out / "report.md").read_text()
    assert f"{1 + len(TARGETS) + len(GRID)} searches kept from an earlier run with the same settings" in report
    table_1 = first_report[first_report.index("## Table 1"):first_report.index("## Table 2")]
    assert table_1 in report  # the same timings, not measured again

    with pytest.raises(SystemExit) as stop:
        run_cli(reproduce_tables.main, reproduce_tables.get_args_parser(),
                QUICK_RUN[1:] + ["--out", str(out), "--grid", "1e-4"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {out} holds a run with other settings (grid); choose another --out, or delete it to start over"]
    # Sweep 13: another --cpu_table reused Table 1's timings, its column compared with the old table's costs.
    other_table = [table for table in latency_predictor.CPU_LUTS if os.path.abspath(table) != os.path.abspath(
        reproduce_tables.get_args_parser().parse_args(QUICK_RUN[1:] + ["--out", "x"]).cpu_table)][0]
    with pytest.raises(SystemExit):
        run_cli(reproduce_tables.main, reproduce_tables.get_args_parser(),
                QUICK_RUN[1:] + ["--out", str(out), "--cpu_table", other_table])
    assert "holds a run with other settings (cpu_table_costs)" in capsys.readouterr().err


def test_found_networks_are_retrained_once_each_in_order(tmp_path, monkeypatch):
    calls = []

    def fake_retrain(arch_config, folder, dataset, seed, epochs):
        calls.append((tuple(arch_config), os.path.basename(folder), seed, epochs))
        return float(len(calls))

    monkeypatch.setattr(reproduce_tables.retraining, "retrain", fake_retrain)
    args = Namespace(out=str(tmp_path), retrain_epochs=7, jobs=1)
    jobs = [Namespace(folder=str(tmp_path / name)) for name in ("lightnas-20ms", "fixed-a", "fixed-b")]
    results = [{"arch_config": ["A"]}, {"arch_config": ["B"]}, {"arch_config": ["A"]}]
    top1 = reproduce_tables.retrain_found_networks(args, "/data", jobs, results)
    assert calls == [(("A",), "lightnas-20ms", 0, 7), (("B",), "fixed-a", 0, 7)]  # "A" trained once
    assert top1 == [1.0, 2.0, 1.0]
    args.retrain_epochs = 0
    assert reproduce_tables.retrain_found_networks(args, "/data", jobs, results) == [None, None, None]


def processes_mentioning(text):
    """PIDs of live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # ended meanwhile
            if text in command:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_sigterm_stops_the_child_searches_too(quick_run, tmp_path):
    out = tmp_path / "stopped"
    out.mkdir()
    for name in ("plan.json", reproduce_tables.TIMINGS_FILE):  # the timings kept: the searches start at once
        shutil.copy(quick_run[0] / name, out / name)
    process = subprocess.Popen([sys.executable, *QUICK_RUN, "--out", str(out), "--jobs", "1"],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    searches = str(out / "searches")
    deadline = time.time() + 120
    while not processes_mentioning(searches) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert processes_mentioning(searches), "no child search started"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    time.sleep(0.5)
    assert processes_mentioning(searches) == []


def grid_row(c, latency):
    return {"c_per_ms": c, "predicted_ms": latency, "retrained_top1": 100 * c}


def test_design_cost_counts_searches_in_increasing_w():
    lightnas = [{"target_ms": 20.0, "predicted_ms": 20.02, "mlp_ms": None, "error_percent": 0.1,
                 "within_tolerance": True, "retrained_top1": 31.0},
                {"target_ms": 24.0, "predicted_ms": 23.52, "mlp_ms": None, "error_percent": -2.0,
                 "within_tolerance": False, "retrained_top1": None}]
    baseline = [grid_row(1e-4, 26.0), grid_row(2e-4, 20.1), grid_row(4e-4, 19.95)]
    first, second = reproduce_tables.design_cost(lightnas, baseline, tolerance=1.0)
    assert first["baseline_searches"] == 2  # 20.1 ms is the first within 1% of 20
    assert first["baseline_closest_ms"] == 19.95
    assert first["baseline_closest_w"] == pytest.approx(4e-4 * 20.0)
    assert first["lightnas_retrained_top1"] == 31.0
    assert first["baseline_closest_retrained_top1"] == pytest.approx(4e-2)  # the closest network's
    assert second["baseline_searches"] is None  # nothing within 1% of 24 ms
    assert second["baseline_closest_ms"] == 26.0
    assert second["baseline_closest_error_percent"] == pytest.approx(100 * (26 / 24 - 1))
    assert second["baseline_grid_size"] == 3


def plan(tmp_path, search_dataset=None, search_arguments=()):
    args = reproduce_tables.get_args_parser().parse_args(["--out", str(tmp_path)])
    args.search_dataset, args.search_arguments = search_dataset, list(search_arguments)
    args.grid = [1e-4, 4e-4]
    return reproduce_tables.plan_searches(args, reproduce_tables.FULL, search_dataset or "/synthetic")


def test_plan_on_synthetic_data_pins_the_demo_schedule(tmp_path):
    warmup, lightnas, baseline, settings, common = plan(tmp_path)
    assert common[:2] == ["--dataset", "/synthetic"] and common[-4:] == ["--workers", "0", "--land_within", "0"]
    assert settings.epochs == 30 and settings.num_classes == 10 and settings.tradeoff_learning_rate == 3e-2
    assert settings.land_within == 0  # Table 2 counts what the search lands by itself
    assert warmup.arguments[-2:] == ["--stop_after_epoch", "2"]
    warmup_checkpoint = os.path.join(warmup.folder, "warmup.pth.tar")
    assert [job.arguments[-4:] for job in lightnas[:2]] == [
        ["--target_latency", "20.0", "--resume", warmup_checkpoint],
        ["--target_latency", "22.0", "--resume", warmup_checkpoint]]
    assert baseline[1].arguments[-8:] == [
        "--target_latency", "25.0", "--penalty", "fixed", "--penalty_weight", repr(4e-4 * 25.0),
        "--resume", warmup_checkpoint]


def test_the_fixed_penalty_baseline_gets_no_latch_or_lambda_settings(tmp_path):
    # The quick schedule's latch window and lambda step, and the user's own
    # latch options in any spelling, reach the LightNAS searches only (the
    # fixed penalty's search refuses settings it would ignore).
    args = reproduce_tables.get_args_parser().parse_args(["--quick", "--out", str(tmp_path)])
    args.search_arguments = ["--latch_tol=2%", "--hold_lambda", "keep", "--arch_learning_rate", "0.03"]
    args.search_dataset, args.grid = None, list(reproduce_tables.QUICK.grid)
    _, lightnas, baseline, _, common = reproduce_tables.plan_searches(args, reproduce_tables.QUICK, "/synthetic")
    assert {"--latch_epochs", "--tradeoff_learning_rate", "--latch_tol=2%", "--hold_lambda"} <= set(common)
    for job in baseline:
        assert not {"--latch", "--latch_epochs", "--latch_tolerance", "--tradeoff_learning_rate", "--hold_lambda",
                    "--latch_tol=2%", "keep"} & set(job.arguments)
        settings = search_imagenet.get_args_parser().parse_args(job.arguments)
        assert settings.arch_learning_rate == 0.03  # the user's other options stay
        search_imagenet.resolve_schedule(settings)
        search_imagenet.check_options_apply(settings)  # would raise for any of them
    assert set(common) <= set(lightnas[0].arguments)


def test_plan_on_a_real_dataset_keeps_the_paper_schedule_and_user_options(tmp_path):
    warmup, lightnas, _, settings, common = plan(tmp_path, "/data/imagenet100", ["--gpus", "1", "--epochs", "30"])
    assert common == ["--dataset", "/data/imagenet100", "--land_within", "0", "--gpus", "1", "--epochs", "30"]
    assert settings.epochs == 30 and settings.freeze_epochs == 10 and settings.tradeoff_learning_rate == 5e-4
    assert warmup.arguments[-2:] == ["--stop_after_epoch", "10"]


def test_find_weights_ignores_case_dashes_and_extension(tmp_path):
    for name in ("LightNet-20ms.pth.tar", "lightnet_22ms.pth", "LightNet-20ms-SE.pth.tar", "notes.txt"):
        (tmp_path / name).write_text("")
    assert reproduce_tables.find_weights(tmp_path, "LightNet-20ms") == str(tmp_path / "LightNet-20ms.pth.tar")
    assert reproduce_tables.find_weights(tmp_path, "LightNet-22ms") == str(tmp_path / "lightnet_22ms.pth")
    assert reproduce_tables.find_weights(tmp_path, "LightNet-20ms-SE") == str(tmp_path / "LightNet-20ms-SE.pth.tar")
    assert reproduce_tables.find_weights(tmp_path, "LightNet-24ms") is None


def test_evaluate_released_uses_each_present_file(tmp_path, monkeypatch):
    """Each network with a file is evaluated (by evaluate.py's function, tested
    in test_evaluate.py) and its counts become percentages; others are skipped."""
    (tmp_path / "LightNet-24ms.pth.tar").write_text("")
    calls = []

    def fake_evaluate(weights, dataset, arch_choice, device, batch_size, workers):
        calls.append((weights, dataset, arch_choice, device, batch_size, workers))
        return 1000, 750, 901

    monkeypatch.setattr(evaluate, "evaluate_weights", fake_evaluate)
    args = Namespace(dataset="/imagenet", weights_dir=str(tmp_path), device="cpu", eval_batch_size=50, workers=0)
    results = reproduce_tables.evaluate_released(args, ["LightNet-20ms", "LightNet-24ms"])
    assert results == {"LightNet-24ms": (75.0, 90.1, 1000)}
    assert calls == [(str(tmp_path / "LightNet-24ms.pth.tar"), "/imagenet", "LightNet-24ms", "cpu", 50, 0)]


@pytest.mark.parametrize("arguments, message", [
    (["--dataset", "/data"], "error: --dataset and --weights_dir go together"),
    (["--dataset", "/no/such/imagenet", "--weights_dir", "/no/such/weights"],
     "error: --dataset /no/such/imagenet is not"),
    (["--jobs", "0"], "error: --jobs and --threads must be at least 1"),
    (["--retrain_epochs", "-1"], "error: --jobs and --threads must be at least 1, --tolerance a percentage in (0, 100) and "
                                 "--retrain_epochs not negative"),
    (["--grid", "0", "1e-3"], "error: --grid values must be positive"),
    (["--grid", "0.1", "0.01"], "error: --grid values must be ascending and distinct"),
    (["--targets", "50"], "error: --targets: 50 ms is outside"),
    (["--", "--penalty", "fixed"], "error: the search options after --: --penalty is set by reproduce_tables.py"),
    (["--", "--penalty=fixed"], "error: the search options after --: --penalty is set by reproduce_tables.py"),
])
def test_bad_input_is_one_line_and_exit_2(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(reproduce_tables.main, reproduce_tables.get_args_parser(),
                ["--quick", "--out", str(tmp_path / "out")] + arguments)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ ImageNet-100


def fake_imagenet(root, num_classes):
    names = [f"n{index:08d}" for index in range(num_classes)]
    for split in ("train", "val"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            (root / split / name / f"{split}.JPEG").write_text(name)
    return names


@pytest.mark.parametrize("rule, expected", [("first", list(range(100))), ("spread", list(range(0, 1000, 10)))])
def test_imagenet100_links_the_classes_of_its_rule(tmp_path, rule, expected):
    names = fake_imagenet(tmp_path / "imagenet", 1000)
    out = tmp_path / "imagenet100"
    run_cli(make_imagenet100.main, make_imagenet100.get_args_parser(),
            ["--imagenet", str(tmp_path / "imagenet"), "--out", str(out), "--rule", rule])
    chosen = [names[index] for index in expected]
    assert (out / "classes.txt").read_text().split() == chosen
    for split in ("train", "val"):
        assert sorted(os.listdir(out / split)) == chosen
        assert (out / split / chosen[5]).is_symlink()
        assert (out / split / chosen[5] / f"{split}.JPEG").read_text() == chosen[5]
    assert not (tmp_path / "imagenet100.partial").exists()


def test_imagenet100_refuses_bad_input(tmp_path, capsys):
    fake_imagenet(tmp_path / "small", 50)
    fake_imagenet(tmp_path / "full", 120)
    (tmp_path / "out").mkdir()
    cases = [
        (["--imagenet", str(tmp_path / "small"), "--out", str(tmp_path / "a")], "has 50 classes"),
        (["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "out")], "already exists"),
        (["--imagenet", str(tmp_path / "missing"), "--out", str(tmp_path / "b")], "is not a folder"),
        # Before: "spread rule" over 120 classes took the first 100, what --rule first takes.
        (["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "c"), "--rule", "spread"],
         "would pick the first 100"),
        # Before: --seed ignored in silence; a numpy traceback for -1 (and a .partial folder left behind).
        (["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "d"), "--seed", "5"],
         "there is no --arch_split"),
        (["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "d"), "--arch_split", "0.2", "--seed", "-1"],
         "--seed must be in [0, "),
        # Before: the subset was built, then a traceback at the rename onto the link.
        (["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "dangling")], "already exists"),
    ]
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for arguments, message in cases:
        with pytest.raises(SystemExit) as stop:
            run_cli(make_imagenet100.main, make_imagenet100.get_args_parser(), arguments)
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(lines) == 1 and message in lines[0], (message, lines)
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial")]
    # Sweep 17 #150, #152: a class that is a file in train/ was blamed on val/ ("prepare val/ with
    # preprocess_val_dataset.sh"); a class folder that is a loop of links gave an OSError traceback.
    fake_imagenet(tmp_path / "odd", 120)
    shutil.rmtree(tmp_path / "odd" / "train" / "n00000005")
    (tmp_path / "odd" / "train" / "n00000005").write_text("not a folder")
    fake_imagenet(tmp_path / "looped", 120)
    shutil.rmtree(tmp_path / "looped" / "train" / "n00000003")
    (tmp_path / "looped" / "train" / "n00000003").symlink_to(tmp_path / "looped" / "train" / "n00000003")
    fake_imagenet(tmp_path / "piped", 120)  # sweep 17 #213, #211: a pipe, a link to nothing
    shutil.rmtree(tmp_path / "piped" / "val" / "n00000002")
    os.mkfifo(tmp_path / "piped" / "val" / "n00000002")
    fake_imagenet(tmp_path / "dangling-class", 120)
    shutil.rmtree(tmp_path / "dangling-class" / "train" / "n00000007")
    (tmp_path / "dangling-class" / "train" / "n00000007").symlink_to(tmp_path / "moved")
    fake_imagenet(tmp_path / "renamed", 120)
    (tmp_path / "renamed" / "val" / "n00000007").rename(tmp_path / "renamed" / "val" / ".n00000007")
    for root, message in (("odd", f"{tmp_path / 'odd' / 'train' / 'n00000005'} is a file, not a class folder as in "
                                  "val/"),
                          ("looped", f"{tmp_path / 'looped' / 'train' / 'n00000003'} is a loop of links"),
                          ("piped", f"{tmp_path / 'piped' / 'val' / 'n00000002'} is a pipe, device or socket, not a "
                                    "class folder as in train/"),
                          ("dangling-class", f"{tmp_path / 'dangling-class' / 'train' / 'n00000007'} is a link to "
                                             "nothing"),
                          ("renamed", "hold different class folders (only in train/: n00000007; only in val/: "
                                      ".n00000007 (hidden))")):
        with pytest.raises(SystemExit) as stop:
            run_cli(make_imagenet100.main, make_imagenet100.get_args_parser(),
                    ["--imagenet", str(tmp_path / root), "--out", str(tmp_path / "e")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(lines) == 1 and message in lines[0], (message, lines)
    (tmp_path / "full" / "val" / "n00000003").rename(tmp_path / "full" / "val" / "n99999999")
    with pytest.raises(SystemExit):
        run_cli(make_imagenet100.main, make_imagenet100.get_args_parser(),
                ["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists() and not (tmp_path / "a").exists()


def test_imagenet100_on_a_full_disk_is_one_line_and_leaves_no_partial_subset(tmp_path, monkeypatch, capsys):
    # Before: an OSError traceback mid-build, and out.partial left behind.
    fake_imagenet(tmp_path / "full", 100)
    links = []

    def symlink_until_the_disk_is_full(source, destination):
        if len(links) == 50:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), destination)
        links.append(destination)
        os_symlink(source, destination)

    os_symlink = os.symlink
    monkeypatch.setattr(make_imagenet100.os, "symlink", symlink_until_the_disk_is_full)
    with pytest.raises(SystemExit) as stop:
        run_cli(make_imagenet100.main, make_imagenet100.get_args_parser(),
                ["--imagenet", str(tmp_path / "full"), "--out", str(tmp_path / "subset")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and lines == [f"error: --out {tmp_path / 'subset'}: cannot build the subset there "
                                              "(No space left on device); free some space"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["full"]


def test_imagenet100_with_an_out_name_too_long_is_told_to_shorten_it(tmp_path, capsys):
    # Sweep 5. Before: "File name too long; free some space or choose a writable folder".
    fake_imagenet(tmp_path / "full", 100)
    out = tmp_path / ("a" * 300)
    with pytest.raises(SystemExit) as stop:
        run_cli(make_imagenet100.main, make_imagenet100.get_args_parser(),
                ["--imagenet", str(tmp_path / "full"), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and lines == [f"error: --out {out}: cannot build the subset there (File name too "
                                              "long); choose a shorter --out"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["full"]


def test_imagenet100_arch_split_holds_out_the_images_the_search_split_picks(tmp_path):
    """--arch_split: val/ is exactly the part of train/ that
    --arch_split_from_train gives alpha for the same seed, train/ the rest,
    and ImageNet's val/ appears only as test/."""
    import torchvision

    import data
    root = tmp_path / "imagenet"
    names = fake_imagenet(root, 100)
    for name in names[:100]:
        for index in range(9):
            (root / "train" / name / f"img{index}.JPEG").write_text(f"{name}/{index}")
    out = tmp_path / "imagenet100"
    result = run_script(str(REPO_ROOT / "tools" / "make_imagenet100.py"), "--imagenet", str(root),
                        "--out", str(out), "--arch_split", "0.3", "--seed", "4")  # as a user runs the tool
    assert result.returncode == 0, result.stderr

    full_train = torchvision.datasets.DatasetFolder(str(root / "train"), loader=str, extensions=(".jpeg",))
    chosen = [(path, target) for path, target in full_train.samples if target < 100]
    _, arch_part = data.split_for_architecture([target for _, target in chosen], 0.3, 4)
    expected_alpha = sorted(os.path.relpath(chosen[index][0], root / "train") for index in arch_part)

    def linked(split):
        return sorted(os.path.relpath(os.path.join(folder, file), out / split)
                      for folder, _, files in os.walk(out / split) for file in files)

    assert linked("val") == expected_alpha
    assert sorted(set(linked("train")) | set(linked("val"))) == sorted(
        os.path.relpath(path, root / "train") for path, _ in chosen)
    assert not set(linked("train")) & set(linked("val"))
    assert len(expected_alpha) == 100 * 3  # 0.3 of 10 images per class
    assert sorted(os.listdir(out / "test")) == names[:100] and (out / "test" / names[0]).is_symlink()


def test_a_failing_search_stops_the_run_with_its_own_error_line(tmp_path):
    jobs = [reproduce_tables.SearchJob(f"bad-{number}", str(tmp_path / f"bad-{number}"),
                                       ["--target_latency", "nan"], "arch.json") for number in range(3)]
    reported = []
    with pytest.raises(UserError) as caught:
        reproduce_tables.run_jobs(jobs, lambda job, seconds: reported.append(job), str(tmp_path / "logs"),
                                  parallel=2, threads=1)
    message = str(caught.value)
    assert "search_imagenet.py" in message and "failed (exit 2)" in message and "--target_latency" in message
    assert reported == [] and "\n" not in message


def test_a_missing_authors_mlp_is_said_and_marked_an_explicit_one_refused(tmp_path, monkeypatch, capsys):
    absent = str(tmp_path / "lightnas_jetson_latency_mlp.pth.tar")
    monkeypatch.setattr(reproduce_tables.lp, "AUTHORS_MLP", absent)
    assert reproduce_tables.authors_mlp(absent) is None  # the default, absent: said once, not an error
    assert "the authors' MLP is not at" in capsys.readouterr().out
    with pytest.raises(reproduce_tables.UserError, match="--mlp .*elsewhere.pth.tar not found"):
        reproduce_tables.authors_mlp(str(tmp_path / "elsewhere.pth.tar"))
    # Sweep 19 #169: a latency table given as --mlp was taken, and the column would have cross-checked the
    # searches against the table's own costs.
    with pytest.raises(reproduce_tables.UserError, match=r"--mlp .*jetson_agx_xavier_b8.json is not the authors' "
                                                         r"latency MLP \(it reads as jetson_agx_xavier_b8.json@\w+\)"):
        reproduce_tables.authors_mlp(reproduce_tables.lp.DEFAULT_LUT)
    row = {"target_ms": 24.0, "lightnas_ms": 23.9, "lightnas_error_percent": -0.4, "lightnas_mlp_ms": None,
           "lightnas_retrained_top1": None, "lightnas_within": True, "baseline_searches": 2, "baseline_grid_size": 5,
           "baseline_closest_ms": 24.1, "baseline_closest_error_percent": 0.4, "baseline_closest_w": 0.5,
           "baseline_closest_retrained_top1": None}
    assert reproduce_tables.NO_MLP in reproduce_tables.searches_table([row], 1.0)
