"""train_imagenet.py: the authors' command line, DDP with gloo, exact
evaluation, exact resume, the recipe's optimizer and schedule, ONNX export
and one-line errors. Tiny synthetic datasets (32 px, 3 classes), CPU only."""

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import data
import evaluate
import train_imagenet
import utils
from model_train import LightNet, resolve_arch_config

ARCH = "LightNet-24ms"
# 24 training images; 9 val images: odd, so 2 processes get shards of 5 and 4.
TINY = dict(num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=0)
TINY_VAL_IMAGES = TINY["num_classes"] * TINY["val_per_class"]
REPO_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def preserved_environment():
    """--visible sets CUDA_VISIBLE_DEVICES: keep it from leaking into other tests."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def one_thread():
    # The CPU is shared with whatever else runs; with one thread, OpenMP does
    # not spin against it, and runs to be compared use the same arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated():
    with preserved_environment(), one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return data.write_synthetic_dataset(tmp_path_factory.mktemp("data") / "tiny", **TINY)


def parse(*argv):
    return train_imagenet.get_args_parser().parse_args([str(value) for value in argv])


def tiny_run(dataset, save, *extra):
    """Options for a quick run: 1 epoch of 3 steps of 8 images at 32 px."""
    return ["--dataset", dataset, "--save", save, "--arch_config", ARCH, "--epochs", 1, "--batch_size", 8,
            "--image_size", 32, "--workers", 0, *extra]


def train(*argv):
    train_imagenet.main(parse(*argv))


def read_metrics(save):
    return [json.loads(line) for line in (Path(save) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def authors_run(tiny_dataset, tmp_path_factory):
    """The README's training command, unchanged but for the dataset and the
    sizes a CPU test can afford."""
    save = tmp_path_factory.mktemp("runs") / "train-target-latency-24ms"
    arch_list = str(resolve_arch_config(ARCH))  # "['MBK3E1', 'MBK3E3', ...]" as the README writes it
    with preserved_environment(), one_thread():
        train("--save", save, "--epochs", 2, "--gpus", 1, "--visible", 0, "--dataset", tiny_dataset,
              "--arch_config", arch_list, "--batch_size", 8, "--image_size", 32, "--workers", 0)
    return save


# ------------------------------------------------------ the authors' command


def test_authors_command_line_writes_metrics_checkpoints_log_and_curves(authors_run):
    records = read_metrics(authors_run)
    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:
        assert record["val_images"] == TINY_VAL_IMAGES
        assert math.isfinite(record["train_loss"]) and record["images_per_s"] > 0
        assert 0 <= record["val_top1"] <= record["val_top5"] <= 100
    assert (authors_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (authors_run / "log.txt").read_text()
    network = LightNet(resolve_arch_config(ARCH), num_classes=TINY["num_classes"])
    params = sum(parameter.numel() for parameter in network.parameters())
    assert f"Params: {params / 1e6:.2f} M;" in log and "FLOPs:" in log and "epoch 2/2" in log
    # Sweep 13: the recipe's warm-up kept with a 2-epoch run, without a word that the lr never peaks.
    assert "note: the warm-up (5 epochs) is as long as the run (2): the lr only ramps up" in log

    checkpoint = torch.load(authors_run / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["arch_config"] == resolve_arch_config(ARCH)
    assert checkpoint["args"]["epochs"] == 2 and len(checkpoint["rng_states"]) == 1
    assert {"optimizer", "scheduler", "scaler", "best"} <= checkpoint.keys()


def test_best_checkpoint_has_the_released_names_and_loads_in_evaluate_py(authors_run, tiny_dataset, capsys):
    best = torch.load(authors_run / "best.pth.tar", weights_only=True)
    released_names = LightNet(resolve_arch_config(ARCH), num_classes=TINY["num_classes"]).state_dict().keys()
    assert best["state_dict"].keys() == released_names
    best_top1 = max(record["val_top1"] for record in read_metrics(authors_run))
    assert best["top1"] == best_top1

    capsys.readouterr()
    # No --model: the checkpoint records its arch_config.
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--weights", str(authors_run / "best.pth.tar"), "--dataset", str(tiny_dataset), "--device", "cpu",
         "--workers", "0", "--image_size", "32"]))
    assert f"Total: {TINY_VAL_IMAGES}  Top1-Acc: {best_top1:.3f}" in capsys.readouterr().out


def test_evaluate_only_reproduces_the_recorded_accuracy_and_exports_onnx(authors_run, tiny_dataset, tmp_path,
                                                                         capsys):
    pytest.importorskip("onnxruntime")
    best = torch.load(authors_run / "best.pth.tar", weights_only=True)
    capsys.readouterr()
    train("--evaluate", authors_run / "best.pth.tar", "--dataset", tiny_dataset, "--workers", 0,
          "--export_onnx", tmp_path / "lightnet.onnx")
    out = capsys.readouterr().out
    assert f"Total: {TINY_VAL_IMAGES}  Top1-Acc: {best['top1']:.3f}" in out
    assert "input 'images' Nx3x32x32" in out  # the size the checkpoint was trained at
    assert (tmp_path / "lightnet.onnx").stat().st_size > 1_000_000


# ------------------------------------------------------------- distributed


def _train_and_save_replica(args):
    """Runs in each spawned process: the script's own training, then every
    rank (not just rank 0) saves its final weights for the test to compare."""
    context = utils.init_distributed(args.device_type)
    try:
        model = train_imagenet.run(args, context)
        torch.save(model.state_dict(), Path(args.save) / f"replica-{context.rank}.pt")
    finally:
        utils.cleanup_distributed()


def test_two_gloo_processes_keep_replicas_identical_and_evaluate_every_image_once(tiny_dataset, tmp_path):
    save = tmp_path / "ddp"
    args = train_imagenet.prepare(parse(*tiny_run(tiny_dataset, save, "--device", "cpu", "--gpus", 2,
                                                  "--batch_size", 4)))
    utils.launch(_train_and_save_replica, args, 2)

    replicas = [torch.load(save / f"replica-{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert all(torch.equal(replicas[0][name], replicas[1][name]) for name in replicas[0])
    torch.manual_seed(0)
    initial = LightNet(resolve_arch_config(ARCH), num_classes=TINY["num_classes"]).state_dict()
    assert not torch.equal(replicas[0]["classifier.4.weight"], initial["classifier.4.weight"])  # it trained

    (record,) = read_metrics(save)
    assert record["val_images"] == TINY_VAL_IMAGES
    checkpoint = torch.load(save / "checkpoint.pth.tar", weights_only=True)
    assert len(checkpoint["rng_states"]) == 2  # each process's random streams, for an exact resume


def torchrun(*launcher, save, dataset):
    """A torchrun process (not waited for) training the tiny run into `save`."""
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, str(REPO_ROOT / "train_imagenet.py"),
               "--device", "cpu", *map(str, tiny_run(dataset, save, "--batch_size", 4))]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


@pytest.fixture(scope="module")
def one_node_torchrun(tiny_dataset, tmp_path_factory):
    """`torchrun --standalone --nproc_per_node 2` of the tiny run: its
    folder, stdout and stderr (two tests read it)."""
    save = tmp_path_factory.mktemp("torchrun") / "one-node"
    process = torchrun("--standalone", "--nproc_per_node", "2", save=save, dataset=tiny_dataset)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-2000:]
    return save, stdout, stderr


@pytest.mark.slow
def test_runs_under_torchrun_with_only_rank_0_printing_and_writing(one_node_torchrun):
    save, stdout, _ = one_node_torchrun
    assert stdout.count("epoch 1/1 ") == 1 and "2 process(es) on cpu" in stdout
    (record,) = read_metrics(save)
    assert record["val_images"] == TINY_VAL_IMAGES
    assert sorted(path.name for path in save.iterdir()) == [
        "best.pth.tar", "checkpoint.pth.tar", "curves.png", "log.txt", "metrics.jsonl"]


@pytest.mark.slow
def test_two_loopback_nodes_train_exactly_as_one_node_with_two_processes(one_node_torchrun, tiny_dataset, tmp_path):
    """`torchrun --nnodes 2` (one process per node, both on this machine)
    gives bitwise the weights of one node running two processes: the same
    global batch, shards and seeds."""
    one_node, _, _ = one_node_torchrun
    port = str(utils._free_local_port())
    nodes = [torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr",
                      "127.0.0.1", "--master_port", port, save=tmp_path / "two-nodes", dataset=tiny_dataset)
             for rank in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=180) == 0, node.communicate()[1][-2000:]
    single = utils.load_checkpoint(one_node / "checkpoint.pth.tar")["state_dict"]
    double = utils.load_checkpoint(tmp_path / "two-nodes" / "checkpoint.pth.tar")["state_dict"]
    assert single.keys() == double.keys()
    assert all(torch.equal(single[key], double[key]) for key in single)


def test_shard_sampler_partitions_the_dataset():
    shards = [list(evaluate.ShardSampler(9, rank, 2)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(9))
    assert [len(evaluate.ShardSampler(9, rank, 4)) for rank in range(4)] == [3, 2, 2, 2]


# ------------------------------------------------------------------ resume


class Interrupted(Exception):
    pass


def without_timings(records):
    timings = {"images_per_s", "data_wait", "epoch_s"}
    return [{key: value for key, value in record.items() if key not in timings} for record in records]


def test_resume_after_an_interruption_gives_the_weights_of_an_uninterrupted_run(tiny_dataset, tmp_path,
                                                                               monkeypatch):
    def run_options(save):
        return tiny_run(tiny_dataset, save, "--epochs", 2, "--ema", "--ema_decay", 0.9)

    train(*run_options(tmp_path / "straight"))

    real_train_one_epoch = train_imagenet.train_one_epoch

    def crash_in_second_epoch(training, loader, epoch, progress=False):
        if epoch == 1:
            raise Interrupted
        return real_train_one_epoch(training, loader, epoch, progress)

    monkeypatch.setattr(train_imagenet, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(Interrupted):
        train(*run_options(tmp_path / "interrupted"))
    monkeypatch.setattr(train_imagenet, "train_one_epoch", real_train_one_epoch)
    assert torch.load(tmp_path / "interrupted" / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    # Loading processes draw nothing from the training's random streams: the
    # resumed run may use other --workers and still see the same images.
    # The resumed run names neither epochs, batch size nor image size: it takes the checkpoint's.
    train("--dataset", tiny_dataset, "--resume", tmp_path / "interrupted" / "checkpoint.pth.tar", "--workers", 2,
          "--ema", "--ema_decay", 0.9)

    straight, resumed = (torch.load(tmp_path / name / "checkpoint.pth.tar", weights_only=True)
                         for name in ("straight", "interrupted"))
    assert resumed["epoch"] == 2
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(straight[key][name], resumed[key][name]) for name in straight[key])
    for index, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    straight_metrics, resumed_metrics = (read_metrics(tmp_path / name) for name in ("straight", "interrupted"))
    assert without_timings(straight_metrics) == without_timings(resumed_metrics)


def test_a_resumed_run_takes_its_schedule_from_the_checkpoint_unless_given(tmp_path):
    saved = {"epochs": 7, "batch_size": 16, "image_size": 48, "lr": 0.3, "warmup_epochs": 1.0, "channels_last": True,
             "scale_lr": True}
    args = train_imagenet.resolve_schedule(parse("--dataset", tmp_path, "--resume", "x", "--epochs", 9,
                                                 "--scale_lr"), {"args": saved})
    assert (args.epochs, args.batch_size, args.image_size, args.warmup_epochs, args.channels_last) == (9, 16, 48, 1.0,
                                                                                                       True)
    assert args.lr == 0.3  # scaled once, when it was first set
    authors = train_imagenet.resolve_schedule(parse("--dataset", tmp_path, "--resume", "x"), {})  # no args saved
    assert (authors.epochs, authors.batch_size) == (train_imagenet.RECIPE_EPOCHS, train_imagenet.RECIPE_BATCH_SIZE)


# -------------------------------------------------------------- the recipe


def test_no_weight_decay_on_batchnorm_and_bias_parameters():
    model = LightNet(resolve_arch_config(ARCH), num_classes=10)
    decay, no_decay = train_imagenet.parameter_groups(model, train_imagenet.WEIGHT_DECAY)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0

    expected_no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            expected_no_decay |= {id(p) for p in module.parameters(recurse=False)}
        elif getattr(module, "bias", None) is not None:
            expected_no_decay.add(id(module.bias))
    assert {id(p) for p in no_decay["params"]} == expected_no_decay
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {id(p) for p in decay["params"]} == weights
    assert len(weights) + len(expected_no_decay) == len(list(model.parameters()))


def test_recipe_defaults_with_a_dataset_and_the_demo_without():
    recipe = train_imagenet.resolve_schedule(parse("--dataset", "imagenet"))
    assert (recipe.epochs, recipe.batch_size, recipe.image_size, recipe.lr, recipe.warmup_epochs) == (
        360, 1024, 224, 0.5, 5)
    assert (recipe.momentum, recipe.weight_decay, recipe.label_smoothing, recipe.dropout, recipe.grad_clip,
            recipe.seed, recipe.amp, recipe.channels_last, recipe.compile, recipe.ema) == (
        0.9, 4e-5, 0.1, 0.2, 5.0, 0, "none", False, False, False)
    demo = train_imagenet.resolve_schedule(parse())
    assert {name: getattr(demo, name) for name in train_imagenet.DEMO_SCHEDULE} == train_imagenet.DEMO_SCHEDULE
    explicit = train_imagenet.resolve_schedule(parse("--epochs", 3, "--image_size", 96, "--no-channels_last"))
    assert (explicit.epochs, explicit.image_size, explicit.channels_last) == (3, 96, False)
    own_small_images = train_imagenet.resolve_schedule(parse("--dataset", "digits", "--schedule", "demo"))
    assert {name: getattr(own_small_images, name) for name in train_imagenet.DEMO_SCHEDULE} == \
        train_imagenet.DEMO_SCHEDULE
    paper_on_demo = train_imagenet.resolve_schedule(parse("--schedule", "paper", "--epochs", 2))
    assert (paper_on_demo.epochs, paper_on_demo.batch_size, paper_on_demo.image_size) == (2, 1024, 224)
    # --batch_size alone keeps the recipe's lr; --scale_lr applies the linear rule.
    assert train_imagenet.resolve_schedule(parse("--dataset", "d", "--batch_size", 256)).lr == 0.5
    assert train_imagenet.resolve_schedule(parse("--dataset", "d", "--batch_size", 256, "--scale_lr")).lr == 0.125


STEPS_PER_EPOCH = 100


def recipe_lr(epoch):
    """The recipe's lr at (fractional) epoch: 5 epochs linear, then cosine."""
    step = round(epoch * STEPS_PER_EPOCH)
    warmup_steps, total_steps = 5 * STEPS_PER_EPOCH, 360 * STEPS_PER_EPOCH
    if step < warmup_steps:
        return 0.5 * (step + 1) / warmup_steps
    return 0.25 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


@pytest.mark.parametrize("epoch, expected", [
    (0, 0.5 / 500),            # the first step of the warm-up
    (2.5, 0.5 * 251 / 500),    # half-way through the warm-up
    (5, 0.5),                  # the peak, where the cosine starts
    (182.5, 0.25),             # half-way through the cosine
    (359.99, recipe_lr(359.99)),
])
def test_warmup_then_cosine_learning_rate_at_chosen_epochs(epoch, expected):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = train_imagenet.build_scheduler(optimizer, 5, 360, STEPS_PER_EPOCH)
    for _ in range(round(epoch * STEPS_PER_EPOCH)):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(recipe_lr(epoch), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(tiny_dataset, tmp_path, amp, monkeypatch):
    seen = []  # per training forward: (autocast dtype or None, input in channels_last, weights in channels_last)
    plain_forward = LightNet.forward

    def watched_forward(self, images):
        if self.training:
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen.append((dtype, images.is_contiguous(memory_format=torch.channels_last),
                         self.first_conv[0].weight.is_contiguous(memory_format=torch.channels_last)))
        return plain_forward(self, images)

    monkeypatch.setattr(LightNet, "forward", watched_forward)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(*tiny_run(tiny_dataset, tmp_path / amp, "--amp", amp, "--channels_last"))
    # fp16's scaler skips the first steps while it finds its scale; the schedule still moves one step per
    # batch, and torch's warning about it is no news to the user (it was printed before).
    assert not [warning for warning in caught if "lr_scheduler.step()" in str(warning.message)]
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert seen and all(step == (expected, True, True) for step in seen)
    (record,) = read_metrics(tmp_path / amp)
    assert math.isfinite(record["train_loss"]) and record["val_images"] == TINY_VAL_IMAGES
    scaler = torch.load(tmp_path / amp / "checkpoint.pth.tar", weights_only=True)["scaler"]
    assert bool(scaler) == (amp == "fp16")  # loss scaling only for fp16


# ------------------------------------------------------------------- ONNX


def test_onnx_export_matches_pytorch(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = LightNet(resolve_arch_config(ARCH), num_classes=5)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()(torch.randn(4, 3, 32, 32))
    path = tmp_path / "lightnet.onnx"
    assert train_imagenet.export_onnx(model.eval(), path, image_size=32) < 1e-4

    assert onnx.load(path).opset_import[0].version == train_imagenet.ONNX_OPSET
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.shape[1:] == [3, 32, 32]
    images = torch.randn(3, 3, 32, 32)  # another batch size than exported with
    with torch.no_grad():
        expected = model(images)
    actual = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    assert torch.allclose(actual, expected, atol=1e-4)


# ----------------------------------------------------------------- errors


def write_dataset_with(tmp_path, damage):
    root = data.write_synthetic_dataset(tmp_path / "damaged", **TINY)
    damage(root)
    return root


def empty_class_folder(root):
    (root / "train" / "class_09_empty").mkdir()


def unreadable_image(root):
    (root / "train" / "class_00_disc" / "broken.png").write_bytes(b"not a png")


def user_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(train_imagenet.main, train_imagenet.get_args_parser(), [str(value) for value in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, lines


@pytest.mark.parametrize("damage, message", [
    (None, "not found"),
    (empty_class_folder, "class_09_empty holds no image file"),
    (unreadable_image, "cannot read image"),
])
def test_a_bad_dataset_gives_one_line(tmp_path, capsys, damage, message):
    root = write_dataset_with(tmp_path, damage) if damage else tmp_path / "missing"
    code, lines = user_error(capsys, tiny_run(root, tmp_path / "run", "--workers", 1))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="this machine has 4 GPUs")
@pytest.mark.parametrize("options, message", [
    (["--gpus", 4], "--gpus 4"),
    (["--gpus", 4, "--device", "cuda"], "--gpus 4: only"),
    (["--visible", "0,a"], "--visible '0,a': expected GPU ids"),
    (["--visible", "0", "--gpus", 2], "--visible lists 1 GPU(s) but --gpus is 2"),
    (["--device", "cpu", "--gpus", 3], "must divide evenly over 3 processes"),
    (["--sync_bn", "--device", "cpu"], "--sync_bn needs CUDA"),
    (["--arch_config", "LightNet-99ms"], "LightNet-99ms"),
    (["--resume", "nowhere.pth.tar"], "--resume nowhere.pth.tar not found"),
    (["--epochs", 0], "--epochs must be in [1, 10000]"),
    (["--lr", "inf"], "--lr must be in (0, 10]"),
    (["--lr", "nan"], "--lr must be in (0, 10]"),
    (["--weight_decay", "nan"], "--weight_decay must be in [0, 1]"),
    (["--grad_clip", "inf"], "--grad_clip must be a non-negative number"),
])
def test_bad_options_give_one_line(tiny_dataset, tmp_path, capsys, options, message):
    code, lines = user_error(capsys, tiny_run(tiny_dataset, tmp_path / "run") + options)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_one_class_dataset_is_refused(tiny_dataset, tmp_path, capsys):
    one_class = tmp_path / "one"
    for split in ("train", "val"):  # the tiny set's first class alone
        first = sorted((Path(tiny_dataset) / split).iterdir())[0]
        shutil.copytree(first, one_class / split / first.name)
    code, lines = user_error(capsys, tiny_run(one_class, tmp_path / "run"))
    assert code == 2 and lines == [f"error: --dataset {one_class}: train/ has 1 class folder; classification "
                                   "needs at least 2"]
    assert not (tmp_path / "run").exists()


def test_resume_refuses_weights_only_files_other_architectures_and_overwriting(authors_run, tiny_dataset,
                                                                              tmp_path, capsys):
    checkpoint = authors_run / "checkpoint.pth.tar"
    cases = [
        (["--resume", authors_run / "best.pth.tar"], "not a training checkpoint"),
        (["--resume", checkpoint, "--arch_config", "LightNet-20ms"], "another --arch_config"),
        (["--save", authors_run], "already holds checkpoint.pth.tar"),
        # Before: the log claimed the lr was scaled while the restored schedule ran unscaled.
        (["--resume", checkpoint, "--scale_lr"], "--scale_lr: the resumed run started without it"),
    ]
    overflowed = utils.load_checkpoint(checkpoint)  # a finite loss, but a BatchNorm variance overflowed
    overflowed["state_dict"]["first_conv.1.running_var"][0] = float("inf")
    torch.save(overflowed, tmp_path / "overflowed.pth.tar")
    cases.append((["--resume", tmp_path / "overflowed.pth.tar"], "holds NaN or infinite values "
                                                                  "(first_conv.1.running_var)"))
    # Sweep 7. Before: resumed into another run's folder, it replaced that run's checkpoint and log.
    other_run = tmp_path / "other-run"
    shutil.copytree(authors_run, other_run)
    cases.append((["--resume", checkpoint, "--save", other_run, "--epochs", 3],
                  f"--save {other_run} already holds checkpoint.pth.tar"))
    # Sweep 6. Before: resumed on another set of as many classes, without a word.
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_dataset, renamed)
    for split in ("train", "val"):
        (renamed / split / "class_00_disc").rename(renamed / split / "class_00_zebra")
    cases.append((["--resume", checkpoint, "--dataset", renamed, "--epochs", 3],
                  "the checkpoint trained on other images: other classes ('class_00_zebra' where it had 'class_00_disc')"))
    # Sweep 9. Before: torch loaded each of these and failed at the first step with a TypeError or RuntimeError.
    for name, damage, path in (
            ("momentum-text", lambda state: state["optimizer"]["param_groups"][0].update(momentum="0.9"),
             "optimizer.param_groups.0.momentum"),
            ("buffer-shape", lambda state: [entry.update(momentum_buffer=torch.zeros(3))
                                            for entry in state["optimizer"]["state"].values()],
             "optimizer.state.0.momentum_buffer"),
            ("base-lrs-text", lambda state: state["scheduler"].update(base_lrs=["0.1"] * len(
                state["scheduler"]["base_lrs"])), "scheduler.base_lrs.0")):
        damaged = utils.load_checkpoint(checkpoint)
        damage(damaged)
        torch.save(damaged, tmp_path / f"{name}.pth.tar")
        cases.append((["--resume", tmp_path / f"{name}.pth.tar", "--epochs", 3],
                      f"the checkpoint's optimizer or schedule is damaged or of another version (wrong kind or shape: "
                      f"{path}"))
    for options, message in cases:
        argv = tiny_run(tiny_dataset, tmp_path / "run") + options
        code, lines = user_error(capsys, argv)
        assert code == 2 and len(lines) == 1 and message in lines[0], (options, lines)
    assert not (tmp_path / "run").exists()
    # Before: without --dataset the run went on with the synthetic demo set and appended to its log.
    log_before = (authors_run / "log.txt").read_text()
    code, lines = user_error(capsys, ["--resume", checkpoint, "--workers", 0])
    assert code == 2 and len(lines) == 1 and f"trained on --dataset {tiny_dataset}; resume with --dataset" in lines[0]
    assert (authors_run / "log.txt").read_text() == log_before
    # Sweep 13: refused for other images, it had first appended its setup to the kept run's log.txt.
    code, lines = user_error(capsys, ["--resume", checkpoint, "--dataset", renamed, "--workers", 0])
    assert code == 2 and len(lines) == 1 and "the checkpoint trained on other images" in lines[0]
    assert (authors_run / "log.txt").read_text() == log_before
    # Sweep 14: so had one refused for its metrics.jsonl (there a folder).
    odd_metrics = tmp_path / "odd-metrics"
    shutil.copytree(authors_run, odd_metrics)
    (odd_metrics / "metrics.jsonl").unlink()
    (odd_metrics / "metrics.jsonl").mkdir()
    code, lines = user_error(capsys, ["--resume", odd_metrics / "checkpoint.pth.tar", "--dataset", tiny_dataset,
                                      "--workers", 0, "--epochs", 3])
    assert code == 2 and len(lines) == 1 and "metrics.jsonl is a folder" in lines[0], lines
    assert (odd_metrics / "log.txt").read_text() == log_before
    # Sweep 15 #180: a copy of the run with another run's checkpoint in its place. Before: resumed, the other
    # run's weights continued under this run's metrics rows and best weights.
    train(*tiny_run(tiny_dataset, tmp_path / "other", "--epochs", 1))
    mixed = tmp_path / "mixed"
    shutil.copytree(authors_run, mixed)
    shutil.copy(tmp_path / "other" / "checkpoint.pth.tar", mixed / "checkpoint.pth.tar")
    metrics_before = (mixed / "metrics.jsonl").read_text()
    code, lines = user_error(capsys, ["--resume", mixed / "checkpoint.pth.tar", "--dataset", tiny_dataset,
                                      "--workers", 0, "--epochs", 3])
    assert code == 2 and len(lines) == 1 and "holds other rows up to epoch 1 than the checkpoint" in lines[0], lines
    assert (mixed / "log.txt").read_text() == log_before
    assert (mixed / "metrics.jsonl").read_text() == metrics_before


def test_weights_evaluated_on_other_classes_of_the_same_count_are_refused(authors_run, tiny_dataset, tmp_path):
    # Sweep 6 (suspected there, shown here). Before: any 3-class set was evaluated without a word.
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_dataset, renamed)
    (renamed / "val" / "class_01_square").rename(renamed / "val" / "class_01_zebra")
    with pytest.raises(utils.UserError, match=r"val/ holds other classes than the weights were trained on "
                                        r"\('class_01_zebra' where they had 'class_01_square'\)"):
        evaluate.evaluate_weights(authors_run / "best.pth.tar", renamed, image_size=32, progress=False)
    images, _, _ = evaluate.evaluate_weights(authors_run / "best.pth.tar", tiny_dataset, image_size=32,
                                             progress=False)
    assert images == TINY_VAL_IMAGES


def test_a_run_resumed_into_another_folder_brings_its_best_weights(authors_run, tiny_dataset, tmp_path):
    # Before: the finished run "resumed" into a new --save ended with exit 0 and a log naming
    # new/best.pth.tar, which did not exist; --export_onnx then had nothing to export.
    new = tmp_path / "continued"
    train("--resume", authors_run / "checkpoint.pth.tar", "--save", new, "--dataset", tiny_dataset, "--workers", 0)
    assert (new / "best.pth.tar").read_bytes() == (authors_run / "best.pth.tar").read_bytes()
    assert f"weights in {new / 'best.pth.tar'}" in (new / "log.txt").read_text()
    assert sorted(path.name for path in new.iterdir() if path.name.startswith(".")) == []


def test_a_resume_with_a_new_lr_or_weight_decay_trains_with_them(authors_run, tiny_dataset, tmp_path):
    # Sweep 9. Before: logged as "resuming with changed options: --lr 0.04 -> 0.0001", then the checkpoint's lr,
    # schedule and weight decay were loaded over them: the divergence message's advice ("resume with a lower
    # --lr") changed nothing.
    saved_lr = utils.load_checkpoint(authors_run / "checkpoint.pth.tar")["args"]["lr"]
    rows = {}
    for name, options in (("same", []), ("halved", ["--lr", saved_lr / 2, "--weight_decay", 0.5])):
        with one_thread():
            train("--resume", authors_run / "checkpoint.pth.tar", "--save", tmp_path / name, "--epochs", 3,
                  "--dataset", tiny_dataset, "--workers", 0, *options)
        rows[name] = read_metrics(tmp_path / name)[-1]
    assert rows["halved"]["lr"] == pytest.approx(rows["same"]["lr"] / 2)
    assert rows["halved"]["train_loss"] != rows["same"]["train_loss"]


def test_a_search_folder_given_to_training_is_named_as_one(authors_run, tiny_dataset, tmp_path, capsys):
    assert utils.checkpoint_kind(torch.load(authors_run / "checkpoint.pth.tar", weights_only=True)) == "training"
    search = tmp_path / "search-run"
    search.mkdir()
    torch.save({"format": 1, "state_dict": {}, "arch_optimizer": {}, "epoch": 3}, search / "checkpoint.pth.tar")
    cases = [
        (["--save", search], f"--save {search} holds a search (search_imagenet.py), not a training run: choose "
                             "another --save"),
        (["--resume", search / "checkpoint.pth.tar"], "is a search's checkpoint (search_imagenet.py); continue the "
                                                      "search with search_imagenet.py --resume"),
    ]
    for options, message in cases:
        code, lines = user_error(capsys, tiny_run(tiny_dataset, tmp_path / "run") + options)
        assert code == 2 and len(lines) == 1 and message in lines[0], (options, lines)


@pytest.mark.parametrize("loss, overflow, message", [
    (2.3, False, None),
    (float("nan"), False, "(loss nan)"),
    (2e4, False, "(loss 20000)"),  # exploded, though finite
    (27.0, False, None),  # 25 uniform guesses' loss (ln 3 each): a bad run, still learning
    (400.0, False, "(loss 400)"),  # before: trained on to the end and wrote its weights as a result
    (2.3, True, "(loss 2.3, not finite: first_conv.1.running_var)"),  # finite loss, overflowed statistics
])
def test_training_stops_before_checkpointing_a_diverged_epoch(tmp_path, loss, overflow, message):
    model = LightNet(resolve_arch_config(ARCH), num_classes=3)
    if overflow:
        model.first_conv[1].running_var[0] = float("inf")
    args = argparse.Namespace(save=str(tmp_path))
    if message is None:
        train_imagenet.stop_if_diverged(4, loss, 3, model, args)
        return
    with pytest.raises(utils.UserError, match=re.escape(message)) as stop:
        train_imagenet.stop_if_diverged(4, loss, 3, model, args)
    assert "no epoch finished" in str(stop.value)
    (tmp_path / train_imagenet.CHECKPOINT_FILE).write_bytes(b"epoch 4")
    with pytest.raises(utils.UserError, match=r"epoch 5 .*resume from .*checkpoint.pth.tar \(epoch 4\)"):
        train_imagenet.stop_if_diverged(4, loss, 3, model, args)


def test_a_second_training_into_a_busy_folder_is_refused(tiny_dataset, tmp_path, capsys):
    """While one run holds --save (its lock, held here), a second run is
    refused with one line and adds nothing to the folder."""
    save = tmp_path / "busy"
    with utils.run_folder_lock(str(save)):
        with pytest.raises(SystemExit) as exit_info:
            utils.run_cli(train_imagenet.main, train_imagenet.get_args_parser(),
                          [str(value) for value in tiny_run(tiny_dataset, save)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().endswith("is in use by another run; wait for it to end or choose "
                                                        "another --save")
        assert os.listdir(save) == []


def test_flip_trained_networks_are_evaluated_on_the_whole_image_and_the_recipe_with_its_centre_crop(tiny_dataset):
    context = utils.DistributedContext(0, 0, 1, torch.device("cpu"))
    for augment, resized in (("flip", 32), ("recipe", round(32 / data.EVAL_CROP_RATIO))):
        args = train_imagenet.resolve_schedule(parse(*tiny_run(tiny_dataset, "unused", "--augment", augment)))
        loader = train_imagenet.build_val_loader(tiny_dataset, args, context, data.eval_crop_ratio(augment))
        resize, crop = loader.dataset.transform.transforms[:2]
        assert (resize.size, crop.size) == (resized, (32, 32)), augment


def test_a_flip_trained_network_is_evaluated_later_as_its_training_evaluated_it(tiny_dataset, tmp_path, capsys,
                                                                                 monkeypatch):
    """best.pth.tar records its framing: evaluate.py and train --evaluate
    (whose default --augment is the recipe's) frame the images as training
    did and count what it counted."""
    save = tmp_path / "flip"
    train(*tiny_run(tiny_dataset, save, "--augment", "flip"))
    best = torch.load(save / "best.pth.tar", weights_only=True)
    assert best["eval_crop_ratio"] == 1.0
    ratios, build = [], data.build_eval_transform
    monkeypatch.setattr(data, "build_eval_transform",
                        lambda size, crop_ratio: ratios.append(crop_ratio) or build(size, crop_ratio))
    capsys.readouterr()
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--weights", str(save / "best.pth.tar"), "--dataset", str(tiny_dataset), "--workers", "0"]))
    train("--evaluate", save / "best.pth.tar", "--dataset", tiny_dataset, "--workers", 0)
    out = capsys.readouterr().out
    assert ratios == [1.0, 1.0]
    assert out.count(f"Total: {TINY_VAL_IMAGES}  Top1-Acc: {best['top1']:.3f}") == 2, out


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    torch.manual_seed(0)
    plain = LightNet(resolve_arch_config(ARCH), num_classes=10)
    zeroed = LightNet(resolve_arch_config(ARCH), num_classes=10, zero_init_residual=True)
    residual = [block for block in zeroed.blocks if getattr(block, "use_residual", False)]
    assert len(residual) >= 5
    for index, block in enumerate(zeroed.blocks):
        inputs = torch.randn(4, block.main[0].in_channels if hasattr(block, "main") else 1, 8, 8)
        if block in residual:
            assert torch.equal(block(inputs), inputs)
            assert not torch.allclose(plain.blocks[index](inputs), inputs)
        elif hasattr(block, "main"):
            assert block.main[-1].weight.eq(1).all()  # other blocks as without the option


def test_sigterm_to_the_process_group_with_loading_workers_is_one_line(tiny_dataset, tmp_path):
    # Before: SIGTERM to the group (timeout, systemd, SLURM's scancel) also stopped the DataLoader's workers,
    # whose deaths torch reported as two chained tracebacks and exit 1.
    save = tmp_path / "run"
    options = [str(value) for value in tiny_run(tiny_dataset, save, "--epochs", 50)]
    options[options.index("--workers") + 1] = "2"
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train_imagenet.py"), *options], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (save / "checkpoint.pth.tar").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the workers are running once the first epoch is saved
    os.killpg(process.pid, signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, error
    assert "Traceback" not in error and [line for line in error.splitlines() if line.strip()] == [
        line for line in error.splitlines() if line.startswith("terminated")], error
