"""A sweep of bad input across the command-line scripts, as a user would
type it: malformed or injected --arch_config, missing, empty and corrupt
datasets and images, NaN, negative and infeasible numbers, corrupt, foreign
and code-carrying checkpoints and tables, and flags that do not go together.

Every case must end with exit status 2 and exactly one line on stderr,
`error: ...`, naming the problem; no traceback; and nothing new on disk
(the sweep's scratch folder is compared before and after). Other test files
hold more cases for one script each (output paths, search settings,
training options, tables); this file covers the rest in one table.
"""

import importlib.util
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import closed_loop
import data
import evaluate
import latency_build
import latency_predictor
import latency_timing
import model_train
import peers
import reproduce_tables
import search_imagenet
import train_imagenet
from tools import make_imagenet100
import utils
from utils import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path):
    spec = importlib.util.spec_from_file_location(Path(relative_path).stem, REPO_ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


search_quality = load_script("benchmarks/search_quality.py")
landing = load_script("benchmarks/landing.py")
search_step_cost = load_script("benchmarks/search_step_cost.py")
screen = load_script("benchmarks/screen.py")
ground_truth = load_script("benchmarks/ground_truth.py")
latency_tables = load_script("benchmarks/latency_tables.py")
train_throughput = load_script("benchmarks/train_throughput.py")
build_preprocess_script = load_script("tools/build_preprocess_script.py")


class RunsCode:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo injected > /tmp/lightnas-injected",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, seal_search):
    """Every bad (and one good) file the cases refer to, by name."""
    root = tmp_path_factory.mktemp("inputs")
    files = {"root": root}
    files["data"] = data.write_synthetic_dataset(root / "data", num_classes=3, train_per_class=4, val_per_class=2,
                                                 image_size=32, seed=0)
    files["broken_image"] = data.write_synthetic_dataset(root / "broken-image", num_classes=3, train_per_class=4,
                                                         val_per_class=2, image_size=32, seed=0)
    first_class = sorted((files["broken_image"] / "train").iterdir())[0]
    (first_class / "broken.png").write_bytes(b"not a png")  # found only when the run reads it
    files["renamed_val_class"] = root / "renamed-val-class"  # val/ names one class otherwise than train/
    shutil.copytree(files["data"], files["renamed_val_class"])
    first_val_class = sorted((files["renamed_val_class"] / "val").iterdir())[0]
    first_val_class.rename(first_val_class.with_name("renamed"))
    files["empty_dir"] = root / "empty"
    files["empty_dir"].mkdir()
    files["no_val"] = root / "no-val"
    shutil.copytree(files["data"] / "train", files["no_val"] / "train")  # a good train/, and no val/
    files["empty_classes"] = root / "empty-classes"
    for split in ("train", "val"):
        (files["empty_classes"] / split / "a").mkdir(parents=True)
    files["text"] = root / "notes.txt"
    files["text"].write_text("not a checkpoint")
    files["empty_file"] = root / "empty.pth.tar"
    files["empty_file"].write_bytes(b"")
    files["zeros_file"] = root / "zeros.pth.tar"
    files["zeros_file"].write_bytes(bytes(100_000))
    files["pickle"] = root / "malicious.pth.tar"
    with open(files["pickle"], "wb") as file:
        pickle.dump({"state_dict": RunsCode()}, file)
    files["foreign"] = root / "foreign.pth.tar"  # a valid checkpoint of something else
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    files["tensor"] = root / "tensor.pth.tar"
    torch.save(torch.zeros(3), files["tensor"])
    good = root / "good.pth.tar"
    torch.save({"x": torch.zeros(100)}, good)
    files["truncated"] = root / "truncated.pth.tar"
    files["truncated"].write_bytes(good.read_bytes()[:300])
    files["released_20"] = root / "LightNet-20ms.pth.tar"  # released layout, 1000 classes
    torch.save({"state_dict": model_train.LightNet(model_train.LIGHTNETS["LightNet-20ms"]).state_dict()},
               files["released_20"])
    files["bad_json"] = root / "broken.json"
    files["bad_json"].write_text("{not json")
    files["json_list"] = root / "list.json"
    files["json_list"].write_text(json.dumps([1, 2, 3]))
    files["table_no_entries"] = root / "table.json"
    files["table_no_entries"].write_text(json.dumps({"format": "lightnas-cost-table", "format_version": 1}))
    files["fifo"] = root / "pipe.json"
    os.mkfifo(files["fifo"])  # opened, it would block until a writer came
    files["device_link"] = root / "zeros.json"
    files["device_link"].symlink_to("/dev/zero")  # read, it would fill the memory
    files["huge_json"] = root / "huge.json"
    with open(files["huge_json"], "wb") as file:
        file.truncate(65 * 2**20)  # sparse: 65 MiB on paper, nothing on disk
    files["csv"] = root / "measurements.csv"
    files["csv"].write_text("arch,measured_ms\n")
    files["csv_hard_link"] = root / "measurements-link.csv"
    os.link(files["csv"], files["csv_hard_link"])
    files["imagenet"] = root / "imagenet"
    (files["imagenet"] / "train").mkdir(parents=True)
    files["deep_json"] = root / "deep.json"
    files["deep_json"].write_text("[" * 100_000 + "]" * 100_000)
    shipped = (REPO_ROOT / "latency_lut" / "cpu_intel_xeon_b1_t1.json").read_text()
    entry = json.dumps(json.loads(shipped)["fixed"]["value"])
    assert shipped.count(f'"value": {entry}') == 1  # the fixed part's value: replaced below
    files["table_huge_integer"] = root / "huge-integer.json"
    files["table_huge_integer"].write_text(shipped.replace(f'"value": {entry}', '"value": 1' + "0" * 400))
    files["table_huge_entry"] = root / "huge-entry.json"
    files["table_huge_entry"].write_text(shipped.replace(f'"value": {entry}', '"value": 1e308'))
    files["pipe_image"] = root / "pipe-image"  # a named pipe called .png among the val images
    shutil.copytree(files["data"], files["pipe_image"])
    os.mkfifo(sorted((files["pipe_image"] / "val").iterdir())[0] / "pipe.png")
    files["class_link_up"] = root / "class-link-up"  # a link to .. inside a class folder
    shutil.copytree(files["data"], files["class_link_up"])
    (sorted((files["class_link_up"] / "val").iterdir())[0] / "loop").symlink_to("..")
    archs = [latency_predictor.arch_to_text([(layer + shift) % 7 for layer in range(21)]) for shift in range(7)]
    for name, value in (("same_csv", "12.0"), ("huge_csv", "1e301"), ("underscore_csv", "1_2.5")):
        files[name] = root / f"{name}.csv"
        files[name].write_text("arch,measured_ms\n" + "".join(f"{arch},{value}\n" for arch in archs))
    files["two_measured_columns"] = root / "two-measured-columns.csv"  # a spreadsheet's column of another run
    files["two_measured_columns"].write_text("arch,measured_ms,measured_ms\n" + "".join(
        f"{arch},{10 + number},{16 + number}\n" for number, arch in enumerate(archs)))
    intel = latency_predictor.load_predictor(str(REPO_ROOT / "latency_lut" / "cpu_intel_xeon_b1_t1.json"))
    files["seconds_csv"] = root / "seconds.csv"  # measurements in seconds, read as milliseconds
    files["seconds_csv"].write_text("arch,measured_ms\n" + "".join(
        f"{arch},{intel.raw_cost(arch.split()) / 1000 * (1 + 0.01 * number):.6f}\n"
        for number, arch in enumerate(archs)))
    files["outlier_csv"] = root / "outlier.csv"  # one measurement typed 100 times too large
    files["outlier_csv"].write_text("arch,measured_ms\n" + "".join(
        f"{arch},{intel.raw_cost(arch.split()) * (1 + 0.01 * number) * (100 if number == 3 else 1):.6f}\n"
        for number, arch in enumerate(archs)))
    files["headless_csv"] = root / "headless.csv"  # the good rows, the header line lost
    files["headless_csv"].write_text("".join(f"{arch},{intel.raw_cost(arch.split()):.6f}\n" for arch in archs))
    calibrated = json.loads(shipped)
    calibrated["metadata"]["calibration"] = {"scale": 1e200, "offset": 0.0}
    wordy = json.loads(shipped)
    wordy["metadata"]["threads"] = "two"
    files["table_wordy_threads"] = root / "wordy-threads.json"
    files["table_wordy_threads"].write_text(json.dumps(wordy))
    files["table_huge_scale"] = root / "huge-scale.json"
    files["table_huge_scale"].write_text(json.dumps(calibrated))
    files["repeated_key"] = root / "repeated-key.json"
    files["repeated_key"].write_text(json.dumps({"arch_config": model_train.LIGHTNETS[ARCH_24]})[:-1]
                                     + ', "arch_config": ["MBK3E1"]}')
    files["dead_link"] = root / "dead-link"  # a link to a folder that is gone
    files["dead_link"].symlink_to(root / "gone")
    files["dangling_class"] = root / "dangling-class"  # a class folder linked to a dataset that moved
    shutil.copytree(files["data"], files["dangling_class"])
    for split in ("train", "val"):
        (files["dangling_class"] / split / "class_moved").symlink_to(root / "moved-away")
    files["unknown_op_csv"] = root / "unknown-op.csv"
    files["unknown_op_csv"].write_text("arch,measured_ms\n" + "".join(f"{arch},12.0\n" for arch in archs[:3])
                                       + f"MBK9E9 {archs[3]},12.0\n")
    files["other_validation"] = root / "other-validation"  # validate's folder for another table
    files["other_validation"].mkdir()
    (files["other_validation"] / "validate.csv").write_text(
        "arch,measured_ms,predicted_raw_ms,predicted_ms\n" + "".join(f"{arch},12.0,1.5,1.5\n" for arch in archs))
    files["search_checkpoint"] = root / "search-checkpoint.pth.tar"
    torch.save({"state_dict": {}, "arch_optimizer": {}}, files["search_checkpoint"])
    files["search_folder"] = root / "a-search"  # a search's --save folder
    files["search_folder"].mkdir()
    torch.save({"state_dict": {}, "arch_optimizer": {}}, files["search_folder"] / "checkpoint.pth.tar")
    files["wrong_shape"] = root / "wrong-shape.pth.tar"  # a training checkpoint whose first conv was replaced
    state_dict = model_train.LightNet(model_train.LIGHTNETS[ARCH_24], num_classes=3).state_dict()
    first = next(iter(state_dict))
    state_dict[first] = torch.zeros(1)
    torch.save({"state_dict": state_dict, "arch_config": model_train.LIGHTNETS[ARCH_24], "optimizer": {},
                "scheduler": {}, "epoch": 1, "num_classes": 3, "best": {"top1": 0.0, "epoch": 1}, "args": {}},
               files["wrong_shape"])
    files["weights_3_classes"] = root / "three-classes.pth.tar"
    torch.save({"state_dict": model_train.LightNet(model_train.LIGHTNETS[ARCH_24], num_classes=3).state_dict()},
               files["weights_3_classes"])
    files["link_loop"] = root / "loop-a"  # two links that point at each other
    files["link_loop"].symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(files["link_loop"])
    files["json_loop"] = root / "loop-a.json"
    files["json_loop"].symlink_to(root / "loop-b.json")
    (root / "loop-b.json").symlink_to(files["json_loop"])
    files["reproduce_run"] = root / "reproduce-run"  # what reproduce_tables.py leaves in its --out first
    files["reproduce_run"].mkdir()
    utils.write_sealed_json(str(files["reproduce_run"] / "plan.json"), {"tool": "reproduce_tables.py", "mode": "quick"})
    for name, results in (("earlier_training", ("best.pth.tar", "metrics.jsonl")),  # their checkpoints deleted
                          ("earlier_search", ("arch.json", "metrics.jsonl"))):
        files[name] = root / name
        files[name].mkdir()
        for result in results:
            (files[name] / result).write_text("kept\n")
    files["odd_outputs"] = root / "odd-outputs"  # outputs a run writes, there as a pipe and a folder
    files["odd_outputs"].mkdir()
    os.mkfifo(files["odd_outputs"] / "arch.json")
    (files["odd_outputs"] / "best.pth.tar").mkdir()
    files["list_plan_run"] = root / "list-plan-run"  # a plan.json that is JSON but not an object
    files["list_plan_run"].mkdir()
    (files["list_plan_run"] / "plan.json").write_text("[1]\n")
    for name, field, value in (("table_bool_batch", "batch_size", True), ("table_clock", "protocol", "clock"),
                               ("table_zero_reference", "noise", 0)):
        odd = json.loads(shipped)
        if field == "protocol":
            odd["metadata"]["protocol"]["clock"] = "process"
        elif field == "noise":
            odd["metadata"]["noise"]["reference_median_ms"] = value
        else:
            odd["metadata"][field] = value
        files[name] = root / f"{name}.json"
        files[name].write_text(json.dumps(odd))
    training_state = {"state_dict": model_train.LightNet(model_train.LIGHTNETS[ARCH_24], num_classes=3).state_dict(),
                      "arch_config": model_train.LIGHTNETS[ARCH_24], "num_classes": 3, "epoch": 1, "args": {},
                      "best": {"top1": 30.0, "epoch": 1, "ema_top1": -1.0}, "optimizer": {}, "scheduler": {}}
    files["empty_optimizer"] = root / "empty-optimizer.pth.tar"  # edited: its optimizer state emptied
    torch.save(training_state, files["empty_optimizer"])
    files["best_200"] = root / "best-200.pth.tar"  # edited: a best top-1 of 200%
    torch.save(dict(training_state, best={"top1": 200.0, "epoch": 1, "ema_top1": -1.0}), files["best_200"])
    files["schedule_before_start"] = root / "schedule-before-start.pth.tar"  # edited: the schedule at step -5
    torch.save(dict(training_state, scheduler={"last_epoch": -5}), files["schedule_before_start"])
    files["best_to_come"] = root / "best-to-come.pth.tar"  # edited: its best from epoch 99 of a run after epoch 1
    torch.save(dict(training_state, best={"top1": 30.0, "epoch": 99, "ema_top1": -1.0}), files["best_to_come"])
    files["best_epoch_0"] = root / "best-epoch-0.pth.tar"  # edited: its best from epoch 0 (epochs count from 1)
    torch.save(dict(training_state, best={"top1": 30.0, "epoch": 0, "ema_top1": -1.0}), files["best_epoch_0"])
    files["best_epoch_true"] = root / "best-epoch-true.pth.tar"  # edited: its best epoch a boolean
    torch.save(dict(training_state, best={"top1": 30.0, "epoch": True, "ema_top1": -1.0}), files["best_epoch_true"])
    files["short_record"] = root / "short-record.pth.tar"  # weights whose recorded architecture lost a layer
    torch.save({"state_dict": training_state["state_dict"], "arch_config": model_train.LIGHTNETS[ARCH_24][:-1]},
               files["short_record"])
    files["nan_lr"] = root / "nan-lr.pth.tar"  # edited: its optimizer's learning rate NaN
    torch.save(dict(training_state, optimizer={"state": {}, "param_groups": [{"lr": float("nan"), "params": [0]}]}),
               files["nan_lr"])
    files["no_best"] = root / "no-best.pth.tar"  # edited: its best result removed
    torch.save({key: value for key, value in training_state.items() if key != "best"}, files["no_best"])
    files["best_in_words"] = root / "best-in-words.pth.tar"  # edited: its best top-1 a string
    torch.save(dict(training_state, best={"top1": "high", "epoch": 1}), files["best_in_words"])
    files["classes_damaged"] = root / "classes-damaged.pth.tar"  # weights whose class names are numbers
    torch.save({"state_dict": training_state["state_dict"], "arch_config": model_train.LIGHTNETS[ARCH_24],
                "classes": [0, 1, 2]}, files["classes_damaged"])
    files["classes_true"] = root / "classes-true.pth.tar"  # edited: num_classes true
    torch.save(dict(training_state, num_classes=True), files["classes_true"])
    files["huge_image_size"] = root / "huge-image-size.pth.tar"  # weights recording an image size of 100,000
    torch.save({"state_dict": training_state["state_dict"], "arch_config": model_train.LIGHTNETS[ARCH_24],
                "image_size": 100_000}, files["huge_image_size"])
    files["search_24_edited"] = root / "search-24-edited"  # its metrics.jsonl rows lack the search's columns
    files["search_24_edited"].mkdir()
    (files["search_24_edited"] / "arch.json").write_text(json.dumps(
        {"arch_config": model_train.LIGHTNETS[ARCH_24], "predicted": 23.9, "error_percent": -0.4, "target": 24.0,
         "search": {"epochs": 2, "freeze_epochs": 1, "seed": 0}}))
    (files["search_24_edited"] / "metrics.jsonl").write_text('{"epoch": 1}\n')
    files["screened_v"] = root / "screened-v"  # a screen folder that already holds variant "v"
    files["screened_v"].mkdir()
    screened = {"name": "v", "search_arguments": [], "strided_skips": [[]], "abs_error_max": 0.5, "tau_mean": 0.3,
                "pick_percentile_mean": 50.0, "val_top1_mean": 40.0, "undone_share_mean": None,
                "search_seconds_mean": 100.0}
    (files["screened_v"] / "screens.jsonl").write_text(json.dumps(screened) + "\n")
    files["screen_edited"] = root / "screen-edited"  # a screens.jsonl row cut down by hand
    files["screen_edited"].mkdir()
    (files["screen_edited"] / "screens.jsonl").write_text(json.dumps(screened) + "\n" + '{"name": "a"}\n')
    files["big_screens"] = root / "big-screens"  # screens.jsonl of 10 GiB (sparse)
    files["big_screens"].mkdir()
    with open(files["big_screens"] / "screens.jsonl", "wb") as file:
        file.truncate(10 * 2**30)
    files["search_24"] = root / "search-24"  # a finished search for 24 ms
    files["search_24"].mkdir()
    (files["search_24"] / "arch.json").write_text(json.dumps(
        {"arch_config": model_train.LIGHTNETS[ARCH_24], "predicted": 23.9, "error_percent": 100 * (23.9 / 24 - 1),
         "target": 24.0, "search": {"epochs": 1, "freeze_epochs": 1, "seed": 0}}))
    (files["search_24"] / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "seconds": 1.0, "val_top1": 40.0, "probabilities": [[1 / 7] * 7] * 21, "target": 24.0}) + "\n")
    (files["search_24"] / "args.json").write_text(json.dumps({"lut": None, "metric": None}))
    seal_search(files["search_24"])
    files["search_24_copy"] = root / "search-24-copy"
    shutil.copytree(files["search_24"], files["search_24_copy"])
    files["warmup_only"] = root / "warmup-only"  # a search whose checkpoint.pth.tar was deleted
    files["warmup_only"].mkdir()
    for name in ("warmup.pth.tar", "args.json", "log.txt"):
        (files["warmup_only"] / name).write_text("kept\n")
    files["cuda_truth"] = root / "cuda-truth.json"  # a ground truth made on another kind of device
    shutil.copy(REPO_ROOT / "benchmarks" / "ground_truth" / "random_24ms_cuda.json", files["cuda_truth"])
    files["cuda_truth_link"] = root / "cuda-truth-link.json"
    os.link(files["cuda_truth"], files["cuda_truth_link"])
    files["screens_fifo"] = root / "screens-fifo"  # screen's results file there as a pipe
    files["screens_fifo"].mkdir()
    os.mkfifo(files["screens_fifo"] / "screens.jsonl")
    files["search_fifo_metrics"] = root / "search-fifo-metrics"  # a finished search whose metrics.jsonl is a pipe
    shutil.copytree(files["search_24"], files["search_fifo_metrics"])
    (files["search_fifo_metrics"] / "metrics.jsonl").unlink()
    os.mkfifo(files["search_fifo_metrics"] / "metrics.jsonl")
    files["screens_folder"] = root / "screens-folder"  # screen's results file there as a folder
    (files["screens_folder"] / "screens.jsonl").mkdir(parents=True)
    for name, field, value in (("table_metric_list", "metric", ["latency"]), ("table_device_text", "device", "cpu")):
        odd = json.loads(shipped)
        odd["metadata"][field] = value
        files[name] = root / f"{name}.json"
        files[name].write_text(json.dumps(odd))
    return files


ARCH_24 = "LightNet-24ms"
# (script, arguments, what the one line must say). {name} is a file of `inputs`; {out} a fresh path.
CASES = {
    # --arch_config, everywhere it is accepted
    "train: code in arch_config": (train_imagenet, ["--dataset", "{data}", "--save", "{out}", "--arch_config",
                                                   "__import__('os').system('touch /tmp/x')"], "--arch_config"),
    "train: dict arch_config": (train_imagenet, ["--dataset", "{data}", "--save", "{out}", "--arch_config",
                                                "{{'a': 1}}"], "--arch_config"),
    "train: arch json list of numbers": (train_imagenet, ["--dataset", "{data}", "--save", "{out}",
                                                         "--arch_config", "{json_list}"], "list of op names"),
    "train: arch broken json": (train_imagenet, ["--dataset", "{data}", "--save", "{out}", "--arch_config",
                                                "{bad_json}"], "not valid JSON"),
    # Sweep 7: a checkpoint (which records its arch_config) was "not valid JSON here ('utf-8' codec can't decode
    # byte 0x80 ...)", read as a damaged JSON file.
    "train: arch_config a checkpoint": (train_imagenet, ["--dataset", "{data}", "--save", "{out}", "--arch_config",
                                                         "{empty_optimizer}"], "is a zip archive such as a checkpoint"),
    "evaluate: unknown model": (evaluate, ["--model", "LightNet-99ms", "--weights", "{released_20}", "--dataset",
                                           "{data}"], "LightNet-99ms"),
    "evaluate: arch of 21 ops": (evaluate, ["--arch_config", str(model_train.LIGHTNETS[ARCH_24][:-1]), "--weights",
                                            "{released_20}", "--dataset", "{data}"], "expected 22 op names"),
    "predict: unknown op": (latency_build, ["predict", "--arch_config", str(["MBK3E1"] + ["MBK9E9"] * 21)],
                            "unknown op"),
    "predict: code": (latency_build, ["predict", "--arch_config", "[print('x')]"], "--arch_config"),
    # datasets
    "search: dataset missing": (search_imagenet, ["--save", "{out}", "--dataset", "{root}/nowhere"], "nowhere"),
    # Before: the linked class was dropped without a word (trained, searched and evaluated on one class fewer).
    "search: a class link to nothing": (search_imagenet, ["--save", "{out}", "--dataset", "{dangling_class}"],
                                        "holds links to nothing: class_moved"),
    "train: a class link to nothing": (train_imagenet, ["--save", "{out}", "--dataset", "{dangling_class}",
                                                        "--arch_config", ARCH_24], "holds links to nothing"),
    "evaluate: a class link to nothing": (evaluate, ["--weights", "{weights_3_classes}", "--dataset",
                                                     "{dangling_class}", "--model", ARCH_24], "holds links to nothing"),
    "search: dataset empty": (search_imagenet, ["--save", "{out}", "--dataset", "{empty_dir}"],
                              "empty/train not found"),
    "search: dataset without val": (search_imagenet, ["--save", "{out}", "--dataset", "{no_val}", "--num_classes", "3"],
                                    "no-val/val not found"),
    "search: classes without images": (search_imagenet, ["--save", "{out}", "--dataset", "{empty_classes}"],
                                       "train/a holds no image file"),
    "search: more classes than the set": (search_imagenet, ["--save", "{out}", "--dataset", "{data}",
                                                            "--num_classes", "5"], "has only 3 classes"),
    "train: dataset missing": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{root}/nowhere"], "nowhere"),
    "train: dataset empty": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{empty_dir}"],
                             "empty/train not found"),
    "train: dataset without val": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{no_val}"],
                                   "no-val/val not found"),
    "train: classes without images": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{empty_classes}"],
                                      "train/a holds no image file"),
    "evaluate: dataset missing": (evaluate, ["--model", "LightNet-20ms", "--weights", "{released_20}",
                                             "--dataset", "{root}/nowhere"], "nowhere"),
    "evaluate: wrong class count": (evaluate, ["--model", "LightNet-20ms", "--weights", "{released_20}",
                                               "--dataset", "{data}", "--workers", "0"],
                                    "val/ has 3 classes but the weights predict 1000"),
    "imagenet100: no val": (make_imagenet100, ["--imagenet", "{imagenet}", "--out", "{out}"],
                            "imagenet/val is not a folder"),
    "imagenet100: missing": (make_imagenet100, ["--imagenet", "{root}/nowhere", "--out", "{out}"], "nowhere"),
    # numbers
    "search: negative target": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--target_latency",
                                                  "-3"], "--target_latency"),
    "search: NaN target": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--target_latency",
                                             "nan"], "--target_latency"),
    "search: infeasible target": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--target_latency",
                                                    "500"], "outside what this search space can reach"),
    "search: flops target too low": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--lut", "flops",
                                                       "--metric", "flops", "--target_latency", "1"], "outside"),
    "search: split of 1": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--arch_split_from_train",
                                             "1"], "--arch_split_from_train"),
    "search: negative eta": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--eta", "-1"], "--eta"),
    "search: zero epochs": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--epochs", "0"],
                            "--epochs"),
    "search: one class": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "1"],
                          "--num_classes"),
    "train: batch of 1": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--batch_size", "1"],
                          "BatchNorm needs at least 2"),
    "train: tiny images": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--image_size", "8"],
                           "--image_size"),
    "train: NaN dropout": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--dropout", "nan"],
                           "--dropout"),
    "train: EMA decay without EMA": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}",
                                                      "--ema_decay", "0.99"], "add --ema or drop --ema_decay"),
    "train: EMA decay 1": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--ema", "--ema_decay", "1"],
                           "--ema_decay"),
    "train: negative seed": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--seed", "-1"], "--seed"),
    "train: seed beyond numpy's range": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset",
                                                          "{data}", "--seed", "99999999999999999999"],
                                         "--seed must be in [0, 2147483647]"),
    "search: seed beyond numpy's range": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--seed",
                                                            "99999999999999999999"], "--seed must be in [0, 2147483647]"),
    "evaluate: batch 0": (evaluate, ["--model", "LightNet-20ms", "--weights", "{released_20}", "--dataset",
                                     "{data}", "--batch_size", "0"], "--batch_size"),
    "model_train: zero classes": (model_train, ["--arch_config", ARCH_24, "--num_classes", "0"], "--num_classes"),
    "reproduce: negative tolerance": (reproduce_tables, ["--quick", "--out", "{out}", "--tolerance", "-1"],
                                      "--tolerance"),
    "reproduce: infeasible target": (reproduce_tables, ["--quick", "--out", "{out}", "--targets", "2"], "outside"),
    "search_quality: one random net": (search_quality, ["--out", "{out}", "--random_nets", "1"],
                                       "--random_nets"),
    "search_quality: NaN target": (search_quality, ["--out", "{out}", "--target", "nan"], "--target"),
    "search_quality: infeasible": (search_quality, ["--out", "{out}", "--target", "90"], "outside"),
    "imagenet100: split 1.5": (make_imagenet100, ["--imagenet", "{data}", "--out", "{out}", "--arch_split", "1.5"],
                               "--arch_split"),
    "validate: a count table": (latency_build, ["validate", "--lut", "flops"], "table flops not found"),
    "validate: 2 held-out networks": (latency_build, ["validate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                             "cpu_amd_epyc_b1_t1.json"),
                                                      "--num_archs", "2"], "--num_archs must be at least 5"),
    "build: fit on too few networks": (latency_build, ["build", "--method", "fit", "--num_networks", "10", "--out",
                                                       "{out}.json"], "--num_networks must be at least"),
    "build: negative jitter limit": (latency_build, ["build", "--max_jitter_pct", "-1", "--out", "{out}.json"],
                                     "--max_jitter_pct must be a positive"),
    "build: unknown runtime": (latency_build, ["build", "--runtime", "tensorrt", "--out", "{out}.json"],
                               "unknown runtime 'tensorrt'"),
    "build: over an existing table": (latency_build, ["build", "--out", "{text}"], "already exists; pass --force"),
    "from-mlp: over an existing table": (latency_build, ["from-mlp", "--mlp", "{pickle}", "--out", "{text}"],
                                         "already exists; pass --force"),
    # checkpoints
    "search: resume a text file": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "3", "--resume", "{text}"],
                                   "could not be loaded"),
    "search: resume a pickle with code": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "3", "--resume",
                                                            "{pickle}"], "refused"),
    "search: resume an empty file": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "3", "--resume",
                                                       "{empty_file}"], "empty or cut short"),
    "search: resume a truncated file": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "3", "--resume",
                                                          "{truncated}"], "could not be loaded"),
    "search: resume a foreign checkpoint": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "3", "--resume",
                                                              "{foreign}"], "not a search checkpoint"),
    "search: resume released weights": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes", "3", "--resume",
                                                          "{released_20}"], "not a search checkpoint"),
    "train: resume a pickle with code": (train_imagenet, ["--arch_config", ARCH_24, "--dataset", "{data}", "--resume", "{pickle}"],
                                         "refused"),
    "train: resume a text file": (train_imagenet, ["--arch_config", ARCH_24, "--dataset", "{data}", "--resume", "{text}"],
                                  "could not be loaded"),
    "train: resume a truncated file": (train_imagenet, ["--arch_config", ARCH_24, "--dataset", "{data}", "--resume", "{truncated}"],
                                       "could not be loaded"),
    "train: resume a foreign checkpoint": (train_imagenet, ["--arch_config", ARCH_24, "--dataset", "{data}", "--resume", "{foreign}"],
                                           "not a training checkpoint"),
    "train: resume a bare tensor": (train_imagenet, ["--arch_config", ARCH_24, "--dataset", "{data}", "--resume", "{tensor}"],
                                    "not a training checkpoint"),
    "train: evaluate a pickle with code": (train_imagenet, ["--dataset", "{data}", "--evaluate", "{pickle}"],
                                           "refused"),
    "train: evaluate a bare tensor": (train_imagenet, ["--dataset", "{data}", "--evaluate", "{tensor}"],
                                      "holds no model state_dict"),
    "evaluate: weights with code": (evaluate, ["--model", "LightNet-20ms", "--weights", "{pickle}", "--dataset",
                                               "{data}"], "refused"),
    "evaluate: empty weights": (evaluate, ["--model", "LightNet-20ms", "--weights", "{empty_file}", "--dataset",
                                           "{data}"], "empty or cut short"),
    "evaluate: foreign weights": (evaluate, ["--model", "LightNet-20ms", "--weights", "{foreign}", "--dataset",
                                             "{data}"], "is it a LightNet checkpoint?"),
    "evaluate: no architecture recorded": (evaluate, ["--weights", "{released_20}", "--dataset", "{data}"],
                                           "give --model or --arch_config"),
    "from-mlp: MLP with code": (latency_build, ["from-mlp", "--mlp", "{pickle}", "--out", "{out}.json"],
                                "refused"),
    "from-mlp: a text file": (latency_build, ["from-mlp", "--mlp", "{text}", "--out", "{out}.json"],
                              "could not be loaded"),
    "from-mlp: foreign weights": (latency_build, ["from-mlp", "--mlp", "{foreign}", "--out", "{out}.json"], "not the authors' predictor"),
    # tables
    "search: table missing": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--lut",
                                                "{root}/none.json"], "not found"),
    "search: table not JSON": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--lut", "{bad_json}"],
                               "is not valid JSON"),
    "search: table without metadata or entries": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--lut",
                                                        "{table_no_entries}"], "no 'metadata' object"),
    "search: table of weights": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--lut",
                                                   "{released_20}"], "not the authors' predictor"),
    "predict: table not JSON": (latency_build, ["predict", "--lut", "{bad_json}", "--arch_config", ARCH_24],
                                "is not valid JSON"),
    "predict: table is a FIFO": (latency_build, ["predict", "--lut", "{fifo}", "--arch_config", ARCH_24],
                                 "is not a regular file"),
    "predict: table links to a device": (latency_build, ["predict", "--lut", "{device_link}", "--arch_config",
                                                         ARCH_24], "is not a regular file"),
    "predict: table of 65 MiB": (latency_build, ["predict", "--lut", "{huge_json}", "--arch_config", ARCH_24],
                                 "is 65 MiB, more than the 64 MiB"),
    "train: architecture file is a FIFO": (train_imagenet, ["--arch_config", "{fifo}", "--save", "{out}",
                                                            "--dataset", "{data}"], "is not a regular file"),
    "evaluate: weights are a FIFO": (evaluate, ["--model", "LightNet-20ms", "--weights", "{fifo}", "--dataset",
                                                "{data}"], "is not a regular file"),
    "calibrate: no measurements": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                             "cpu_amd_epyc_b1_t1.json"),
                                                   "--measurements", "{csv}"], "needs at least 5 measured"),
    "calibrate: table without metadata": (latency_build, ["calibrate", "--lut", "{table_no_entries}",
                                                          "--measurements", "{csv}"], "no 'metadata' object"),
    "validate: table missing": (latency_build, ["validate", "--lut", "{root}/none.json"], "not found"),
    "validate: out_dir under a file": (latency_build, ["validate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                               "cpu_amd_epyc_b1_t1.json"),
                                                        "--out_dir", "{text}/validation"],
                                        "notes.txt/validation: cannot write there"),
    # Before: the other table's measurements were replaced after minutes of timing.
    "validate: out_dir of another table": (latency_build, ["validate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                  "cpu_amd_epyc_b1_t1.json"),
                                                           "--out_dir", "{other_validation}"],
                                           "holds a validate.csv that this table did not write"),
    # flags that do not go together
    "search: fixed penalty without w": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--penalty",
                                                          "fixed"], "--penalty_weight"),
    "search: two final choices": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--skip_majority",
                                                    "--pick_among", "4"], "give one of them"),
    "search: energy metric on a latency table": (search_imagenet, ["--save", "{out}", "--dataset", "{data}",
                                                                   "--metric", "energy"], "not energy"),
    "train: resume and evaluate": (train_imagenet, ["--arch_config", ARCH_24, "--dataset", "{data}", "--resume", "{foreign}", "--evaluate",
                                                    "{foreign}"], "not both"),
    "train: sync_bn on cpu": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--sync_bn",
                                               "--device", "cpu"], "--sync_bn"),
    "train: onnx into a missing folder": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}",
                                                           "--export_onnx", "{root}/nowhere/model.onnx"],
                                          "does not exist"),
    "train: onnx into an unwritable folder": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset",
                                                               "{data}", "--export_onnx", "/proc/model.onnx"],
                                              "--export_onnx /proc: cannot write there"),
    "train: onnx path is a folder": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}",
                                                      "--export_onnx", "{root}"], "is a folder; give the path of a file"),
    # Sweep 17 #246: a path ending in / was taken as a file in the folder above it; the training ran to its
    # end, then failed at the export with "No such file or directory; free some space".
    "train: onnx path ends with /": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset",
                                                      "{data}", "--export_onnx", "{root}/onnx/"],
                                     "/onnx/ names a folder, not a file; add the file's name to it"),
    # Sweep 18 #194: the search diverged, and the advice named --tau_decay, --eta or --arch_learning_rate.
    "search: penalty weight 1e308": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--penalty", "fixed",
                                                       "--penalty_weight", "1e308"],
                                     "--penalty_weight must be in [0, 1e+06], got 1e+308"),
    # numbers the code cannot use, and JSON no file of this project holds
    "search: learning rate 1e308": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--learning_rate",
                                                      "1e308"], "--learning_rate must be in (0, 10]"),
    "search: alpha learning rate 1e308": (search_imagenet, ["--save", "{out}", "--dataset", "{data}",
                                                            "--arch_learning_rate", "1e308"], "--arch_learning_rate"),
    "search: eta 1e308": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--eta", "1e308"],
                          "--eta must be in [0, 100]"),
    "search: tau decay 1e308": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--tau_decay",
                                                  "1e308"], "lowers the Gumbel temperature"),
    "search: tradeoff 1e308": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--tradeoff", "1e308"],
                               "--tradeoff must be at most"),
    "search: epochs 10**20": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--epochs",
                                                "99999999999999999999"], "--epochs must be in [1, 10000]"),
    "search: image size 10**8": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--image_size",
                                                   "99999999"], "--image_size must be in"),
    "search: 10**11 classes": (search_imagenet, ["--save", "{out}", "--dataset", "{data}", "--num_classes",
                                                 "99999999999"], "--num_classes must be in [2, 100000]"),
    "train: lr 1e308": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}", "--lr",
                                         "1e308"], "--lr must be in (0, 10]"),
    "train: epochs 10**20": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}",
                                              "--epochs", "99999999999999999999"], "--epochs must be in"),
    "train: image size 10**20": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}",
                                                  "--image_size", "99999999999999999999"], "--image_size must be in"),
    "train: opset 1": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset", "{data}",
                                        "--export_onnx", "{out}.onnx", "--onnx_opset", "1"], "--onnx_opset must be in"),
    "train: batch larger than the split": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}", "--dataset",
                                                            "{data}", "--batch_size", "64", "--workers", "0",
                                                            "--image_size", "32"], "fewer than one batch"),
    "search: unreadable image found mid-epoch": (search_imagenet, ["--save", "{out}", "--dataset", "{broken_image}",
                                                   "--epochs", "1", "--freeze_epochs", "0", "--image_size", "32",
                                                   "--num_classes", "3", "--batch_size_train", "2", "--batch_size_val", "2",
                                                   "--workers", "0"], "cannot read image"),
    "train: unreadable image found mid-epoch": (train_imagenet, ["--arch_config", ARCH_24, "--save", "{out}",
                                                  "--dataset", "{broken_image}", "--epochs", "1", "--batch_size",
                                                  "2", "--image_size", "32", "--workers", "0"], "cannot read image"),
    "evaluate: image size 10**20": (evaluate, ["--model", "LightNet-20ms", "--weights", "{released_20}", "--dataset",
                                               "{data}", "--image_size", "99999999999999999999"], "--image_size"),
    "model_train: 10**11 classes": (model_train, ["--arch_config", ARCH_24, "--num_classes", "99999999999"],
                                    "--num_classes must be in [1, 100000]"),
    "model_train: width 10**6": (model_train, ["--arch_config", ARCH_24, "--width_mult", "1e6"], "--width_mult"),
    "train: arch nested 100,000 deep": (train_imagenet, ["--dataset", "{data}", "--save", "{out}", "--arch_config",
                                                         "{deep_json}"], "nests too deeply"),
    "predict: table nested 100,000 deep": (latency_build, ["predict", "--lut", "{deep_json}", "--arch_config",
                                                           ARCH_24], "nests too deeply"),
    "predict: table entry 10**400": (latency_build, ["predict", "--lut", "{table_huge_integer}", "--arch_config",
                                                     ARCH_24], "401 digits"),
    "predict: table entry 1e308": (latency_build, ["predict", "--lut", "{table_huge_entry}", "--arch_config",
                                                   ARCH_24], "not a plausible cost"),
    "calibrate: measurements a folder": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                   "cpu_intel_xeon_b1_t1.json"),
                                                         "--measurements", "{empty_dir}", "--out", "{out}.json"],
                                         "is a folder"),
    # Numbers that would hang (a warm-up of 1e308 s, 10**14 calls) or ask numpy for terabytes.
    "timing: warm-up 1e308 s": (latency_timing, ["--arch_config", ARCH_24, "--warmup_s", "1e308"], "--warmup_s must"),
    "timing: 10**14 calls": (latency_timing, ["--arch_config", ARCH_24, "--calls", "99999999999999"], "--calls must"),
    "build: warm-up inf": (latency_build, ["build", "--out", "{out}.json", "--warmup_s", "inf"], "--warmup_s must"),
    "build: 0 repeats": (latency_build, ["build", "--out", "{out}.json", "--repeats", "0"], "--repeats must"),
    "build: seed -1": (latency_build, ["build", "--out", "{out}.json", "--seed", "-1"], "--seed must"),
    "build: 10**11 networks": (latency_build, ["build", "--out", "{out}.json", "--num_networks", "99999999999"],
                               "--num_networks must"),
    "validate: 10**11 networks": (latency_build, ["validate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                           "cpu_intel_xeon_b1_t1.json"),
                                                  "--num_archs", "99999999999", "--out_dir", "{out}"],
                                  "--num_archs must"),
    "from-mlp: 0 training networks": (latency_build, ["from-mlp", "--mlp", "{out}.pth.tar", "--out", "{out}.json",
                                                      "--num_train", "0"], "--num_train must"),
    "from-mlp: -5 training networks": (latency_build, ["from-mlp", "--mlp", "{out}.pth.tar", "--out", "{out}.json",
                                                       "--num_train", "-5"], "--num_train must"),
    "from-mlp: 0 held-out networks": (latency_build, ["from-mlp", "--mlp", "{out}.pth.tar", "--out", "{out}.json",
                                                      "--num_holdout", "0"], "--num_holdout must"),
    "calibrate: one file given twice": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                  "cpu_intel_xeon_b1_t1.json"),
                                                        "--measurements", "{csv}", "{csv}", "--out", "{out}.json"],
                                        "given twice"),
    "calibrate: --out the measurements": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                    "cpu_intel_xeon_b1_t1.json"),
                                                          "--measurements", "{csv}", "--out", "{csv}"],
                                          "is one of the --measurements files"),
    "build: --out a pipe": (latency_build, ["build", "--out", "{fifo}", "--force"], "is not a regular file"),
    "evaluate: weights of zeros": (evaluate, ["--model", "LightNet-24ms", "--weights", "{zeros_file}", "--dataset",
                                             "{data}"], "not a PyTorch checkpoint"),  # before: torch's weights_only advice
    "search: latch tolerance 200%": (search_imagenet, ["--save", "{out}", "--dataset", "{data}",
                                                       "--latch_tolerance", "200%"], "below 100%"),
    "reproduce: dataset without weights": (reproduce_tables, ["--quick", "--out", "{out}", "--dataset", "{data}"],
                                           "go together"),
    # Before: the landing benchmark made its folder and ran warm-ups, the step benchmark ended in a traceback.
    "landing: target nan": (landing, ["--out", "{out}", "--targets", "24", "nan"],
                            "--targets must be a positive number of ms, got nan"),
    "landing: target out of reach": (landing, ["--out", "{out}", "--targets", "3"], "--targets 3 ms is outside"),
    "landing: search options it sets": (landing, ["--out", "{out}", "--search_arguments", "--seed=3"],
                                        "--seed is set by landing.py"),
    "step cost: no steps": (search_step_cost, ["--steps", "0"], "--steps must be in [1, 100,000], got 0"),
    "step cost: one image": (search_step_cost, ["--batch_size", "1"], "BatchNorm needs two images"),
    "search: --save is the tables' folder": (search_imagenet, ["--save", str(REPO_ROOT / "latency_lut"), "--dataset",
                                                               "{data}", "--num_classes", "3"], "holds files a search does not write"),
    # Before: ignored in silence (only the evaluation of released weights reads them).
    "reproduce: evaluation batch without evaluation": (reproduce_tables, ["--quick", "--out", "{out}",
                                                                          "--eval_batch_size", "50"],
                                                        "--eval_batch_size applies to evaluating the released weights"),
    "reproduce: evaluation batch 0": (reproduce_tables, ["--quick", "--out", "{out}", "--dataset", "{data}",
                                                         "--weights_dir", "{out}/..", "--eval_batch_size", "0"],
                                      "--eval_batch_size must be at least 1"),
    # Before: landing wrote its searches beside reproduce's, closed_loop named "other settings (build_options, ...)".
    # Before: "not found", "a part of the path is a file" or "train is not a folder".
    "train: arch_config a loop of links": (train_imagenet, ["--save", "{out}", "--arch_config", "{json_loop}"],
                                           "is a loop of links"),
    # Sweep 14 #216: "holds no finished search (no arch.json)"; a loop not named .json was "neither a registered
    # network, a JSON file, nor a list".
    "screen: folders a loop of links": (screen, ["--folders", "{link_loop}"], "loop-a is a loop of links"),
    "train: arch_config a loop of links not named .json": (train_imagenet, ["--save", "{out}", "--arch_config",
                                                                            "{link_loop}"], "loop-a is a loop of links"),
    "search: dataset a loop of links": (search_imagenet, ["--save", "{out}", "--dataset", "{link_loop}"],
                                        "loop-a is a loop of links"),
    "search: save a loop of links": (search_imagenet, ["--save", "{link_loop}"], "loop-a is a loop of links"),
    "validate: out_dir a loop of links": (latency_build, ["validate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                  "cpu_amd_epyc_b1_t1.json"),
                                                          "--out_dir", "{link_loop}"],
                                          "loop-a is a loop of links"),
    # Sweep 15 #182, #184: named as a folder that lacks train/ ("pipe.json/train is not a folder") or arch.json.
    # Sweep 21 #199, #205: the subset was made inside the source set, where it became one more class folder.
    "imagenet100: --out inside the source": (make_imagenet100, ["--imagenet", "{data}", "--out", "{data}/train/sub100"],
                                             "is inside --imagenet"),
    # Sweep 21 #45: one measurement typed 100 times too large was blamed on the units ("seconds for
    # milliseconds?"). #49: a CSV saved without its header line: "its header names the column 20.9446 twice".
    "calibrate: one outlying measurement": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                      "cpu_intel_xeon_b1_t1.json"),
                                                            "--measurements", "{outlier_csv}", "--out", "{out}.json"],
                                            "ms, 99 times off the ratio of the other measurements; remove or re-measure"),
    "calibrate: no header line": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                            "cpu_intel_xeon_b1_t1.json"),
                                                  "--measurements", "{headless_csv}", "--out", "{out}.json"],
                                  "a number, where the header should name the columns"),
    # Sweep 21 #96, #243, #245, #250, #252: an output folder given as a link to nothing was "cannot write there (a
    # part of the path is a file, not a folder)".
    "train: --save a link to nothing": (train_imagenet, ["--save", "{dead_link}", "--dataset", "{data}",
                                                         "--arch_config", ARCH_24],
                                        "is a link to nothing (was what it names moved?); create the folder it names"),
    "closed loop: --out a link to nothing": (closed_loop, ["--target_latency", "24", "--out", "{dead_link}"],
                                             "is a link to nothing"),
    "reproduce: --out a link to nothing": (reproduce_tables, ["--quick", "--out", "{dead_link}"],
                                           "is a link to nothing"),
    # Sweep 21 #237: --search_dataset a link to nothing was found by the first search, after Table 1's timings.
    "reproduce: --search_dataset a link to nothing": (reproduce_tables, ["--quick", "--out", "{out}",
                                                                         "--search_dataset", "{dead_link}"],
                                                      "is a link to nothing"),
    # Sweep 22 #238: train/ and val/ with different classes was found by the first search, after Table 1's
    # timings. #141: ground_truth.py --out a link to nothing retrained before it would write. #147/#148: build
    # --out a loop of links was "already exists; pass --force", which --force did not mend.
    "reproduce: --search_dataset with other val classes": (reproduce_tables, ["--quick", "--out", "{out}",
                                                                              "--search_dataset",
                                                                              "{renamed_val_class}"],
                                                           "train/ and val/ hold different class folders"),
    "ground truth: --out a link to nothing": (ground_truth, ["--nets", "2", "--seeds", "1", "--out", "{dead_link}",
                                                             "--work", "{out}"],
                                              "is a link to nothing (was what it names moved?); remove the link"),
    "build: --out a loop of links": (latency_build, ["build", "--out", "{link_loop}"], "is a loop of links"),
    "imagenet100: a pipe": (make_imagenet100, ["--imagenet", "{fifo}", "--out", "{out}"],
                            "pipe.json is a pipe, device or socket, not a folder"),
    "screen: folders a pipe": (screen, ["--folders", "{fifo}"], "pipe.json is a pipe, device or socket, not a folder"),
    # Sweep 16 #204, #205, #216: named --target_latency, an option reproduce_tables does not have.
    "reproduce: a target out of reach": (reproduce_tables, ["--quick", "--targets", "99", "--out", "{out}"],
                                         "--targets: 99 ms is outside what this search space can reach"),
    "reproduce: reference target 0": (reproduce_tables, ["--quick", "--reference_target", "0", "--out", "{out}"],
                                      "--reference_target must be a positive number of ms, got 0.0"),
    "imagenet100: a loop of links": (make_imagenet100, ["--imagenet", "{link_loop}", "--out", "{out}"],
                                     "loop-a is a loop of links"),
    "landing: into another tool's run": (landing, ["--out", "{reproduce_run}", "--targets", "24", "--seeds", "1"],
                                         "holds a run of reproduce_tables.py; choose another --out"),
    "closed loop: into another tool's run": (closed_loop, ["--out", "{reproduce_run}", "--target_latency", "24"],
                                             "holds a run of reproduce_tables.py; choose another --out"),
    # A fourth sweep's findings (2026-12-06). Before: NaN passed the checks (the grid failed in the baseline's
    # search after the timings, naming --penalty_weight; the tolerance rewrote the report as "within nan%").
    "reproduce: grid nan": (reproduce_tables, ["--quick", "--out", "{out}", "--grid", "nan"],
                            "--grid values must be positive finite numbers"),
    "reproduce: tolerance nan": (reproduce_tables, ["--quick", "--out", "{out}", "--tolerance", "nan"],
                                 "--tolerance a percentage in (0, 100)"),
    "reproduce: tolerance inf": (reproduce_tables, ["--quick", "--out", "{out}", "--tolerance", "inf"],
                                 "--tolerance a percentage in (0, 100)"),
    # Before: a numpy memory traceback after the whole search / after the warm-up; 100,000 fresh processes (days).
    "closed loop: rounds 10**11": (closed_loop, ["--out", "{out}", "--target_latency", "24", "--rounds",
                                                 "99999999999"], "--rounds must be in [1, 1,000]"),
    "closed loop: fresh processes 100000": (closed_loop, ["--out", "{out}", "--target_latency", "24",
                                                          "--fresh_processes", "100000"],
                                            "--fresh_processes must be in [0, 1,000]"),
    "peers: rounds 10**11": (peers, ["--out", "{out}", "--rounds", "99999999999"], "--rounds must be in [1, 1,000]"),
    # Before: "out of memory ... lower --batch_size", an option peers does not have.
    "peers: threads 100000": (peers, ["--out", "{out}", "--threads", "100000"], "--threads must be in [1, 1,024]"),
    # Before: the search started and failed naming --seed; a folder of logs was left.
    "screen: a negative search seed": (screen, ["--name", "v", "--out", "{out}", "--search_seeds", "-5"],
                                       "--search_seeds must be in [0, "),
    # Before: both targets' searches went to one folder and collided.
    "landing: two targets one folder": (landing, ["--out", "{out}", "--targets", "24", "24.000001"],
                                        "--targets, --seeds and --variants must each name different values"),
    # Sweep 9. Before: one search, listed twice in landing.json and counted as two runs.
    "landing: a variant twice": (landing, ["--out", "{out}", "--variants", "demo", "demo"],
                                 "--targets, --seeds and --variants must each name different values"),
    # Before: refused, but after making --out (left behind empty).
    "screen: folders without a finished search": (screen, ["--folders", "{empty_dir}", "--out", "{out}"],
                                                  "holds no finished search"),
    "reproduce: search options it sets": (reproduce_tables, ["--quick", "--out", "{out}", "--", "--save", "x"],
                                          "--save is set by reproduce_tables.py"),
    # A fresh sweep's findings (2026-12-06). Before: argparse's 37-line usage text; options ignored in silence.
    "search: epochs 1.5": (search_imagenet, ["--save", "{out}", "--epochs", "1.5"], "invalid int value: '1.5'"),
    "search: latch tolerance -1%": (search_imagenet, ["--save", "{out}", "--latch_tolerance", "-1%"],
                                    "goes after '='"),
    # Before: each ran exactly as without the option, and arch.json recorded it as used.
    "search: eta pooling without eta paths": (search_imagenet, ["--save", "{out}", "--eta", "0", "--eta_pooling",
                                                                "subsample"], "--eta is 0"),
    "search: lambda's start with the fixed penalty": (search_imagenet, ["--save", "{out}", "--penalty", "fixed",
                                                                        "--penalty_weight", "0.1", "--tradeoff", "0.5"],
                                                      "has no lambda"),
    # Before: the fixed penalty ran without lambda and latch, the settings ignored in silence.
    "search: the latch's window with the fixed penalty": (search_imagenet, [
        "--save", "{out}", "--penalty", "fixed", "--penalty_weight", "0.1", "--latch_epochs", "5"],
        "--latch_epochs sets lambda's step or the latch, and --penalty fixed has neither"),
    "search: lambda's step with the fixed penalty": (search_imagenet, [
        "--save", "{out}", "--penalty", "fixed", "--penalty_weight", "0.1", "--tradeoff_learning_rate", "0.1"],
        "--tradeoff_learning_rate sets lambda's step or the latch"),
    "search: eta floor with no decay": (search_imagenet, ["--save", "{out}", "--eta_floor", "2"],
                                        "--eta_decay is none"),
    "search: hold_lambda with the paper's latch": (search_imagenet, ["--save", "{out}", "--hold_lambda", "keep",
                                                                     "--latch", "scale"], "--latch hold only"),
    "train: --visible with --device cpu": (train_imagenet, ["--save", "{out}", "--visible", "0", "--device", "cpu"],
                                           "--device cpu runs on the CPU"),
    "train: opset without export": (train_imagenet, ["--save", "{out}", "--onnx_opset", "17"],
                                    "--export_onnx, which is not given"),
    "train: prefetch with no loading processes": (train_imagenet, ["--save", "{out}", "--workers", "0",
                                                                   "--prefetch_factor", "4"], "--workers 0"),
    "train: --epochs with --evaluate": (train_imagenet, ["--evaluate", "{released_20}", "--arch_config",
                                                         "LightNet-20ms", "--dataset", "{data}", "--epochs", "5"],
                                        "--epochs would be ignored"),
    "train: --save with --evaluate": (train_imagenet, ["--evaluate", "{released_20}", "--arch_config",
                                                       "LightNet-20ms", "--save", "{out}"], "writes no run folder"),
    "train: --evaluate a search checkpoint": (train_imagenet, ["--evaluate", "{search_checkpoint}", "--dataset",
                                                               "{data}"], "is a search's checkpoint"),
    # Before: a RuntimeError traceback of load_state_dict.
    "train: resume weights of another shape": (train_imagenet, ["--resume", "{wrong_shape}", "--save", "{out}",
                                                                "--dataset", "{data}", "--epochs", "1",
                                                                "--batch_size", "2", "--image_size", "32",
                                                                "--workers", "0"], "wrong shape"),
    # Before: the pipe blocked the run forever; the link gave every image label 0 (top-1 0% with exit 0).
    "evaluate: a pipe among the images": (evaluate, ["--model", ARCH_24, "--weights", "{weights_3_classes}",
                                                     "--dataset", "{pipe_image}", "--image_size", "32",
                                                     "--workers", "0"],
                                          "not a regular file"),
    "evaluate: a link to .. in a class": (evaluate, ["--model", ARCH_24, "--weights", "{weights_3_classes}",
                                                     "--dataset", "{class_link_up}", "--image_size", "32",
                                                     "--workers", "0"], "one file in two class folders"),
    # Before: all-equal measurements wrote a table of scale 0 and R^2 NaN; 1e301 ms passed; --out '' wrote over
    # --lut (a shipped table); an existing --out was replaced without --force.
    "calibrate: all measurements equal": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                    "cpu_intel_xeon_b1_t1.json"),
                                                          "--measurements", "{same_csv}", "--out", "{out}.json"],
                                          "do not vary"),
    # Before: seconds read as milliseconds calibrated the table to 0.019 ms for LightNet-24ms; a hand-edited
    # scale of 1e200 predicted a 202-digit latency; of a key given twice, json kept the last without a word.
    "calibrate: seconds for milliseconds": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                      "cpu_intel_xeon_b1_t1.json"),
                                                            "--measurements", "{seconds_csv}", "--out", "{out}.json"],
                                            "seconds for milliseconds?"),
    "predict: calibration scale 1e200": (latency_build, ["predict", "--lut", "{table_huge_scale}", "--arch_config",
                                                         ARCH_24], "a calibration scale of 1e+200"),
    "validate: threads in words": (latency_build, ["validate", "--lut", "{table_wordy_threads}"],
                                   "metadata threads must be a positive integer"),
    "train: ONNX over the weights evaluated": (train_imagenet, ["--evaluate", "{weights_3_classes}", "--dataset",
                                                                "{data}", "--arch_config", ARCH_24, "--export_onnx",
                                                                "{weights_3_classes}"], "is not an .onnx file"),
    # Before: "expected the validate.csv written by validate (columns arch, measured_ms)", whose columns were there.
    "calibrate: a row with an unknown op": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                      "cpu_intel_xeon_b1_t1.json"),
                                                            "--measurements", "{unknown_op_csv}", "--out",
                                                            "{out}.json"], "row 5 (arch_config"),
    # The third sweep's (2026-12-06). Before: 64 gloo processes on 2 cores stalled for minutes; "latency MLP  not
    # found"; "table flops not found"; "give --model", which no model could answer for a supernet.
    "search: more CPU processes than cores": (search_imagenet, ["--save", "{out}", "--device", "cpu", "--gpus",
                                                                str((os.cpu_count() or 1) + 1)], "cores; use at most"),
    "predict: mlp: without a file": (latency_build, ["predict", "--lut", "mlp:", "--arch_config", ARCH_24],
                                     "name the MLP's file"),
    "closed loop: a count for a table": (closed_loop, ["--target_latency", "300", "--lut", "flops", "--out", "{out}"],
                                         "needs a latency table measured on this machine"),
    "evaluate: a search checkpoint": (evaluate, ["--weights", "{search_checkpoint}", "--dataset", "{data}"],
                                      "is a search's checkpoint"),
    # Before: the loop's files went into the search's folder, whose resume then refused them.
    "closed loop: into a search's folder": (closed_loop, ["--target_latency", "15", "--out", "{search_folder}"],
                                            "holds a search (search_imagenet.py)"),
    "predict: a key twice": (latency_build, ["predict", "--arch_config", "{repeated_key}"], "appears twice"),
    "calibrate: 1e301 ms": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                      "cpu_intel_xeon_b1_t1.json"),
                                            "--measurements", "{huge_csv}", "--out", "{out}.json"], "is no latency"),
    "calibrate: --out empty": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                         "cpu_intel_xeon_b1_t1.json"),
                                               "--measurements", "{same_csv}", "--out", ""], "--out is empty"),
    # Before: an empty path was taken as "not given": validate wrote into runs/ of the current folder, the closed
    # loop its plan and search there, an empty --export_onnx exported nothing with exit 0.
    "validate: --out_dir empty": (latency_build, ["validate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                           "cpu_intel_xeon_b1_t1.json"),
                                                  "--out_dir", ""], "--out_dir is empty"),
    "closed loop: --out empty": (closed_loop, ["--target_latency", "15", "--out", ""], "--out is empty"),
    "train: --export_onnx empty": (train_imagenet, ["--save", "{out}", "--export_onnx", ""], "--export_onnx is empty"),
    # Before: the pipe blocked forever, /dev/zero was read until memory ran out.
    "preprocess script: labels a pipe": (build_preprocess_script, ["--labels", "{fifo}", "--out", "{out}.sh"],
                                         "is not a regular file"),
    "preprocess script: labels /dev/zero": (build_preprocess_script, ["--labels", "{device_link}", "--out",
                                                                      "{out}.sh"], "is not a regular file"),
    "search: --resume a pipe": (search_imagenet, ["--save", "{out}", "--resume", "{fifo}"],
                                "is not a regular file"),  # before: "not found"
    "train: --visible 0,0": (train_imagenet, ["--save", "{out}", "--gpus", "2", "--visible", "0,0"],
                             "names a GPU twice"),
    # Before: --name ../../x searched outside --out; --out /proc/x was a FileNotFoundError traceback.
    "screen: --table with a name": (screen, ["--table", "--name", "v2", "--out", "{out}"], "screens nothing"),
    "screen: name with ..": (screen, ["--name", "../escape", "--out", "{out}"], "must be a plain name"),
    "screen: --out under /proc": (screen, ["--name", "v", "--out", "/proc/lightnas"], "cannot write there"),
    # Before: "--truth ... is a folder" for --out; "--seed" for --seeds; a folder given as --mlp was skipped as
    # "not found"; --steps 0 failed inside the synthetic set's generator and a file as --data_root in pathlib.
    "ground truth: --out a folder": (ground_truth, ["--out", "{empty_dir}", "--nets", "2"], "--out"),
    "landing: seed -1": (landing, ["--out", "{out}", "--seeds", "-1"], "--seeds must be in"),
    "latency tables: --mlp a folder": (latency_tables, ["--quick", "--mlp", "{empty_dir}"], "--mlp"),
    "throughput: no steps": (train_throughput, ["--steps", "0"], "--steps must be in"),
    "throughput: --data_root a file": (train_throughput, ["--data_root", "{text}", "--steps", "2", "--image_size",
                                                          "32", "--batch_size", "2"], "is a file; give a folder"),
    # Before: --quick replaced an explicit --searches 5 in silence; --truth replaced --seeds.
    "search quality: --truth with --seeds": (search_quality, ["--out", "{out}", "--truth",
                                                              str(REPO_ROOT / "benchmarks" / "ground_truth" /
                                                                  "random_24ms_cpu.json"), "--seeds", "2"],
                                             "holds 3 for --seeds, not 2"),
    # Before: --nets 10**8 drew networks until memory ran out; a negative seed was a numpy traceback.
    "ground truth: --nets 10**8": (ground_truth, ["--out", "{out}", "--nets", str(10**8)], "--nets must be in"),
    "ground truth: --sample_seed -1": (ground_truth, ["--out", "{out}", "--sample_seed", "-1"],
                                       "--sample_seed must be in"),
    "search quality: --search_seed -3": (search_quality, ["--out", "{out}", "--search_seed", "-3"],
                                         "--search_seed must be in"),
    "search quality: --sample_seed 2**40": (search_quality, ["--out", "{out}", "--sample_seed", str(2**40)],
                                            "--sample_seed must be in"),
    # Before: a synthetic set of 65536 x 10000 images was being made, printing nothing (a hang).
    "throughput: an epoch too large": (train_throughput, ["--batch_size", "65536", "--steps", "10000",
                                                          "--data_root", "{out}"], "--batch_size x --steps"),
    # Sweep 5. Before: a plan.json holding a list or a string was a TypeError / AttributeError traceback;
    # --jobs 0 a ValueError from the thread pool; --work a file a NotADirectoryError after the draw; the
    # internal --measure_memory given a path a KeyError.
    "closed loop: plan.json a list": (closed_loop, ["--out", "{list_plan_run}", "--target_latency", "24"],
                                      "plan.json was changed since this project wrote it"),
    "reproduce: plan.json a list": (reproduce_tables, ["--quick", "--out", "{list_plan_run}"],
                                    "plan.json was changed since this project wrote it"),
    "screen: --jobs 0": (screen, ["--name", "v", "--jobs", "0", "--out", "{out}"], "--jobs must be at least 1"),
    "ground truth: --work a file": (ground_truth, ["--nets", "2", "--work", "{text}", "--out", "{out}.json"],
                                    "--work"),
    "step cost: --measure_memory a path": (search_step_cost, ["--measure_memory", "{out}", "--steps", "1",
                                                              "--image_size", "32", "--batch_size", "2"],
                                           "--measure_memory must be one of"),
    # Sweep 5. Before: the training wrote among the shipped tables (exit 0, the checkout changed), and a new
    # training or search replaced an earlier one's results whose checkpoint was gone, without a word.
    "train: --save the tables' folder": (train_imagenet, ["--save", str(REPO_ROOT / "latency_lut"), "--arch_config",
                                                          ARCH_24], "holds files a training does not write"),
    "train: --save an earlier training": (train_imagenet, ["--save", "{earlier_training}", "--arch_config", ARCH_24],
                                          "holds an earlier training's best.pth.tar and metrics.jsonl"),
    "search: --save an earlier search": (search_imagenet, ["--save", "{earlier_search}", "--target_latency", "20"],
                                         "holds an earlier search's arch.json and metrics.jsonl"),
    # Before: "folder .../file.txt does not exist; create it" for a folder that is a file.
    "ground truth: --out under a file": (ground_truth, ["--nets", "2", "--out", "{text}/gt.json"],
                                         "is a file, not a folder"),
    # Before: "--mlp ... not found" for a pipe that is there; screen --target 0 advised building a ground
    # truth for 0 ms.
    "reproduce: --mlp a pipe": (reproduce_tables, ["--quick", "--mlp", "{fifo}", "--out", "{out}"],
                                "is not a regular file"),
    "screen: --target 0": (screen, ["--name", "v", "--target", "0", "--out", "{out}"],
                           "--target must be a positive number of ms"),
    # Before: refused only at the end, when the run wrote its arch.json or best.pth.tar.
    "search: --save holds arch.json as a pipe": (search_imagenet, ["--save", "{odd_outputs}"],
                                                 "holds arch.json, which the run writes, as something"),
    "train: --save holds best.pth.tar as a folder": (train_imagenet, ["--save", "{odd_outputs}", "--arch_config",
                                                                      ARCH_24], "holds best.pth.tar, which the run"),
    "calibrate: --out exists": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                          "cpu_intel_xeon_b1_t1.json"),
                                                "--measurements", "{same_csv}", "--out", "{text}"],
                                "pass --force"),
    # Before: a list of 10**9 jobs built before any check (memory), a retraining refusing --epochs only after
    # the searches, screen's results lost at the end to a traceback, table metadata of the wrong kind a
    # TypeError or AttributeError traceback.
    "ground truth: --seeds 10**9": (ground_truth, ["--out", "{out}.json", "--nets", "2", "--seeds", str(10**9)],
                                    "--seeds in [1, 100]"),
    "search quality: --seeds 10**9": (search_quality, ["--out", "{out}", "--seeds", str(10**9)],
                                      "--seeds 1000000000 is more than the 100"),
    "search quality: --retrain_epochs 20000": (search_quality, ["--out", "{out}", "--retrain_epochs", "20000"],
                                               "--retrain_epochs 20000 is more than"),
    # Sweep 12. Before: "does not exist yet: screen a variant first", which then failed on the folder.
    "screen: --table with screens.jsonl a folder": (screen, ["--table", "--out", "{screens_folder}"],
                                                    "screens.jsonl is a folder; give a file"),
    # Sweep 13. Before: a pipe was guessed to be "a folder?"; a kept search's metrics.jsonl as a pipe "held no
    # epochs".
    "screen: --table with screens.jsonl a pipe": (screen, ["--table", "--out", "{screens_fifo}"],
                                                  "screens.jsonl is not a regular file (a device, pipe or socket)"),
    "screen: a search whose metrics.jsonl is a pipe": (screen, ["--folders", "{search_fifo_metrics}", "--out",
                                                                "{out}"],
                                                       "metrics.jsonl is not a regular file (a device, pipe or "
                                                       "socket)"),
    "screen: screens.jsonl a folder": (screen, ["--name", "v", "--out", "{screens_folder}"],
                                       "screens.jsonl is not a file"),
    "predict: table metric a list": (latency_build, ["predict", "--lut", "{table_metric_list}", "--arch_config",
                                                     ARCH_24], "metadata metric and unit must be names"),
    "validate: table device a string": (latency_build, ["validate", "--lut", "{table_device_text}"],
                                        "metadata device must be an object"),
    # Before: tracebacks (a TypeError deep in the timing, a ZeroDivisionError, KeyErrors while restoring a
    # checkpoint, a MemoryError reading a JSON-lines file), a refusal blaming --clock though the table
    # named the clock, a search for another target screened as this one, runs writing their figures into
    # the dataset they read, an empty --work folder left by a refusal.
    "validate: table batch_size true": (latency_build, ["validate", "--lut", "{table_bool_batch}", "--out_dir",
                                                        "{out}"], "metadata batch_size must be an integer in"),
    "validate: table reference median 0": (latency_build, ["validate", "--lut", "{table_zero_reference}",
                                                           "--out_dir", "{out}"],
                                           "reference_median_ms must be a positive number of ms, got 0"),
    "validate: table clock 'process'": (latency_build, ["validate", "--lut", "{table_clock}", "--out_dir", "{out}"],
                                        "the table records clock 'process'"),
    "train: resume with an emptied optimizer": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo",
                                                                 "--save", "{out}", "--resume", "{empty_optimizer}",
                                                                 "--epochs", "2", "--workers", "0", "--batch_size",
                                                                 "4", "--image_size", "32"],
                                                "is damaged or of another version (wrong kind or shape: "
                                                "optimizer.param_groups, scheduler.last_epoch)"),
    "train: resume without a best result": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo", "--save",
                                                             "{out}", "--resume", "{no_best}", "--epochs", "2"],
                                            "missing or of the wrong kind: best"),
    "screen: --table of a 10 GiB screens.jsonl": (screen, ["--table", "--out", "{big_screens}"],
                                                  "is 10240 MiB, more than the 64 MiB"),
    "screen: a search for another target": (screen, ["--folders", "{search_24}", "--name", "x", "--target", "28",
                                                     "--truth", str(REPO_ROOT / "benchmarks" / "ground_truth" /
                                                                    "random_28ms_cuda.json"), "--out", "{out}"],
                                            "searched for 24 ms, not --target 28"),
    "search: --save inside --dataset": (search_imagenet, ["--dataset", "{data}", "--num_classes", "3", "--save",
                                                          "{data}/val/run"], "is inside --dataset"),
    "train: --save inside --dataset": (train_imagenet, ["--dataset", "{data}", "--arch_config", ARCH_24, "--save",
                                                        "{data}/train/run"], "is inside --dataset"),
    "search: --resume a folder with only its warm-up": (search_imagenet, ["--resume", "{warmup_only}", "--save",
                                                                          "{out}"], "only its warm-up's"),
    # Before: "not valid JSON here (utf-8 codec ...)" for the authors' MLP; a Jetson table taken as the CPU
    # table, Table 1 then comparing Jetson predictions with CPU timings for 6.5 minutes.
    "closed loop: --lut the authors' MLP": (closed_loop, ["--lut", str(REPO_ROOT.parent / "shared" / "data" /
                                                                       "lightnas_jetson_latency_mlp.pth.tar"),
                                                          "--target_latency", "17", "--out", "{out}"],
                                            "the loop needs a latency table (.json)"),
    "reproduce: --cpu_table a Jetson table": (reproduce_tables, ["--quick", "--cpu_table", str(
        REPO_ROOT / "latency_lut" / "jetson_agx_xavier_b8.json"), "--out", "{out}"], "give a CPU latency table"),
    # Before: a quoted '~/...' made a folder named '~' in the current folder, and the log named a path a shell
    # reads as the home folder.
    "train: --save a quoted '~/'": (train_imagenet, ["--save", "~/lightnas-quoted-tilde", "--arch_config", ARCH_24],
                                    "the shell did not expand '~' (it was quoted)"),
    # Sweep 7. Before: KeyError/TypeError tracebacks on resume, a MemoryError building the first batch, a
    # KeyError after screen had made its --out.
    # Sweep 8. Before: "diverged ... resume with a lower --lr", and a lower --lr diverged again the same way.
    "train: resume with a NaN learning rate": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo", "--save",
                                                                "{out}", "--resume", "{nan_lr}", "--epochs", "2"],
                                               "is damaged (NaN or infinite: optimizer.param_groups.0.lr)"),
    # Sweep 9. Before: "done: best val top-1 ... at epoch 99" of a 3-epoch run; a short architecture record was
    # "--arch_config: expected 22 op names", naming an option not given; a variant name with a line break split
    # its table row.
    "train: resume with a best from an epoch to come": (train_imagenet, ["--dataset", "{data}", "--schedule",
                                                                         "demo", "--save", "{out}", "--resume",
                                                                         "{best_to_come}", "--epochs", "3"],
                                                        "missing or of the wrong kind: best"),
    # Sweep 11. Before: "done: best val top-1 ... at epoch 0".
    "train: resume with a best from epoch 0": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo", "--save",
                                                                "{out}", "--resume", "{best_epoch_0}", "--epochs", "3"],
                                               "missing or of the wrong kind: best"),
    # Sweep 12. Before: "done: best val top-1 ... at epoch True".
    "train: resume with a best epoch true": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo", "--save",
                                                              "{out}", "--resume", "{best_epoch_true}", "--epochs",
                                                              "3"], "missing or of the wrong kind: best"),
    # Sweep 10. Before: taken as the record ("best val top-1 200.000"), and a negative lr (step -5 of the
    # warm-up) trained an epoch.
    "train: resume with a best top-1 of 200%": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo",
                                                                 "--save", "{out}", "--resume", "{best_200}",
                                                                 "--epochs", "3"],
                                                "missing or of the wrong kind: best"),
    "train: resume a schedule before its start": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo",
                                                                   "--save", "{out}", "--resume",
                                                                   "{schedule_before_start}", "--epochs", "3",
                                                                   "--workers", "0", "--batch_size", "4",
                                                                   "--image_size", "32"],
                                                  "scheduler.last_epoch"),
    "evaluate: weights recording 21 ops": (evaluate, ["--weights", "{short_record}", "--dataset", "{data}",
                                                      "--workers", "0"],
                                           "short-record.pth.tar records an architecture that is not valid (expected "
                                           "22 op names"),
    "train --evaluate: weights recording 21 ops": (train_imagenet, ["--evaluate", "{short_record}", "--dataset",
                                                                    "{data}", "--workers", "0"],
                                                   "short-record.pth.tar records an architecture that is not valid"),
    "screen: a name with a line break": (screen, ["--name", "a\nb", "--out", "{out}"],
                                         "no line break or other control character"),
    "train: resume with its best top-1 in words": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo",
                                                                    "--save", "{out}", "--resume", "{best_in_words}",
                                                                    "--epochs", "2"],
                                                   "missing or of the wrong kind: best"),
    "evaluate: weights recording 100,000 px": (evaluate, ["--weights", "{huge_image_size}", "--dataset", "{data}",
                                                          "--workers", "0"], "records an image size of 100000 px"),
    "screen: a search's metrics without its columns": (screen, ["--folders", "{search_24_edited}", "--name", "x",
                                                                "--truth", str(REPO_ROOT / "benchmarks" /
                                                                               "ground_truth" /
                                                                               "random_24ms_cuda.json"),
                                                                "--out", "{out}"],
                                                       "is not a finished search (a row of its metrics.jsonl lacks "
                                                       "its epoch or time (seconds, 0 to a year))"),
    # Sweep 7. Before: "1_2.5" read as 12.5 ms (Python's float() allows underscores); num_classes true and
    # class names that are numbers taken as records ("predicts True classes", "other classes").
    "calibrate: a measurement with an underscore": (latency_build, ["calibrate", "--lut", str(
        REPO_ROOT / "latency_lut" / "cpu_intel_xeon_b1_t1.json"), "--measurements", "{underscore_csv}", "--out",
        "{out}.json"], "row 2 (a field is missing or not a number)"),
    # Sweep 8. Before: the fit silently took the last of two measured_ms columns.
    "calibrate: two measured_ms columns": (latency_build, ["calibrate", "--lut", str(
        REPO_ROOT / "latency_lut" / "cpu_intel_xeon_b1_t1.json"), "--measurements", "{two_measured_columns}", "--out",
        "{out}.json"], "its header names the column measured_ms twice; keep one"),
    "evaluate: weights whose class names are numbers": (evaluate, ["--weights", "{classes_damaged}", "--dataset",
                                                                   "{data}", "--workers", "0"],
                                                        "record of their class names is damaged"),
    "train: resume with num_classes true": (train_imagenet, ["--dataset", "{data}", "--schedule", "demo", "--save",
                                                             "{out}", "--resume", "{classes_true}", "--epochs", "2"],
                                            "missing or of the wrong kind: num_classes"),
    "screen: a variant name screened before": (screen, ["--name", "v", "--out", "{screened_v}"],
                                               "already holds a variant named 'v'"),
    # Sweep 8. Before: a row without its columns was a KeyError in --table; a seed or a folder given twice was
    # counted twice in the variant's means (two searches of one seed also shared one folder and log); a target
    # given twice to reproduce_tables.py failed after 39 s, quoting a progress line.
    "screen: --table with an edited row": (screen, ["--table", "--out", "{screen_edited}"],
                                           "line 2 is not a screened variant's row (edited?)"),
    "screen: a search seed twice": (screen, ["--name", "v", "--search_seeds", "0", "0", "--out", "{out}"],
                                    "--search_seeds names seed 0 twice"),
    "screen: one folder twice": (screen, ["--folders", "{search_24}", "{search_24}/", "--out", "{out}"],
                                 "/ twice (a folder or a copy of it); give each search once"),
    # Sweep 10: a plain copy of the folder was counted as a second search.
    "screen: a search and its copy": (screen, ["--folders", "{search_24}", "{search_24_copy}", "--out", "{out}"],
                                      "search-24-copy twice (a folder or a copy of it)"),
    "reproduce: a target twice": (reproduce_tables, ["--quick", "--targets", "24", "24.0", "--out", "{out}"],
                                  "--targets names 24 ms twice"),
    # Sweep 20 #194/#196: a truth file given twice, or with a hard link of it, was pooled (each retraining counted
    # twice); calibrate refused a file given twice only under one name. #175: a target of 1e308 ms was refused
    # only after a 200-second table build.
    "screen: a truth file and its hard link": (screen, ["--folders", "{search_24}", "--out", "{out}", "--truth",
                                                        "{cuda_truth}", "{cuda_truth_link}"], "is given twice"),
    "calibrate: a file and its hard link": (latency_build, ["calibrate", "--lut", str(REPO_ROOT / "latency_lut" /
                                                                                      "cpu_intel_xeon_b1_t1.json"),
                                                            "--measurements", "{csv}", "{csv_hard_link}", "--out",
                                                            "{out}.json"], "is given twice"),
    "closed loop: a target of 1e308 ms": (closed_loop, ["--target_latency", "1e308", "--out", "{out}"],
                                          "is not a latency any network has"),
    "ground truth: --out another device's truth": (ground_truth, ["--nets", "2", "--seeds", "1", "--out",
                                                                  "{cuda_truth}", "--work", "{out}"],
                                                   "cannot be continued"),
}


# A run's progress bar (erased from a terminal when the run stops, leaving a blank line) is not an error line.
PROGRESS_BAR = re.compile(r"^epoch \d+.*\d+%\|")


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, inputs, tmp_path, capsys):
    module, arguments, message = CASES[case]
    out = tmp_path / "out"
    filled = [argument.format(out=out, **{name: value for name, value in inputs.items()})
              for argument in arguments]
    scratch_before = sorted(inputs["root"].rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, module.get_args_parser(), filled)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, error
    lines = [line for line in error.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in error
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    assert sorted(inputs["root"].rglob("*")) == scratch_before
    assert not Path("/tmp/lightnas-injected").exists()  # no code from a pickle ever ran

