"""Retrain a searched LightNet from scratch on ImageNet with DistributedDataParallel.

Stage two of LightNAS ("You Only Search Once", DAC 2022, experiments:
retraining the searched networks): the network found by the search is
trained from scratch for 360 epochs with SGD (lr 0.5 for a global batch of
1024, momentum 0.9, weight decay 4e-5 except on biases and BatchNorm),
5 epochs of linear warm-up (per step and for every parameter group; the
release warms per epoch and only the conv/linear weights) then cosine
decay, label smoothing 0.1, dropout
0.2 and gradient clipping at norm 5; the checkpoint with the best val top-1
is kept. The authors' command (4 GPUs on one machine) works unchanged:

    python3 train_imagenet.py --save train-target-latency-24ms --epochs 360 --gpus 4 --visible 0,1,2,3 \\
        --dataset /path/to/dataset/ --arch_config "['MBK3E1', 'MBK3E3', ...]"

(the README's triple-quoted list works as is). `--arch_config` also takes a
registered name (LightNet-24ms) or a search's arch.json. The same run under torchrun, one node with 4 GPUs:

    torchrun --standalone --nproc_per_node 4 train_imagenet.py --save train-24ms \\
        --dataset /path/to/dataset/ --arch_config LightNet-24ms

and two nodes with 4 GPUs each (run on both nodes; HOST0 is the first node's
address, reachable from the other; --save and --resume must be on a file
system every node sees, only global rank 0 writes):

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
        --rdzv_id lightnet24 train_imagenet.py --save train-24ms --dataset /path/to/dataset/ \\
        --arch_config LightNet-24ms

Under torchrun, leave --gpus at 1: torchrun starts the processes.

Learning rate and batch: --batch_size is the GLOBAL batch, summed over all
processes (each process takes batch_size / world size). Changing the number
of GPUs therefore keeps the recipe's lr right. Changing --batch_size does
not change --lr (0.5 is the recipe's value for 1024): pass --scale_lr to
apply the linear scaling rule, lr = --lr x batch_size / 1024, or set --lr.

Speed: each process has --workers loading processes (default: CPU cores /
processes, at most 8) with page-locked memory, persistent workers and
batches prepared ahead. Decoding an ImageNet JPEG and the random-resized
crop cost a few ms per image and core, so a GPU training at thousands of
images/s (--amp bf16 --channels_last, optionally --compile) needs 8 or more
cores; the log's "data wait" says which share of each epoch waited for
data. Evaluation always runs in fp32.

Without --dataset, the script trains a demo on the project's synthetic
dataset (10 classes, 1500 train / 500 val images of 64 px, generated on
first use) with a short CPU schedule: LightNet-24ms, 20 epochs, batch 32,
64 px, lr 0.04 after 5 warm-up epochs, channels_last (its accuracy and
time on 2 CPU cores are in docs/training.md). Options given explicitly
always win over both the demo and the recipe. On a CPU that other jobs
share, set OMP_NUM_THREADS=1: OpenMP threads spin while waiting for a
taken core, which made a demo epoch several times slower here.

Outputs in --save: log.txt, metrics.jsonl (one JSON object per epoch),
checkpoint.pth.tar (every epoch, for --resume), best.pth.tar (best val
top-1; `python3 evaluate.py --weights best.pth.tar --dataset ...` reads it),
best_ema.pth.tar with --ema, and curves.png.
"""

import argparse
import contextlib
import copy
import dataclasses
import logging
import math
import os
import shutil
import time
import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import data
import evaluate
import utils
from model_train import DEFAULT_DROPOUT, LightNet, count_params_and_flops, recorded_arch_config, resolve_arch_config
from utils import UserError, check_number_rules, fill_from_schedule

# ------------------------------------------------------------ the recipe
# The paper's retraining recipe (its experiments; the authors' training command), unless said otherwise.
RECIPE_EPOCHS = 360
RECIPE_BATCH_SIZE = 1024  # global, over the 4 GPUs of the paper
RECIPE_LR = 0.5  # for RECIPE_BATCH_SIZE images per step
RECIPE_WARMUP_EPOCHS = 5  # linear warm-up, then cosine decay to 0
RECIPE_IMAGE_SIZE = 224
MOMENTUM = 0.9
WEIGHT_DECAY = 4e-5  # none on biases and BatchNorm parameters
LABEL_SMOOTHING = 0.1
GRAD_CLIP_NORM = 5.0
SEED = 0
# Not in the paper: a common EMA decay for runs of several 100k steps.
EMA_DECAY = 0.9999
# ONNX opset 13: TensorRT 8.x, which JetPack 4.6 and 5.x ship on Jetson
# AGX Xavier, parses it fully (ReLU6 becomes Clip, BatchNorm is folded).
ONNX_OPSET = 13
PREFETCH_FACTOR = 2  # batches each loading process prepares ahead (DataLoader's default)
MIN_ONNX_OPSET, MAX_ONNX_OPSET = 7, 20  # the TorchScript exporter's range; every opset in it exports and checks
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"
ONNX_TOLERANCE = 1e-3  # largest |onnxruntime - PyTorch| logit difference accepted

# Options whose default depends on the mode: the recipe whenever --dataset
# is given, a short CPU demo on the synthetic dataset otherwise (measured on
# 2 CPU cores: see the module docstring).
RECIPE_SCHEDULE = dict(epochs=RECIPE_EPOCHS, batch_size=RECIPE_BATCH_SIZE, image_size=RECIPE_IMAGE_SIZE,
                       lr=RECIPE_LR, warmup_epochs=RECIPE_WARMUP_EPOCHS, channels_last=False)
DEMO_SCHEDULE = dict(epochs=20, batch_size=32, image_size=64, lr=0.04, warmup_epochs=5, channels_last=True)
SCHEDULES = {"paper": RECIPE_SCHEDULE, "demo": DEMO_SCHEDULE}
DEMO_ARCH = "LightNet-24ms"

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_FILE, BEST_FILE, BEST_EMA_FILE = "checkpoint.pth.tar", "best.pth.tar", "best_ema.pth.tar"
METRICS_FILE, CURVES_FILE = "metrics.jsonl", "curves.png"
PROGRESS_POSTFIX_STEPS = 20  # showing the loss costs a device sync: not every step
MAX_DEFAULT_WORKERS = 8  # data-loading processes per training process


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Retrain a LightNet from scratch (LightNAS stage two), on one or more GPUs or on CPU.",
        epilog="Without --dataset: a demo on the synthetic dataset with "
               + ", ".join(f"{name} {value}" for name, value in DEMO_SCHEDULE.items())
               + f" and --arch_config {DEMO_ARCH}. Options marked 'recipe' take the paper's value "
               "whenever --dataset is given, unless --schedule demo.")
    run = parser.add_argument_group("run")
    run.add_argument("--save", default=None,
                     help="output folder (default: the --resume checkpoint's folder, else train-<date>-<time>)")
    run.add_argument("--arch_config", default=None,
                     help="a registered name (e.g. LightNet-24ms), the list \"['MBK3E1', ...]\", or a "
                          "search's arch.json (default: the checkpoint's with --resume/--evaluate; "
                          f"{DEMO_ARCH} for the demo)")
    run.add_argument("--resume", default=None, metavar="CHECKPOINT",
                     help=f"continue exactly from a {CHECKPOINT_FILE} written by this script")
    run.add_argument("--evaluate", default=None, metavar="CHECKPOINT",
                     help="only evaluate this checkpoint (released or the project's) on val/, then exit")
    run.add_argument("--export_onnx", default=None, metavar="PATH",
                     help="write the network to ONNX for TensorRT: after training the best weights, with "
                          "--evaluate that checkpoint; input 'images' Nx3xSxS (S = --image_size, batch "
                          "dynamic), output 'logits'; checked against PyTorch with onnxruntime")
    run.add_argument("--onnx_opset", type=int, default=None,
                     help=f"ONNX opset (default: {ONNX_OPSET}, parsed by TensorRT 8.x on Jetson)")
    run.add_argument("--seed", type=int, default=SEED, help=f"random seed (default: {SEED})")
    run.add_argument("--schedule", choices=tuple(SCHEDULES), default=None,
                     help="the defaults of the options marked 'recipe': paper = the paper's ImageNet recipe "
                          "(360 epochs, batch 1024, 224 px); demo = the short CPU schedule of the demo, for small "
                          "images (" + ", ".join(f"{name} {value}" for name, value in DEMO_SCHEDULE.items())
                          + "). Options given always win (default: paper with --dataset, demo without)")

    dataset = parser.add_argument_group("data")
    dataset.add_argument("--dataset", default=None,
                         help="folder with train/ and val/, one sub-folder per class (default: the synthetic "
                              "demo dataset, generated on first use)")
    dataset.add_argument("--image_size", type=int, default=None,
                         help="training crop in pixels; evaluation resizes to size/0.875 and center-crops "
                              f"(recipe: {RECIPE_IMAGE_SIZE})")
    dataset.add_argument("--workers", type=int, default=None,
                         help="data-loading processes per training process (default: CPU cores / processes "
                              f"on this machine, at most {MAX_DEFAULT_WORKERS})")
    dataset.add_argument("--augment", choices=("recipe", "flip"), default="recipe",
                         help="training augmentation: recipe = random-resized crop, flip, colour jitter; "
                              "flip = resize and flip only, for short runs on small images, where random "
                              "crops of small objects keep the network near chance; evaluated on the whole "
                              "image, without the recipe's centre crop (not in the paper; default: recipe)")
    dataset.add_argument("--prefetch_factor", type=int, default=None,
                         help=f"batches each loading process prepares ahead (default: {PREFETCH_FACTOR})")

    recipe = parser.add_argument_group("recipe (the paper's retraining)")
    recipe.add_argument("--epochs", type=int, default=None, help=f"training epochs (recipe: {RECIPE_EPOCHS})")
    recipe.add_argument("--batch_size", type=int, default=None,
                        help="GLOBAL batch over all processes; each takes batch_size / world size "
                             f"(recipe: {RECIPE_BATCH_SIZE})")
    recipe.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (recipe: {RECIPE_LR}, for a global batch of {RECIPE_BATCH_SIZE}); "
                             "not changed by --batch_size unless --scale_lr")
    recipe.add_argument("--scale_lr", action="store_true",
                        help=f"linear scaling rule: use lr x batch_size / {RECIPE_BATCH_SIZE}")
    recipe.add_argument("--warmup_epochs", type=float, default=None,
                        help=f"linear warm-up epochs before the cosine decay (recipe: {RECIPE_WARMUP_EPOCHS})")
    recipe.add_argument("--momentum", type=float, default=MOMENTUM, help=f"SGD momentum (default: {MOMENTUM})")
    recipe.add_argument("--weight_decay", type=float, default=WEIGHT_DECAY,
                        help=f"L2 on conv and linear weights; none on biases and BatchNorm (default: {WEIGHT_DECAY})")
    recipe.add_argument("--label_smoothing", type=float, default=LABEL_SMOOTHING,
                        help=f"(default: {LABEL_SMOOTHING})")
    recipe.add_argument("--dropout", type=float, default=DEFAULT_DROPOUT,
                        help=f"before the last Linear (default: {DEFAULT_DROPOUT})")
    recipe.add_argument("--zero_init_residual", action="store_true",
                        help="start each residual block as the identity (its last BatchNorm scale 0); not in the "
                             "paper: the short CPU retraining's choice")
    recipe.add_argument("--grad_clip", type=float, default=GRAD_CLIP_NORM,
                        help=f"max gradient norm; 0 turns clipping off (default: {GRAD_CLIP_NORM})")
    recipe.add_argument("--ema", action="store_true",
                        help="also keep an exponential moving average of the weights, evaluated every epoch "
                             f"and saved as {BEST_EMA_FILE}")
    recipe.add_argument("--ema_decay", type=float, default=None,
                        help=f"the average's decay per step, with --ema (default: {EMA_DECAY})")

    speed = parser.add_argument_group("speed (none changes the numerics unless given)")
    speed.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none",
                       help="mixed precision for the training forward pass (fp16 adds loss scaling); "
                            "evaluation stays in fp32 (default: none)")
    speed.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                       help="NHWC memory format for convolutions (recipe: off; demo: on, twice as fast on CPU)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the training model")
    speed.add_argument("--sync_bn", action="store_true",
                       help="synchronise BatchNorm statistics over GPUs (CUDA only)")
    utils.add_device_arguments(parser)
    return parser


# --------------------------------------------------------- input checking


def resolve_schedule(args, checkpoint=None):
    """Fill the options left unset: on --resume from what the checkpoint's
    run used (restore_schedule_options), then from --schedule
    (utils.fill_from_schedule: the paper's recipe with --dataset, the demo's
    schedule without); then --scale_lr scales an lr not restored (a restored
    one was scaled already) to the batch size."""
    restored = restore_schedule_options(args, checkpoint) if checkpoint is not None else set()
    started_with = ((checkpoint or {}).get("args") or {}).get("scale_lr", args.scale_lr)
    if args.scale_lr != started_with:
        raise UserError(f"--scale_lr: the resumed run started {'with' if started_with else 'without'} it, and its "
                        "lr schedule is restored as it was; resume with the same --scale_lr (or start a new run)")
    fill_from_schedule(args, SCHEDULES)
    if args.scale_lr and "lr" not in restored:
        args.lr = args.lr * args.batch_size / RECIPE_BATCH_SIZE
    return args


def restore_schedule_options(args, checkpoint):
    """A resumed run continues as it was: each schedule option left unset
    (epochs, batch size, image size, lr, warm-up, channels_last) takes the
    value the checkpoint's run used, where it recorded one. Returns the
    names restored."""
    saved = checkpoint.get("args") or {}
    restored = {name for name in RECIPE_SCHEDULE if getattr(args, name) is None and saved.get(name) is not None}
    for name in restored:
        setattr(args, name, saved[name])
    return restored


def resolve_ema_decay(args):
    """--ema_decay means something only with --ema: given alone it would be
    ignored without a word, so it is refused."""
    if args.ema_decay is not None and not args.ema:
        raise UserError("--ema_decay sets the decay of --ema's weight average, which is off; add --ema or drop "
                        "--ema_decay")
    if args.ema_decay is None:
        args.ema_decay = EMA_DECAY


# What only training reads: given with --evaluate, each would be ignored.
TRAINING_ONLY = ("epochs", "lr", "scale_lr", "warmup_epochs", "momentum", "weight_decay", "label_smoothing", "dropout",
                 "zero_init_residual", "grad_clip", "ema", "amp", "compile", "sync_bn")


def refuse_training_options(args):
    """--evaluate with an option only training reads (checked before the
    schedule fills the unset ones)."""
    defaults = get_args_parser()
    trained = [name for name in TRAINING_ONLY if getattr(args, name) != defaults.get_default(name)]
    if args.evaluate and trained:
        raise UserError(f"--evaluate trains nothing, so --{trained[0]} would be ignored; drop it (evaluation takes "
                        "the dataset, image size, batch size, loaders and device options)")


def check_options_apply(args):
    """An option that the rest of the command turns off would be ignored in
    silence; refuse it, then fill the defaults of those left unset."""
    if args.onnx_opset is not None and not args.export_onnx:
        raise UserError("--onnx_opset sets the opset of --export_onnx, which is not given; add --export_onnx PATH or "
                        "drop --onnx_opset")
    if args.prefetch_factor is not None and args.workers == 0:
        raise UserError("--prefetch_factor applies to loading processes, and --workers 0 loads in the training "
                        "process; drop one of them")
    if args.evaluate and args.save is not None:
        raise UserError("--evaluate writes no run folder, so --save has nothing to hold; drop --save (with "
                        "--export_onnx PATH the network is written to PATH)")
    args.onnx_opset = ONNX_OPSET if args.onnx_opset is None else args.onnx_opset
    args.prefetch_factor = PREFETCH_FACTOR if args.prefetch_factor is None else args.prefetch_factor


# Each numeric option: what it must be (utils.check_number_rules).
NUMBER_RULES = (
    (("epochs",), lambda value: 1 <= value <= utils.MAX_EPOCHS, f"in [1, {utils.MAX_EPOCHS}]"),
    (("batch_size",), lambda value: 1 <= value <= utils.MAX_BATCH_SIZE, f"in [1, {utils.MAX_BATCH_SIZE}]"),
    (("image_size",), lambda value: 32 <= value <= utils.MAX_IMAGE_SIZE,
     f"in [32, {utils.MAX_IMAGE_SIZE}] (the network downsamples 32x)"),
    (("lr",), lambda value: 0 < value <= utils.MAX_LEARNING_RATE, f"in (0, {utils.MAX_LEARNING_RATE:g}]"),
    (("warmup_epochs",), lambda value: 0 <= value <= utils.MAX_EPOCHS, f"in [0, {utils.MAX_EPOCHS}]"),
    (("momentum", "label_smoothing", "dropout"), lambda value: 0 <= value < 1, "in [0, 1)"),
    (("weight_decay",), lambda value: 0 <= value <= 1, "in [0, 1]"),
    (("grad_clip",), lambda value: value >= 0, "a non-negative number (0: no clipping)"),
    (("ema_decay",), lambda value: 0 < value < 1, "in (0, 1)"),
    (("workers",), lambda value: value is None or 0 <= value <= utils.MAX_WORKERS, f"in [0, {utils.MAX_WORKERS}]"),
    (("onnx_opset",), lambda value: MIN_ONNX_OPSET <= value <= MAX_ONNX_OPSET,
     f"in [{MIN_ONNX_OPSET}, {MAX_ONNX_OPSET}] (what the exporter writes for this network)"),
    (("prefetch_factor",), lambda value: value >= 1, "at least 1"),
)


def check_numbers(args, world_size):
    check_number_rules(args, NUMBER_RULES)
    utils.check_seed(args.seed)
    if args.batch_size % world_size:
        raise UserError(f"--batch_size {args.batch_size} is the global batch and must divide evenly "
                        f"over {world_size} processes")
    if args.batch_size // world_size < 2:
        raise UserError(f"--batch_size {args.batch_size} gives {args.batch_size // world_size} image(s) per "
                        "process; BatchNorm needs at least 2")


def check_dataset(root, splits):
    """Fail early, before any process starts, on a wrong --dataset: missing
    or empty folders, class folders without images, different classes in
    train/ and val/ (unreadable images are reported when first read)."""
    classes = {split: data.image_folder(root, split).classes for split in splits}
    if len(classes[splits[0]]) < 2:
        raise UserError(f"--dataset {root}: {splits[0]}/ has {len(classes[splits[0]])} class folder; "
                        "classification needs at least 2")
    if len(splits) == 2:
        data.check_same_classes(root, classes["train"], classes["val"])


def load_resume_checkpoint(args):
    checkpoint = utils.load_checkpoint(args.resume, what="--resume")
    required = ("state_dict", "arch_config", "optimizer", "scheduler", "epoch")
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        if utils.checkpoint_kind(checkpoint) == "search":
            raise UserError(f"--resume: {args.resume} is a search's checkpoint (search_imagenet.py); continue the "
                            "search with search_imagenet.py --resume, or train its arch.json with --arch_config")
        raise UserError(f"--resume: {args.resume} is not a training checkpoint of this script "
                        f"(no {', '.join(missing)}); to evaluate weights use --evaluate")
    records = {"best": dict, "optimizer": dict, "scheduler": dict, "args": (dict, type(None)), "num_classes": int,
               "arch_config": list}
    wrong = [key for key, kind in records.items() if not isinstance(checkpoint.get(key), kind)
             or isinstance(checkpoint.get(key), bool)]
    if "arch_config" not in wrong and not all(isinstance(op, str) for op in checkpoint["arch_config"]):
        wrong.append("arch_config")  # op names, as this script writes it
    best = checkpoint.get("best")
    if "best" not in wrong and not (utils.is_finite_number(best.get("top1")) and 0 <= best["top1"] <= 100
                                    and isinstance(best.get("epoch"), int) and not isinstance(best["epoch"], bool)
                                    and utils.is_finite_number(best.get("ema_top1", -1.0))
                                    and 1 <= best["epoch"] <= checkpoint["epoch"]):  # from an epoch it trained
        wrong.append("best")
    if wrong:
        raise UserError(f"--resume: {args.resume} is damaged or of another version (missing or of the wrong kind: "
                        f"{', '.join(wrong)}); resume from another checkpoint or start again")
    broken = utils.non_finite_entries(checkpoint["state_dict"])
    if broken:
        raise UserError(f"--resume: {args.resume} holds NaN or infinite values ({utils.name_a_few(broken)}): "
                        "the run diverged before it was saved; resume from an earlier checkpoint or start again")
    # Not a divergence of this run (its weights are finite) but a damaged record: a lower --lr would not help.
    broken = (utils.non_finite_settings(checkpoint["optimizer"], "optimizer")
              + utils.non_finite_settings(checkpoint["scheduler"], "scheduler"))
    if broken:
        raise UserError(f"--resume: {args.resume} is damaged (NaN or infinite: {utils.name_a_few(broken)}); resume "
                        "from another checkpoint or start again")
    return checkpoint


def check_resume_dataset(args, checkpoint):
    """A resumed run trains on the data it started on: left out, --dataset
    would silently switch a real dataset's run to the synthetic demo set (or
    given, the demo's run to a real one). A moved copy of the same folder is
    fine, so only the choice between the two is checked."""
    saved = (checkpoint.get("args") or {}).get("dataset", args.dataset)
    if saved is not None and args.dataset is None:
        raise UserError(f"--resume: {args.resume} trained on --dataset {saved}; resume with --dataset {saved} "
                        "(or where that folder is now)")
    if saved is None and args.dataset is not None:
        raise UserError(f"--resume: {args.resume} trained on the synthetic demo set, not on a --dataset; drop "
                        "--dataset to continue it, or start a new run on your data")


def resolve_architecture(args, checkpoint):
    """--arch_config, else the one a checkpoint records, else the demo's."""
    if args.arch_config is not None:
        arch_config = resolve_arch_config(args.arch_config)
    elif checkpoint is not None and checkpoint.get("arch_config") is not None:
        arch_config = recorded_arch_config(checkpoint["arch_config"], args.resume or args.evaluate)
    elif args.dataset is None:
        arch_config = resolve_arch_config(DEMO_ARCH)
    else:
        raise UserError("give --arch_config: a registered name such as LightNet-24ms, the list "
                        "\"['MBK3E1', ...]\", or a search's arch.json")
    if args.resume and checkpoint["arch_config"] != arch_config:
        raise UserError(f"--resume: {args.resume} was trained with another --arch_config; "
                        "resume with the same architecture or start a new run")
    return arch_config


def resolve_save_folder(args):
    if args.save is None:
        args.save = (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                     else time.strftime("train-%Y%m%d-%H%M%S"))
    utils.refuse_folder_in_use(args.save)
    existing = os.path.join(args.save, CHECKPOINT_FILE)
    # Resumed into another folder, the run starts that folder afresh: it may hold no other run.
    resuming_here = args.resume is not None and (
        os.path.realpath(os.path.dirname(os.path.abspath(args.resume))) == os.path.realpath(args.save))
    if not resuming_here and os.path.exists(existing):
        held = utils.describe_saved_run(existing)
        if held != utils.RUN_DESCRIPTIONS["training"]:
            raise UserError(f"--save {args.save} holds {held}, not a training run: choose another --save")
        raise UserError(f"--save {args.save} already holds {CHECKPOINT_FILE}: continue it with --resume "
                        f"{existing} or choose another --save")
    utils.refuse_save_inside_dataset(args.save, args.dataset)
    if not resuming_here:
        utils.refuse_files_of_others_or_earlier_runs(args.save, "training", TRAINING_OUTPUTS,
                                                     (BEST_FILE, BEST_EMA_FILE, METRICS_FILE))


TRAINING_OUTPUTS = {CHECKPOINT_FILE, BEST_FILE, BEST_EMA_FILE, METRICS_FILE, CURVES_FILE, utils.LOG_NAME}


def prepare(args):
    """Check and complete everything that comes from the user, before any
    training process starts; returns the (plain) arguments every process
    receives."""
    if args.resume and args.evaluate:
        raise UserError("give --resume or --evaluate, not both")
    refuse_training_options(args)
    checkpoint = None
    if args.resume:
        checkpoint = load_resume_checkpoint(args)
    elif args.evaluate:
        checkpoint = utils.load_checkpoint(args.evaluate, what="--evaluate")
        if not isinstance(checkpoint, dict):
            raise UserError(f"--evaluate: {args.evaluate} holds no model state_dict")
        utils.refuse_search_checkpoint(checkpoint, args.evaluate, "--evaluate")
        if args.image_size is None:
            args.image_size = evaluate.recorded_image_size(checkpoint)  # the size it was trained at, if known
    if args.resume:
        check_resume_dataset(args, checkpoint)
    resolve_schedule(args, checkpoint if args.resume else None)
    world_size = utils.planned_world_size(args)
    if world_size < 1:
        raise UserError("--gpus must be at least 1")
    resolve_ema_decay(args)
    check_options_apply(args)
    check_numbers(args, world_size)
    args.device_type = utils.resolve_device_type(args)
    if args.sync_bn and args.device_type != "cuda":
        raise UserError("--sync_bn needs CUDA GPUs (SyncBatchNorm has no CPU implementation)")
    args.arch_config = resolve_architecture(args, checkpoint)
    if args.resume:
        utils.check_saved_epoch(checkpoint, args.epochs, args.resume)
    if args.dataset is not None:
        check_dataset(args.dataset, ("val",) if args.evaluate else ("train", "val"))
    if args.export_onnx:
        utils.check_output_file(args.export_onnx, "--export_onnx")
        if os.path.exists(args.export_onnx) and not args.export_onnx.endswith(".onnx"):
            raise UserError(f"--export_onnx {args.export_onnx} exists and is not an .onnx file (a checkpoint?); "
                            "choose another path (an existing .onnx file is replaced)")
        import_onnx_checkers()  # now, not after days of training
    if not args.evaluate:
        resolve_save_folder(args)
        utils.resumable_at(os.path.join(args.save, CHECKPOINT_FILE))
    return args


def main(args):
    prepare(args)
    writes_a_run = not args.evaluate  # --evaluate writes no run folder: nothing to lock
    with utils.run_folder_lock(args.save, checkpoint=CHECKPOINT_FILE) if writes_a_run else contextlib.nullcontext():
        utils.launch(worker, args, args.gpus)


# ------------------------------------------------------------------- data


def processes_on_this_machine():
    """Training processes sharing this machine's cores (torchrun sets
    LOCAL_WORLD_SIZE; `launch` starts WORLD_SIZE processes here)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))


def default_workers():
    return max(1, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) // processes_on_this_machine()))


def build_train_loader(root, args, context):
    if args.augment == "flip":
        transform = data.build_flip_transform(args.image_size)
    else:
        transform = data.build_train_transform(args.image_size)
    dataset = data.image_folder(root, "train", transform)
    return data.seeded_loader(dataset, args.batch_size // context.world_size, args.seed, context, args.workers,
                              args.prefetch_factor)


def build_val_loader(root, args, context, crop_ratio):
    dataset = data.image_folder(root, "val", data.build_eval_transform(args.image_size, crop_ratio))
    sampler = evaluate.ShardSampler(len(dataset), context.rank, context.world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=max(1, args.batch_size // context.world_size),
                                       sampler=sampler, **data.loader_options(args.workers, context.device, args.seed,
                                                                              args.prefetch_factor))


# ------------------------------------------------------------------ model


def parameter_groups(model, weight_decay):
    """Weight decay on conv and linear weights only: biases and BatchNorm
    weights and biases are exactly the parameters with at most one
    dimension."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine_factor(step, warmup_steps, total_steps):
    """Learning-rate multiplier of optimizer step `step` (from 0): linear
    from 1/warmup_steps to 1 over the warm-up, then half a cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, warmup_epochs, epochs, steps_per_epoch):
    """Per-step schedule, so warm-up and decay are smooth within epochs."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps))


class WeightEma:
    """Exponential moving average of a model's parameters and buffers,
    updated after every optimizer step; a plain LightNet, so its weights
    save and load like the model's."""

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        for average, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, 1.0 - self.decay)
            else:
                average.copy_(current)


@dataclasses.dataclass
class Training:
    """Everything one training step needs."""

    model: nn.Module  # the plain LightNet: what checkpoints and evaluation use
    train_model: nn.Module  # the same, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    ema: WeightEma | None
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    grad_clip: float


def setup_training(args, context, num_classes, steps_per_epoch):
    utils.seed_everything(args.seed)  # the same initial weights in every process
    model = LightNet(args.arch_config, num_classes=num_classes, dropout=args.dropout,
                     zero_init_residual=args.zero_init_residual)
    if args.sync_bn and context.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(context.device, memory_format=memory_format)
    optimizer = torch.optim.SGD(parameter_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum)
    train_model = torch.compile(model) if args.compile else model
    if context.distributed:
        # A depthwise weight (C, 1, k, k) in channels_last has strides that differ from the bucket's only in its
        # dimension of size 1, the same layout in memory; DDP still warns in four lines on the first backward.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        train_model = DistributedDataParallel(
            train_model, device_ids=[context.local_rank] if context.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    return Training(
        model=model, train_model=train_model, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, args.warmup_epochs, args.epochs, steps_per_epoch),
        scaler=torch.amp.GradScaler(context.device.type, enabled=args.amp == "fp16"),
        criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        ema=WeightEma(model, args.ema_decay) if args.ema else None,
        device=context.device, amp_dtype=AMP_DTYPES[args.amp], memory_format=memory_format,
        grad_clip=args.grad_clip)


# ------------------------------------------------------------------- loop


@dataclasses.dataclass
class EpochStats:
    loss: float
    top1: float
    top5: float
    images: int  # over all processes
    seconds: float
    data_wait: float  # fraction of the time this process waited for a batch

    @property
    def images_per_second(self):
        return self.images / self.seconds


def train_step(training, images, targets):
    """One step: a single autocast region around forward and loss, loss
    scaling only for fp16, gradients unscaled before clipping, one optimizer
    step. Returns the loss and the logits."""
    with torch.autocast(training.device.type, dtype=training.amp_dtype, enabled=training.amp_dtype is not None):
        logits = training.train_model(images)
        loss = training.criterion(logits, targets)
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    if training.grad_clip > 0:
        training.scaler.unscale_(training.optimizer)
        nn.utils.clip_grad_norm_(training.model.parameters(), training.grad_clip)
    training.scaler.step(training.optimizer)
    training.scaler.update()
    with warnings.catch_warnings():
        # fp16's scaler skips a step whose gradients overflowed (the first
        # ones, while it finds its scale); PyTorch then warns that the
        # schedule moved without an optimizer step. It should move: the lr
        # follows the step count, whether a step was skipped or not.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        training.scheduler.step()
    if training.ema is not None:
        training.ema.update(training.model)
    return loss.detach(), logits.detach()


def train_one_epoch(training, loader, epoch, progress=False):
    """One pass over `loader`; `progress`: this process may show a bar (drawn on a terminal only)."""
    training.train_model.train()
    device = training.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss x images, top-1, top-5, images
    waited = 0.0
    batches = utils.progress_bar(loader, progress, desc=f"epoch {epoch + 1}", unit="batch", leave=False)
    start = waiting_since = time.perf_counter()
    for step, (images, targets) in enumerate(batches):
        waited += time.perf_counter() - waiting_since
        images = images.to(device, non_blocking=True, memory_format=training.memory_format)
        targets = targets.to(device, non_blocking=True)
        loss, logits = train_step(training, images, targets)
        count = targets.size(0)
        sums[0] += loss.double() * count
        sums[1:3] += utils.hit_counts(logits, targets)
        sums[3] += count
        if not batches.disable and step % PROGRESS_POSTFIX_STEPS == 0:
            batches.set_postfix(loss=f"{loss.item():.3f}", lr=f"{training.optimizer.param_groups[0]['lr']:.4f}")
        waiting_since = time.perf_counter()
    utils.all_reduce_sum(sums)  # also waits for the device to finish
    seconds = time.perf_counter() - start
    loss_sum, top1, top5, images = sums.tolist()
    return EpochStats(loss=loss_sum / images, top1=100.0 * top1 / images, top5=100.0 * top5 / images,
                      images=int(images), seconds=seconds, data_wait=waited / seconds)


def evaluate_model(model, loader, context, progress):
    """Exact top-1/top-5 over the whole val set: each process evaluates its
    own shard with rank 0's BatchNorm statistics, the counts are summed."""
    utils.broadcast_buffers(model)
    total, top1, top5 = evaluate.evaluate_counts_distributed(model, loader, context.device, progress)
    return dict(images=total, top1=100.0 * top1 / total, top5=100.0 * top5 / total)


# ------------------------------------------------------------------ state


def checkpoint_state(training, args, num_classes, epoch, records, best, rng_states, images):
    """Everything needed to continue after `epoch`, and the digest of the
    metrics rows up to it (`records`), so that a resume in place can tell
    its own folder's record from another run's, or from an edited one."""
    state = dict(state_dict=training.model.state_dict(), arch_config=list(args.arch_config),
                 num_classes=num_classes, image_size=args.image_size,
                 eval_crop_ratio=data.eval_crop_ratio(args.augment), epoch=epoch,
                 metrics_sha256=utils.content_digest(records),
                 optimizer=training.optimizer.state_dict(), scheduler=training.scheduler.state_dict(),
                 scaler=training.scaler.state_dict(), best=dict(best), rng_states=rng_states, args=vars(args),
                 dataset=images)
    if training.ema is not None:
        state["ema_state_dict"] = training.ema.model.state_dict()
    return state


def weights_file(state_dict, args, classes, epoch, result):
    """best.pth.tar: the released layout ({"state_dict": ...}, the released
    parameter names, without the `module.` prefix) plus the architecture, so
    evaluate.py needs no --model, and the class names, so that it can tell
    another dataset of as many classes."""
    return dict(state_dict=state_dict, arch_config=list(args.arch_config), num_classes=len(classes),
                classes=list(classes), image_size=args.image_size, eval_crop_ratio=data.eval_crop_ratio(args.augment),
                epoch=epoch, top1=result["top1"], top5=result["top5"])


def damaged_training_state(training, checkpoint):
    """Where the checkpoint's optimizer and schedule state do not fit this
    run's (checked against the fresh ones: torch loads anything and fails at
    the first step, an epoch later)."""
    return (utils.optimizer_state_mismatch(training.optimizer, checkpoint["optimizer"], "optimizer")
            + utils.settings_mismatch(checkpoint["scheduler"], training.scheduler.state_dict(), "scheduler")
            + utils.schedule_position_mismatch(checkpoint["scheduler"], "scheduler"))


def restore(training, checkpoint, context, num_classes, images, logger):
    """Load a training checkpoint; returns (epochs done, best results)."""
    if checkpoint.get("num_classes") != num_classes:
        raise UserError(f"--resume: the checkpoint predicts {checkpoint.get('num_classes')} classes but the "
                        f"dataset has {num_classes}")
    # Checkpoints from before the training images were fingerprinted are not checked.
    change = data.describe_image_change(checkpoint["dataset"], images) if "dataset" in checkpoint else None
    if change is not None:
        raise UserError(f"--resume: the checkpoint trained on other images: {change}; continue it with the same "
                        "--dataset, or start a new run")
    mismatch = utils.state_dict_mismatch(training.model, checkpoint["state_dict"])
    if mismatch:
        raise UserError(f"--resume: the checkpoint's weights do not fit its architecture ({mismatch}); it was "
                        "changed or written by another version: start a new run")
    damaged = damaged_training_state(training, checkpoint)
    if damaged:
        raise UserError(f"--resume: the checkpoint's optimizer or schedule is damaged or of another version (wrong "
                        f"kind or shape: {utils.name_a_few(damaged)}); resume from another checkpoint or start again")
    training.model.load_state_dict(checkpoint["state_dict"])
    # A changed --lr, --weight_decay or --momentum applies (torch's load would bring back the saved ones).
    utils.load_keeping_this_runs_settings(training.optimizer, checkpoint["optimizer"], training.scheduler,
                                          checkpoint["scheduler"])
    if training.scaler.is_enabled() and checkpoint.get("scaler"):
        training.scaler.load_state_dict(checkpoint["scaler"])
    if training.ema is not None:
        if "ema_state_dict" in checkpoint:
            training.ema.model.load_state_dict(checkpoint["ema_state_dict"])
        else:
            logger.info("the checkpoint has no EMA weights: the EMA starts from the resumed weights")
            training.ema = WeightEma(training.model, training.ema.decay)
    rng_states = checkpoint.get("rng_states") or []
    if len(rng_states) == context.world_size:
        utils.set_rng_states(rng_states[context.rank])
    else:
        logger.info(f"the checkpoint was written by {len(rng_states)} process(es), this run has "
                    f"{context.world_size}: random streams are re-seeded, so the run is not bit-exact")
        utils.seed_everything(checkpoint["epoch"] * 1000 + context.rank)
    return checkpoint["epoch"], dict(checkpoint["best"])


def log_changed_options(checkpoint, args, logger):
    previous = checkpoint.get("args") or {}
    ignored = {"resume", "save", "workers", "prefetch_factor", "gpus", "visible", "device"}
    # str(): a record of another kind ("4" for 4) is no change of the setting, whose value is this run's anyway.
    changed = [f"--{name} {previous[name]} -> {value}" for name, value in vars(args).items()
               if name in previous and name not in ignored and str(previous[name]) != str(value)]
    if changed:
        logger.info("resuming with changed options: " + ", ".join(changed))


def plot_curves(records, path):
    """Loss, top-1 and learning rate per epoch, as a PNG."""
    epochs = [record["epoch"] for record in records]
    figure, (loss_axes, accuracy_axes, lr_axes) = utils.new_figure((15, 4), 1, 3)
    loss_axes.plot(epochs, [record["train_loss"] for record in records])
    loss_axes.set(title="training loss", xlabel="epoch")
    for key, label in (("train_top1", "train"), ("val_top1", "val"), ("ema_val_top1", "val, EMA")):
        if all(key in record for record in records):
            accuracy_axes.plot(epochs, [record[key] for record in records], label=label)
    accuracy_axes.set(title="top-1 (%)", xlabel="epoch")
    accuracy_axes.legend()
    lr_axes.plot(epochs, [record["lr"] for record in records])
    lr_axes.set(title="learning rate (epoch start)", xlabel="epoch")
    utils.save_figure(figure, path, dpi=100)


# ----------------------------------------------------------------- export


def export_onnx(model, path, image_size, opset=ONNX_OPSET):
    """Write `model` (eval mode, fp32, CPU) to ONNX with a dynamic batch
    axis, check it with onnxruntime against PyTorch and return the largest
    absolute logit difference. The file appears at `path` only once it has
    passed the check."""
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(1, 3, image_size, image_size)
    partial = f"{path}.partial"
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter (deprecated in favour of one that needs
            # onnxscript): its opset-13 graphs are the ones TensorRT 8.x parses.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), partial, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              opset_version=opset, dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                              dynamo=False)
        difference = check_onnx(model, partial, image_size)
    except BaseException as error:
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(error, OSError):  # a full disk, a name too long: one line, not torch's traceback
            raise utils.write_failure(path, error) from None
        raise
    os.replace(partial, path)
    return difference


def import_onnx_checkers():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("--export_onnx checks the file with onnx and onnxruntime: "
                        "pip install onnx onnxruntime") from None
    return onnx, onnxruntime


def check_onnx(model, path, image_size, batch_size=2):
    onnx, onnxruntime = import_onnx_checkers()
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)
    actual = torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: images.numpy()})[0])
    difference = (actual - expected).abs().max().item()
    if not difference <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export of {path}: onnxruntime differs from PyTorch by {difference:.2e}")
    return difference


def export_weights(state_dict, args, num_classes, logger):
    model = LightNet(args.arch_config, num_classes=num_classes, dropout=args.dropout)
    model.load_state_dict(state_dict)
    difference = export_onnx(model, args.export_onnx, args.image_size, args.onnx_opset)
    logger.info(f"ONNX: wrote {args.export_onnx} (opset {args.onnx_opset}, input '{ONNX_INPUT}' "
                f"Nx3x{args.image_size}x{args.image_size}, dynamic N); onnxruntime vs PyTorch: "
                f"max |difference| {difference:.2e}")


# ----------------------------------------------------------------- worker


def worker(args):
    """One training process (of --gpus N, or of torchrun's)."""
    context = utils.init_distributed(args.device_type)
    try:
        return run(args, context)
    finally:
        utils.cleanup_distributed()


def run(args, context):
    """Train (or, with --evaluate, evaluate) in this process; returns the
    trained plain model."""
    utils.share_cpu_threads(context)
    if context.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    if args.workers is None:
        args.workers = default_workers()
    root = args.dataset if args.dataset is not None else data.synthetic_dataset_once(context)
    if args.evaluate:
        return evaluate_checkpoint(args, context, root, utils.run_logger(context, None, "train"))
    return fit(args, context, root)


def log_setup(logger, args, context, training, num_classes, train_loader, val_loader):
    params, macs = count_params_and_flops(training.model, args.image_size)
    per_process = args.batch_size // context.world_size
    logger.info(f"arch_config: {args.arch_config}")
    logger.info(f"{num_classes} classes; Params: {params / 1e6:.2f} M; FLOPs: {macs / 1e6:.1f} M "
                f"(multiply-accumulates at {args.image_size}x{args.image_size}, thop)")
    logger.info(f"{context.world_size} process(es) on {context.device.type}; global batch {args.batch_size} = "
                f"{context.world_size} x {per_process}; lr {args.lr:g}"
                + (f" (--scale_lr: x {args.batch_size}/{RECIPE_BATCH_SIZE})" if args.scale_lr else
                   f" (the recipe's {RECIPE_LR} is for a global batch of {RECIPE_BATCH_SIZE})"))
    logger.info(f"{args.epochs} epoch(s) of {len(train_loader)} steps, {args.warmup_epochs:g} of warm-up; "
                f"train {len(train_loader.dataset)} images, val {len(val_loader.dataset)}; amp {args.amp}, "
                f"channels_last {args.channels_last}, compile {args.compile}, sync_bn {args.sync_bn}, "
                f"EMA {args.ema_decay if args.ema else 'off'}; {args.workers} loading process(es) each")
    if args.warmup_epochs >= args.epochs:
        # Said, not refused: a run of a few epochs that only checks the pipeline is common; a user who shortened
        # a schedule's run should know its lr never reaches its peak.
        logger.info(f"note: the warm-up ({args.warmup_epochs:g} epochs) is as long as the run ({args.epochs}): the lr "
                    f"only ramps up and never reaches {args.lr:g}; give fewer --warmup_epochs for a real run")
    logger.info(f"writing to {os.path.abspath(args.save)}")


def fit(args, context, root):
    train_loader = build_train_loader(root, args, context)
    val_loader = build_val_loader(root, args, context, data.eval_crop_ratio(args.augment))
    num_classes = len(train_loader.dataset.dataset.classes)
    images = data.dataset_fingerprint(train_loader.dataset.dataset)  # kept in checkpoints: a resume must use them
    training = setup_training(args, context, num_classes, len(train_loader))
    # The run's folder and log appear only now that the data and the model
    # were accepted: a refusal above leaves nothing behind.
    if context.is_main:
        os.makedirs(args.save, exist_ok=True)
        if args.resume:
            carry_best_weights(args)
    logger = utils.run_logger(context, args.save, "train")
    start_epoch, best, checkpoint = 0, dict(top1=-1.0, epoch=0, ema_top1=-1.0), None
    if args.resume:
        checkpoint = utils.load_checkpoint(args.resume, what="--resume")
        with utils.damaged_checkpoint_refused(args.resume):
            # Before the setup is logged: a refused resume adds nothing to the kept run's log.txt.
            start_epoch, best = restore(training, checkpoint, context, num_classes, images, logger)
    metrics = (utils.run_metrics_file(os.path.join(args.save, METRICS_FILE), start_epoch, args.resume or None,
                                      checkpoint) if context.is_main else None)
    if context.is_main:
        log_setup(logger, args, context, training, num_classes, train_loader, val_loader)
    if args.resume:
        log_changed_options(checkpoint, args, logger)
        logger.info(f"resumed from {args.resume} after epoch {start_epoch}")
    else:
        # Each process its own dropout stream; the weights are already equal.
        utils.seed_everything(args.seed + context.rank)
    run = RunRecord(args, num_classes, images, logger, metrics, best) if context.is_main else None

    for epoch in range(start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        lr = training.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(training, train_loader, epoch, context.is_main)
        stop_if_diverged(epoch, stats.loss, num_classes, training.model, args)
        val = evaluate_model(training.model, val_loader, context, context.is_main)
        ema_val = evaluate_model(training.ema.model, val_loader, context, False) if training.ema else None
        rng_states = utils.all_gather_objects(utils.rng_states())
        if context.is_main:
            record_epoch(run, training, epoch, lr, stats, val, ema_val, rng_states)

    if context.is_main:
        logger.info(f"done: best val top-1 {best['top1']:.3f} at epoch {best['epoch']}; "
                    f"weights in {os.path.join(args.save, BEST_FILE)}")
        if args.export_onnx:
            best_path = os.path.join(args.save, BEST_FILE)
            export_weights(utils.load_checkpoint(best_path)["state_dict"], args, num_classes, logger)
    return training.model


def carry_best_weights(args):
    """A run resumed into another --save continues its best result so far,
    whose weights lie beside the checkpoint: copy them over, or the new
    folder would lack the best.pth.tar its log and --export_onnx name."""
    source_folder = os.path.dirname(os.path.abspath(args.resume))
    if os.path.realpath(source_folder) == os.path.realpath(args.save):
        return
    for name in (BEST_FILE, BEST_EMA_FILE):
        source, destination = os.path.join(source_folder, name), os.path.join(args.save, name)
        if os.path.isfile(source) and not os.path.exists(destination):
            with open(source, "rb") as weights, utils.atomic_write(destination, binary=True) as copy_file:
                shutil.copyfileobj(weights, copy_file)


def stop_if_diverged(epoch, loss, num_classes, model, args):
    """Stop before this epoch is checkpointed when its loss exploded
    (utils.loss_exploded) or is not finite, or a weight or BatchNorm
    statistic is not (a loss can stay finite while a running variance
    overflows): the checkpoint named for a restart is then always one that
    trains."""
    broken = utils.non_finite_entries(model.state_dict())
    diverged = utils.loss_exploded(loss, num_classes) or bool(broken)
    if not utils.any_process_diverged(diverged, next(model.parameters()).device):
        return
    what = f"loss {loss:g}" + (f", not finite: {utils.name_a_few(broken)}" if broken else "")
    if not diverged:
        what += "; another process's numbers are not finite"
    checkpoint_path = os.path.join(args.save, CHECKPOINT_FILE)
    restart = (f"resume from {checkpoint_path} (epoch {epoch}) with a lower --lr" if os.path.isfile(checkpoint_path)
               else "no epoch finished, so no checkpoint was saved: start again with a lower --lr "
                    "(or a smaller --grad_clip)")
    raise UserError(f"training diverged in epoch {epoch + 1} ({what}); {restart}")


@dataclasses.dataclass
class RunRecord:
    """What the main process keeps of a training run between epochs."""

    args: argparse.Namespace
    num_classes: int
    images: dict  # the training images' fingerprint (data.dataset_fingerprint)
    logger: logging.Logger
    metrics: utils.MetricsFile
    best: dict  # best val top-1 so far, its epoch, the best EMA top-1
    figures: utils.RedrawClock = dataclasses.field(default_factory=utils.RedrawClock)


def record_epoch(run, training, epoch, lr, stats, val, ema_val, rng_states):
    """Rank 0, after each epoch: metrics, best weights, then the checkpoint
    (last, so that a crash leaves a checkpoint that --resume continues)."""
    args, num_classes, best = run.args, run.num_classes, run.best
    done = epoch + 1
    record = dict(epoch=done, lr=lr, train_loss=stats.loss, train_top1=stats.top1, train_top5=stats.top5,
                  val_top1=val["top1"], val_top5=val["top5"], val_images=val["images"],
                  images_per_s=stats.images_per_second, data_wait=stats.data_wait, epoch_s=stats.seconds)
    if val["top1"] > best["top1"]:
        best.update(top1=val["top1"], epoch=done)
        utils.save_checkpoint(weights_file(training.model.state_dict(), args, run.images["classes"], done, val),
                              os.path.join(args.save, BEST_FILE))
    if ema_val is not None:
        record.update(ema_val_top1=ema_val["top1"], ema_val_top5=ema_val["top5"])
        if ema_val["top1"] > best["ema_top1"]:
            best["ema_top1"] = ema_val["top1"]
            utils.save_checkpoint(weights_file(training.ema.model.state_dict(), args, run.images["classes"], done,
                                               ema_val),
                                  os.path.join(args.save, BEST_EMA_FILE))
    run.metrics.append(record)
    state = checkpoint_state(training, args, num_classes, done, run.metrics.rows, best, rng_states, run.images)
    utils.save_checkpoint(state, os.path.join(args.save, CHECKPOINT_FILE))
    if run.figures.due(last=done == args.epochs):
        plot_curves(run.metrics.rows, os.path.join(args.save, CURVES_FILE))
    ema_text = f"  EMA top-1 {ema_val['top1']:.2f}" if ema_val is not None else ""
    run.logger.info(f"epoch {done}/{args.epochs}  lr {lr:.4f}  train loss {stats.loss:.4f} top-1 {stats.top1:.2f}  "
                    f"val top-1 {val['top1']:.2f} top-5 {val['top5']:.2f} ({val['images']} images){ema_text}  "
                    f"{stats.images_per_second:.0f} img/s, data wait {100 * stats.data_wait:.0f}%  "
                    f"{stats.seconds:.0f} s  best {best['top1']:.2f} (epoch {best['epoch']})")


def evaluate_checkpoint(args, context, root, logger):
    """--evaluate: top-1/top-5 of a checkpoint over the whole val set,
    printed like evaluate.py; then --export_onnx if given."""
    checkpoint = utils.load_checkpoint(args.evaluate, what="--evaluate")
    state_dict = evaluate.checkpoint_state_dict(checkpoint, args.evaluate)
    num_classes = evaluate.weights_num_classes(state_dict, args.evaluate, "--evaluate")
    model = LightNet(args.arch_config, num_classes=num_classes, dropout=args.dropout)
    evaluate.load_weights(model, state_dict, args.evaluate, "--evaluate")
    crop_ratio = evaluate.recorded_crop_ratio(checkpoint) or data.eval_crop_ratio(args.augment)
    val_loader = build_val_loader(root, args, context, crop_ratio)
    evaluate.check_dataset_classes(val_loader.dataset, num_classes, "--evaluate", checkpoint.get("classes"))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(context.device, memory_format=memory_format)
    total, top1, top5 = evaluate.evaluate_counts_distributed(model, val_loader, context.device, context.is_main)
    logger.info(evaluate.format_result(total, top1, top5))
    if args.export_onnx and context.is_main:
        export_weights(state_dict, args, num_classes, logger)
    return model


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
