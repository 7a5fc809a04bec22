"""The LightNets timed beside torchvision's networks (peers.py) and the
closed loop build -> search -> measure (closed_loop.py), at tiny sizes."""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import closed_loop
import data
import latency_build
import latency_predictor as lp
import latency_timing
import model_train
import peers
import search_imagenet
import utils
from utils import UserError, run_cli

REPO_ROOT = str(Path(__file__).resolve().parents[1])

TINY_SEARCH = ["--epochs", "3", "--freeze_epochs", "1", "--latch_epochs", "1", "--arch_lr_step", "1",
               "--batch_size_train", "4", "--batch_size_val", "4", "--image_size", "32", "--workers", "0",
               "--tradeoff_learning_rate", "0.05", "--num_classes", "3"]


def test_peer_accuracy_is_torchvision_published_figure():
    # torchvision's documented ImageNet-1K acc@1 of the IMAGENET1K_V1 weights.
    assert peers.peer_top1("mobilenet_v2")[0] == pytest.approx(71.878)
    assert peers.peer_top1("efficientnet_b0")[0] == pytest.approx(77.692)
    assert peers.peer_top1("shufflenet_v2_x2_0")[0] == pytest.approx(76.23)


def test_peers_are_timed_and_written(tmp_path, capsys):
    run_cli(peers.main, peers.get_args_parser(), ["--out", str(tmp_path), "--rounds", "1", "--runtimes", "torch"])
    with open(tmp_path / "peers.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    names = [row["network"] for row in rows]
    assert names == list(model_train.README_ACCURACY) + list(peers.PEERS.values())
    assert all(float(row["torch_ms"]) > 0 for row in rows)
    lightnet = rows[names.index("LightNet-24ms")]
    assert float(lightnet["top1"]) == 75.5 and "LightNAS paper" in lightnet["top1_source"]
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"
    assert "EfficientNet-B0" in capsys.readouterr().out


@pytest.mark.slow
def test_closed_loop_searches_on_the_table_and_measures_the_result(fitted_table, tmp_path, capsys,
                                                                   monkeypatch, spy):
    import data
    monkeypatch.setattr(closed_loop, "LOOP_WARMUP_S", 0.1)
    timed_in_process = spy(latency_timing, "time_networks")
    timed_fresh = spy(latency_timing, "time_in_fresh_processes")
    dataset = data.write_synthetic_dataset(tmp_path / "data", num_classes=3, train_per_class=4, val_per_class=4,
                                           image_size=32, seed=0)
    table = lp.load_predictor(fitted_table)
    target = round(table.cost(model_train.LIGHTNETS["LightNet-24ms"]), 2)
    out = tmp_path / "loop"
    # The tiny search cannot land by itself, so --land_within 1 lands it; what
    # this test checks is the loop: the search got this table and this target
    # (its arch.json says so) and the network it found is what was timed.
    run_cli(closed_loop.main, closed_loop.get_args_parser(),
            ["--target_latency", str(target), "--lut", fitted_table, "--out", str(out), "--rounds", "2",
             "--fresh_processes", "1", "--", "--dataset", str(dataset), "--land_within", "1"] + TINY_SEARCH)
    output = capsys.readouterr().out
    result = json.loads((out / "search" / "arch.json").read_text())
    assert (result["predictor"], result["target"]) == (table.identifier, target)
    found = result["arch_config"]
    predicted = table.cost(found)
    assert abs(predicted / target - 1) <= 0.01, (predicted, target)
    assert f"target {target:g} ms; the table predicts {predicted:.2f} ms for the found network" in output
    assert timed_in_process == [[found]] and timed_fresh == [[found]]  # the found network, nothing else
    measured_now = float(re.search(r"measured end to end now: ([\d.]+) ms", output)[1])
    assert 1 / 3 < measured_now / predicted < 3  # a real timing of a network of that size
    condition = latency_build.table_condition(lp.load_table(fitted_table)["metadata"])
    assert f"alone in fresh processes started with {condition}: " in output
    report = (out / "report.txt").read_text().splitlines()
    assert "the same, at the machine's speed when the table was built" in "\n".join(report)
    assert f"architecture: {found}" in report and f"table: {os.path.abspath(fitted_table)}" in report


def test_closed_loop_reuses_a_kept_search_only_for_its_own_target_table_and_options(tmp_path, seal_search,
                                                                                     search_arguments):
    # Sweep 13: a finished 15 ms search in --out without plan.json (deleted, or the folder put together by hand)
    # was reused for --target_latency 17, its error against 15 ms reported as the error against 17.
    jetson = lp.load_predictor()
    arch_config = model_train.LIGHTNETS["LightNet-24ms"]
    cost = jetson.cost(arch_config)
    defaults = search_imagenet.resolve_schedule(search_imagenet.get_args_parser().parse_args([]))
    settings = {name: getattr(defaults, name) for name in search_imagenet.SEARCH_SETTINGS}
    settings["dataset"] = str(tmp_path / "data" / data.synthetic_folder_name(**search_imagenet.DEMO_DATASET))
    folder = tmp_path / "loop" / "search"
    folder.mkdir(parents=True)
    (folder / "arch.json").write_text(json.dumps({
        "arch_config": arch_config, "predicted": cost, "error_percent": 100.0 * (cost / 24.0 - 1.0), "target": 24.0,
        "predictor": jetson.identifier, "search": settings}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch, "seconds": 2.0, "val_top1": 40.0, "target": 24.0,
                    "probabilities": [[1 / 7] * 7] * 21}) + "\n" for epoch in range(1, defaults.epochs + 1)))
    saved = search_arguments("--target_latency", "24")
    (folder / "args.json").write_text(json.dumps(dict(saved, dataset=settings["dataset"])))
    seal_search(folder)
    # Without plan.json nothing says under which settings the folder's steps were made.
    with pytest.raises(UserError, match=r"loop holds files but no plan.json, so the settings that made them are "
                                        "unknown; choose another --out, or delete it to start over"):
        closed_loop.main(closed_loop.get_args_parser().parse_args(
            ["--out", str(tmp_path / "loop"), "--target_latency", "20", "--lut", lp.CPU_LUT]))
    # The search step itself compares a kept search's target, table and options with its own (a plan.json edited
    # to the new ones and sealed again, or one of an older version of the loop).
    with pytest.raises(UserError, match=r"search holds a search made with other settings than this run's "
                                        r"\(--lut jetson_agx_xavier_b8.json@\w+ there, cpu_amd_epyc_b1_t1.json@\w+"
                                        r"\+calibrated here; --target_latency 24.0 there, 20.0 here\); delete it to "
                                        "search again"):
        closed_loop.search(lp.CPU_LUT, 20.0, str(tmp_path / "loop"), [])
    # Sweep 18: plan.json's epochs edited and sealed again let a search of other epochs pass as this loop's.
    with pytest.raises(UserError, match=rf"\(--epochs {defaults.epochs} there, 4 here\)"):
        closed_loop.search(lp.DEFAULT_LUT, 24.0, str(tmp_path / "loop"), ["--epochs", "4"])
    assert closed_loop.search(lp.DEFAULT_LUT, 24.0, str(tmp_path / "loop"), [])["predicted"] == cost


def test_closed_loop_refuses_a_gpu_table_on_a_machine_without_one(tmp_path, monkeypatch):
    # Sweep 13. Before: the whole search ran, then the timing stopped with "--device cuda: ... use --device cpu",
    # an option the loop does not have.
    table = json.loads(open(lp.CPU_LUT).read())
    table["metadata"]["device"]["type"] = "cuda"
    (tmp_path / "gpu.json").write_text(json.dumps(table))
    monkeypatch.setattr(closed_loop.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "loop"
    with pytest.raises(UserError, match=r"gpu.json was measured on a CUDA GPU \(.*\), and this machine has none to "
                                        "time the found network on; run the loop where that GPU is"):
        closed_loop.main(closed_loop.get_args_parser().parse_args(
            ["--out", str(out), "--target_latency", "20", "--lut", str(tmp_path / "gpu.json")]))
    assert not out.exists()


@pytest.mark.parametrize("arguments, message", [
    (["--target_latency", "0"], "positive number"),
    (["--target_latency", "20", "--", "--save", "x"], "--save is set by closed_loop.py"),
    # Before: these reached the steps, where the user's value won over the loop's (or the build wrote elsewhere).
    (["--target_latency", "20", "--", "--save=x"], "--save is set by closed_loop.py"),
    (["--target_latency", "20", "--", "--target_lat", "30"], "--target_latency is set by closed_loop.py"),
    (["--target_latency", "20", "--build_options", "--out x.json"], "--build_options: --out is set by closed_loop.py"),
    (["--target_latency", "20", "--build_options", "--metod fit"], "--build_options: unrecognized arguments: --metod"),
    (["--target_latency", "20", "--", "--epoch", "three"], "the search options after --: argument --epochs"),
    (["--target_latency", "20", "--build_options", "--runtime 'onnx"], "No closing quotation"),
    (["--target_latency", "500", "--lut", lp.CPU_LUT], "outside what the table"),
    (["--target_latency", "20", "--rounds", "0"], "--rounds"),
    (["--target_latency", "24", "--lut", lp.DEFAULT_LUT], "measured on this machine's CPU or GPU"),
    # Before: the loop ran on the table's own (torch) runtime and recorded the options as used.
    (["--target_latency", "20", "--lut", lp.CPU_LUT, "--build_options", "--runtime onnxruntime"],
     "with --lut it builds none"),
])
def test_closed_loop_refuses_bad_input_before_writing(arguments, message, tmp_path):
    out = tmp_path / "loop"
    with pytest.raises(UserError, match=message):
        closed_loop.main(closed_loop.get_args_parser().parse_args(["--out", str(out)] + arguments))
    assert not out.exists()


def test_closed_loop_reuses_steps_only_for_its_own_settings_and_continues_its_search(tmp_path, monkeypatch):
    out = tmp_path / "loop"
    steps = []

    def stopped_step(arguments, what):  # each step is recorded, then "interrupted"
        steps.append(arguments)
        if len(steps) > 1:  # the first fails at once; the later ones stop halfway
            (out / "search").mkdir(exist_ok=True)
            (out / "search" / "checkpoint.pth.tar").write_bytes(b"")
        raise UserError(f"{what} failed")

    monkeypatch.setattr(closed_loop, "run_step", stopped_step)
    table = tmp_path / "table.json"
    shutil.copy(lp.CPU_LUT, table)

    def loop(*arguments):
        return closed_loop.main(closed_loop.get_args_parser().parse_args(["--out", str(out), "--lut", str(table),
                                                                          *arguments]))

    with pytest.raises(UserError, match="failed"):
        loop("--target_latency", "20", "--", "--epochs", "3")
    assert "--resume" not in steps[-1]
    assert not out.exists()  # a first search that failed at once leaves nothing (before: a folder with plan.json)
    with pytest.raises(UserError, match="failed"):
        loop("--target_latency", "20", "--", "--epochs", "3")  # this one stops halfway
    assert "--resume" not in steps[-1] and (out / "search" / "checkpoint.pth.tar").exists()
    with pytest.raises(UserError, match="failed"):
        loop("--target_latency", "20", "--", "--epochs", "3")
    assert steps[-1][-2:] == ["--resume", str(out / "search")]  # the same loop again: its search continues
    # The same settings in other words: a default spelled out, another order, --option=value, a prefix.
    # Before: refused as "other settings (search_options)", the list of words compared as it was typed.
    with pytest.raises(UserError, match="failed"):
        loop("--target_latency", "20", "--", "--penalty=lagrange", "--epo", "3")
    assert steps[-1][-2:] == ["--resume", str(out / "search")]
    # Sweep 15 #264: the same table through a link was "other settings (lut)", and the fix offered deleted the work.
    (tmp_path / "link.json").symlink_to(table)
    with pytest.raises(UserError, match="failed"):
        closed_loop.main(closed_loop.get_args_parser().parse_args(["--out", str(out), "--lut", str(tmp_path / "link.json"),
                                                                   "--target_latency", "20", "--", "--epochs", "3"]))
    assert steps[-1][-2:] == ["--resume", str(out / "search")]
    # Sweep 19 #124, #128: a hard link to the table, or a copy of it, is another file; the refusal offered only to
    # delete the work. It names the path the run was made with.
    os.link(table, tmp_path / "hard.json")
    with pytest.raises(UserError, match=re.escape(f"holds a run with other settings (lut); it was made with --lut "
                                                  f"{table}: give that to continue it, choose another --out")):
        closed_loop.main(closed_loop.get_args_parser().parse_args(["--out", str(out), "--lut", str(tmp_path / "hard.json"),
                                                                   "--target_latency", "20", "--", "--epochs", "3"]))
    for other, changed in ((["--target_latency", "21", "--", "--epochs", "3"], "target_latency"),
                           (["--target_latency", "20", "--", "--epochs", "4"], "search_options")):
        with pytest.raises(UserError, match=rf"holds a run with other settings \({changed}\)"):
            loop(*other)
    # The table recalibrated in place, same path (before: its old search reused, its error reported against
    # the new costs).
    recalibrated = json.loads(table.read_text())
    recalibrated["metadata"]["calibration"] = {"scale": 1.2, "offset": 0.0}
    table.write_text(json.dumps(recalibrated))
    with pytest.raises(UserError, match=r"holds a run with other settings \(lut_costs\)"):
        loop("--target_latency", "20", "--", "--epochs", "3")
    assert len(steps) == 5  # nothing ran under the other settings
    # Sweep 12: a plan.json of an earlier version (the steps' options as lists of words) was refused as "other
    # settings (build_options, search_options)", as if the user had changed them. Sweep 13: plan.json's target
    # edited to the new one let the old target's search pass as the new one's; plan.json is now sealed.
    plan = utils.read_sealed_json(str(out / "plan.json"), "")
    for older_form in (dict(plan, build_options=[], search_options=["--epochs", "3"]), dict(plan, lut_costs=[])):
        utils.write_sealed_json(str(out / "plan.json"), older_form)
        with pytest.raises(UserError, match=r"holds a run whose plan.json is in another form than this version of "
                                            r"closed_loop.py writes \(made by an earlier version, or edited\)"):
            loop("--target_latency", "20", "--", "--epochs", "3")
    for edited in (json.dumps(plan), json.dumps({"content": dict(plan, target_latency=21), "sha256": "0" * 64})):
        (out / "plan.json").write_text(edited)
        with pytest.raises(UserError, match=r"plan.json was changed since this project wrote it \(edited, cut short, "
                                            r"or from an older version\); choose another --out, or delete the folder"):
            loop("--target_latency", "21", "--", "--epochs", "3")
    assert len(steps) == 5


def test_the_loop_says_when_its_table_was_measured_on_another_cpu():
    # Before: a table from another CPU model ran without a word, its +41% read as the table's error.
    here = latency_timing.cpu_model_name()[0]
    for table in lp.CPU_LUTS:
        measured_on = lp.table_predictor(table).metadata["device"]["name"]
        note = closed_loop.other_machine_note(table)
        assert note is None if measured_on == here else (measured_on in note and here in note)
    assert closed_loop.other_machine_note(lp.DEFAULT_LUT) is None  # not a CPU table: refused by check_target


@pytest.mark.slow
def test_sigterm_to_a_first_closed_loop_run_leaves_no_folder(fitted_table, tmp_path):
    # Sweep 9. Before: the search step was killed (SIGKILL) before it could remove its new files, and the loop's
    # own clean-up ran for bad input only: plan.json and search/ were left in a --out nothing could resume.
    import data
    dataset = data.write_synthetic_dataset(tmp_path / "data", num_classes=3, train_per_class=40, val_per_class=4,
                                           image_size=32, seed=0)
    out = tmp_path / "loop"
    command = [sys.executable, os.path.join(REPO_ROOT, "closed_loop.py"), "--target_latency", "20", "--lut",
               fitted_table, "--out", str(out), "--", "--dataset", str(dataset), "--epochs", "30"] + TINY_SEARCH[2:]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    while not (out / "search" / "log.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # into the search's first epoch
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    # Sweep 13: two lines, the search step's own "continue with: search_imagenet.py ... --resume" and the loop's
    # bare "terminated"; now one, the loop's command (the search leaves that line to it).
    assert process.stderr.read().strip().splitlines() == [
        "terminated; the same command continues it, keeping the finished steps: " + shlex.join(["python3", *command[1:]])]
    assert not out.exists()


def test_a_failed_step_is_one_line_that_carries_its_own_error(capfd):
    # Sweep 15 #80: a step's "error: ..." line, then the loop's "... failed (exit 2); its message is above".
    step = ("import sys\nprint('warning: kept as it came', file=sys.stderr)\n"
            "print('error: no space left for log.txt', file=sys.stderr)\nsys.exit(2)")
    with pytest.raises(UserError) as caught:
        closed_loop.run_step(["-c", step], "searching for 15 ms")
    assert str(caught.value) == "searching for 15 ms failed: no space left for log.txt"
    assert capfd.readouterr().err == "warning: kept as it came\n"  # other lines pass, the error line is folded in
    with pytest.raises(UserError, match=r"^a step failed \(exit 3\); its output is above$"):
        closed_loop.run_step(["-c", "raise SystemExit(3)"], "a step")
