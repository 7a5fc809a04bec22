"""The LightNAS search: one search lands a network on a latency target
(paper Section 3, "you only search once"; settings from its Section 4).

The supernet's weights train on the dataset's `train/` split and the
architecture parameters alpha on its `val/` split, with the loss

    CE + lambda * (LAT(sample) / T - 1)

where LAT is the differentiable latency of the hard Gumbel sample and lambda,
a Lagrange multiplier, is learned by gradient ascent on the constraint: it
grows while the argmax architecture is slower than T and shrinks (or resets)
when it is faster, so no penalty weight has to be tuned and no search re-run.

The authors' command (one GPU, ImageNet with 100 classes):

    python3 search_imagenet.py --save search-target-latency-24ms --gpus 1 --visible 0 \
        --target_latency 24 --dataset /path/to/dataset/

Without --dataset it runs a short demo on the synthetic dataset (CPU, a few
minutes). Several GPUs: `--gpus 4 --visible 0,1,2,3`, or
`torchrun --nproc_per_node 4 search_imagenet.py ...`. The end-of-warm-up
checkpoint (`warmup.pth.tar`) starts searches for other targets:

    python3 search_imagenet.py --save search-22ms --target_latency 22 \
        --resume search-target-latency-24ms/warmup.pth.tar --dataset /path/to/dataset/
"""

import argparse
import dataclasses
import hashlib
import math
import os
import time

import numpy as np
import torch
from torch import nn

import constraint
import data
import latency_predictor
import operations
from constraint import SearchState
from model_search import (FORBIDDEN_LOGIT, SHORTCUT_LAYERS, SHORTCUT_POOLINGS, SuperNet, gumbel_softmax_hard,
                          one_hot_paths, path_top1, strided_skip_mask, warmup_paths)
from model_train import validate_arch_config
from utils import (
    LOG_NAME, MAX_BATCH_SIZE, MAX_CLASSES, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_LEARNING_RATE, MAX_WORKERS,
    RUN_DESCRIPTIONS, AverageMeter, DefaultsHelpFormatter, MetricsFile, RedrawClock, UserError, accuracy,
    add_device_arguments, all_gather_objects, all_reduce_sum, any_process_diverged, check_number_rules,
    check_regular_file, check_saved_epoch, check_seed, checkpoint_kind, cleanup_distributed, content_digest,
    damaged_checkpoint_refused, describe_saved_run, file_sha256, fill_from_schedule, frozen, init_distributed,
    is_finite_number, launch, load_checkpoint, load_keeping_this_runs_settings, loss_exploded, name_a_few, new_figure,
    non_finite_entries, optimizer_state_mismatch, parse_forwarded_arguments, progress_bar, read_json, read_json_lines,
    refuse_files_of_others_or_earlier_runs, refuse_save_inside_dataset, resolve_device_type, resumable_at, rng_states,
    run_cli, run_folder_lock, run_logger, run_metrics_file, same_kind_of_value, save_checkpoint,
    save_checkpoint_again, save_figure, schedule_position_mismatch, seed_everything, set_rng_states, setting_value,
    settings_mismatch, share_cpu_threads, state_dict_mismatch, write_json,
)

CHECKPOINT_NAME = "checkpoint.pth.tar"
WARMUP_CHECKPOINT_NAME = "warmup.pth.tar"
METRICS_NAME = "metrics.jsonl"
ARCH_NAME, ARGS_NAME = "arch.json", "args.json"
MAX_EPOCH_SECONDS = 365 * 24 * 3600  # an epoch's time beyond this is an edited record
COST_FIGURE, LAMBDA_TAU_FIGURE, PROBABILITIES_FIGURE = "cost.png", "lambda_tau.png", "op_probabilities.png"
# Every file a search writes into --save (besides hidden lock and temporary files).
OUTPUT_NAMES = {CHECKPOINT_NAME, WARMUP_CHECKPOINT_NAME, METRICS_NAME, ARCH_NAME, ARGS_NAME, LOG_NAME, COST_FIGURE,
                LAMBDA_TAU_FIGURE, PROBABILITIES_FIGURE}
CHECKPOINT_FORMAT = 2  # 2: the release's supernet init, BN eps, gradient routing and zero-filled gradients
PENALTIES = ("lagrange", "fixed")
ETA_DECAYS = ("linear", "late", "none")

# The paper's search settings (its Section 4); they apply whenever --dataset
# is given and the option is not set on the command line.
PAPER_SCHEDULE = {
    "epochs": 90,
    "freeze_epochs": 10,            # weights only, all 7 ops per layer each batch
    "batch_size_train": 128,
    "batch_size_val": 128,
    "image_size": 224,
    "num_classes": 100,             # the searches ran on a 100-class ImageNet subset
    "tradeoff_learning_rate": 5e-4,  # lambda's gradient-ascent step
    "arch_learning_rate": 1e-3,     # Adam on alpha
    "arch_weight_decay": 1e-3,      # Adam's L2 term on alpha
    "latch_epochs": 10,             # the last epochs, where alpha can freeze near T
    "latch_tolerance": "0.15",      # |LAT - T| that latches, in the unit of T (0.15 ms)
    "latch": "scale",               # alpha's lr times |LAT/T - 1| once latched
    "arch_lr_step": 20,             # alpha's lr halves every 20 epochs after the freeze
    "tau_decay": 0.1,               # tau = tau_max * exp(-0.1 * (epoch - freeze))
    "warmup_epochs": 0,             # the release's weight-lr warm-up option, off
    "eta": 0.0,                     # the release's shared shortcut option, off
    "eta_decay": "linear",          # (the release's: eta falls linearly to 0 over the search epochs)
    "eta_floor": 0.0,               # (what eta decays to)
    "eta_layers": "all",            # (the release's shortcut is on every searchable layer)
    "eta_pooling": "max",           # (and max-pools where the layer strides)
    "hold_lambda": "zero",          # (only with --latch hold, beyond the paper)
    "strided_skips": "allow",       # SkipConnect is a candidate on every layer, as in the release
    "learning_rate": 0.1,           # SGD on the weights, cosine to 0
    "augment": "release",           # RandomResizedCrop + flip + colour jitter, as the release
    "land_within": 0.0,             # the argmax as it is
}

# The demo without --dataset: the synthetic set at 32 px, short enough for a
# 2-core CPU. A few hundred alpha steps instead of the paper's ~3,000 need
# larger alpha and lambda steps (or alpha never leaves its 1e-3
# initialisation and its argmax flips at random) and a faster tau/lr decay.
# A single-path supernet whose every layer switches between 7 unrelated ops
# does not learn in the ~1,000 weight steps a CPU affords (measured: loss at
# chance after 650 steps, even with 2 ops per layer); the release's shared
# shortcut (eta) gives the layers a common path and it learns within 100
# steps. The demo keeps it at a constant eta, since the release's decay to 0
# returns the supernet to chance in so few steps.
DEMO_SCHEDULE = {
    "epochs": 30,
    "freeze_epochs": 2,
    "batch_size_train": 32,
    "batch_size_val": 16,
    "image_size": 32,
    "num_classes": None,            # all classes of the synthetic set
    "tradeoff_learning_rate": 3e-2,
    "arch_learning_rate": 1e-1,
    "arch_weight_decay": 0.0,       # 1e-3 is as large as alpha's gradient here and holds it uniform
    # A concentrated alpha moves its argmax in jumps of 0.7 ms (median) to
    # 8 ms, so it seldom passes within the paper's 0.15 ms, and the paper's
    # latch, once on, stops alpha from learning. The demo latches within 1%
    # of T anywhere in the last 20 epochs and holds the argmax there while
    # alpha keeps learning (--latch hold, beyond the paper).
    "latch_epochs": 20,
    "latch_tolerance": "1%",
    "latch": "hold",
    "arch_lr_step": 6,
    "tau_decay": 0.12,              # tau ends near 0.2: a smaller one freezes alpha before it reaches T
    "warmup_epochs": 2,
    "eta": 3.0,
    "eta_decay": "none",
    "eta_floor": 0.0,
    "eta_layers": "all",
    "eta_pooling": "max",
    "hold_lambda": "zero",
    "strided_skips": "allow",
    "learning_rate": 0.05,
    "augment": "flip",              # random crops of 32 px images lose the small objects
    "land_within": 0.0,             # the search lands by itself (benchmarks/landing.py)
}
SCHEDULES = {"paper": PAPER_SCHEDULE, "demo": DEMO_SCHEDULE}
# The demo's synthetic set, generated at the demo's image size.
DEMO_DATASET = {"train_per_class": 60, "val_per_class": 30, "image_size": 32}


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="LightNAS: search a network whose predicted latency lands on --target_latency.",
        formatter_class=DefaultsHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--save", default=None, help="output folder (log, metrics, arch.json, checkpoints) (default: "
                                                   "search-demo; with --resume, the checkpoint's folder)")
    run.add_argument("--dataset", default=None,
                     help="folder with train/ and val/ (ImageNet layout); omitted: the synthetic demo dataset "
                          "with a short schedule")
    run.add_argument("--schedule", choices=tuple(SCHEDULES), default=None,
                     help="the defaults of the schedule options below: paper = the paper's search on ImageNet "
                          "(224 px, 90 epochs); demo = the short CPU search that learns on small images (32 px, "
                          "30 epochs; use it for your own small image set). Options given always win "
                          "(default: paper with --dataset, demo without)")
    run.add_argument("--resume", default=None,
                     help="checkpoint (or save folder) to continue; a warmup.pth.tar starts a search for any target "
                          "(default: a new search)")
    run.add_argument("--seed", type=int, default=10, help="random seed (paper: 10)")
    run.add_argument("--stop_after_epoch", type=int, default=None,
                     help="stop after this epoch (checkpoint kept), e.g. to fit a job's time limit; "
                          "continue with --resume (default: run to the last epoch)")
    run.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading processes")

    target = parser.add_argument_group("target")
    target.add_argument("--target_latency", type=float, default=24.0,
                        help="the target T, in the predictor's unit (ms for latency tables)")
    target.add_argument("--lut", default=None,
                        help="cost predictor: a latency table (.json), the authors' MLP (.pth.tar), 'flops' or "
                             "'params' (default: the Jetson AGX Xavier table)")
    target.add_argument("--metric", default=None, choices=("latency", "energy", "flops", "params"),
                        help="the constrained metric; checked against the predictor (default: the predictor's)")
    target.add_argument("--penalty", choices=PENALTIES, default="lagrange",
                        help="lagrange: the paper's learned multiplier (CE + lambda * (LAT/T - 1)); fixed: the "
                             "baseline of earlier methods (FBNet, ProxylessNAS), CE + w * LAT/T with a hand-set w "
                             "(--penalty_weight), no lambda and no latch")
    target.add_argument("--penalty_weight", type=float, default=None,
                        help="w for --penalty fixed, which needs it (the paper's lagrange takes none)")
    target.add_argument("--land_within", type=float, default=None, metavar="PERCENT",
                        help="beyond the paper: the final architecture is the most probable one (largest sum of "
                             "log p over layers) whose cost is within PERCENT of the target, found exactly; "
                             "arch.json keeps the raw argmax too (default: 0 = off: the argmax, as the paper)")
    target.add_argument("--pick_among", type=int, default=0, metavar="K",
                        help="beyond the paper: the final architecture is the one the supernet scores best (top-1 "
                             "on alpha's images, BatchNorm recomputed per path) among alpha's most probable "
                             "architecture in the band and up to K-1 others drawn from alpha there; the band is "
                             "--land_within's, or +-1%% of the target; arch.json lists every candidate (default: "
                             "0 = off: the argmax, as the paper)")
    target.add_argument("--skip_majority", action="store_true",
                        help="beyond the paper: the final architecture skips a layer only where SkipConnect holds "
                             "at least half of alpha's probability there (the six MBConvs share the rest, so a "
                             "skip can win the argmax with a third of it); the most probable such architecture in "
                             "the band, --land_within's or +-1%% of the target")
    target.add_argument("--strict", action="store_true",
                        help="beyond the paper: the final architecture is the most probable one whose cost does "
                             "not exceed the target (with --land_within: within PERCENT and not above T)")

    schedule = parser.add_argument_group("schedule (defaults from --schedule: paper with --dataset, demo without)")
    for name, help_text in (("epochs", "total search epochs"),
                            ("freeze_epochs", "warm-up epochs training weights only"),
                            ("batch_size_train", "weight-step batch, total over processes"),
                            ("batch_size_val", "alpha-step batch, total over processes"),
                            ("latch_epochs", "last epochs in which the latch can engage (see --latch)"),
                            ("arch_lr_step", "epochs between halvings of alpha's learning rate"),
                            ("image_size", "training crop in pixels"),
                            ("warmup_epochs", "epochs of linear weight-lr warm-up (the release's option)")):
        schedule.add_argument(f"--{name}", type=int, default=None,
                              help=f"{help_text} (paper: {PAPER_SCHEDULE[name]}, demo: {DEMO_SCHEDULE[name]})")
    schedule.add_argument("--num_classes", type=int, default=None,
                          help="use the first N classes of the dataset (paper: 100; demo: all synthetic classes)")
    schedule.add_argument("--tradeoff_learning_rate", type=float, default=None,
                          help="lambda's gradient-ascent step (paper: {tradeoff_learning_rate}, demo: {demo})".format(
                              demo=DEMO_SCHEDULE["tradeoff_learning_rate"], **PAPER_SCHEDULE))
    schedule.add_argument("--tau_decay", type=float, default=None,
                          help="tau = tau_max * exp(-tau_decay * (epoch - freeze)) (paper: {tau_decay}, demo: {demo})".format(
                              demo=DEMO_SCHEDULE["tau_decay"], **PAPER_SCHEDULE))
    schedule.add_argument("--eta", type=float, default=None,
                          help="weight of the release's op-independent shortcut added to every searchable layer "
                               "(a 1x1 conv where channels change, max pooling where it strides) "
                               "(paper: {eta}, demo: {demo})".format(demo=DEMO_SCHEDULE["eta"], **PAPER_SCHEDULE))
    schedule.add_argument("--eta_decay", choices=ETA_DECAYS, default=None,
                          help="linear: eta falls to --eta_floor from the end of the warm-up to the last epoch, as "
                               "in the release (floor 0); late: constant, then linear to --eta_floor over the last "
                               "third of the search epochs; none: constant (paper: {eta_decay}, demo: {demo})".format(
                                   demo=DEMO_SCHEDULE["eta_decay"], **PAPER_SCHEDULE))
    schedule.add_argument("--eta_floor", type=float, default=None,
                          help="what --eta_decay lowers eta to by the last epoch (paper: {eta_floor}, demo: "
                               "{demo})".format(demo=DEMO_SCHEDULE["eta_floor"], **PAPER_SCHEDULE))
    schedule.add_argument("--eta_layers", choices=SHORTCUT_LAYERS, default=None,
                          help="where the eta paths are: all = every searchable layer, as in the release; "
                               "same_shape = beyond the paper, only the layers that keep their input's shape, so "
                               "a SkipConnect on a stride-2 or channel-changing layer is judged as it will run; "
                               "shape_changing = beyond the paper, only those layers, so the same-shape layers "
                               "add their ops to the stream as the retrained network does "
                               "(paper: {eta_layers}, demo: {demo})".format(
                                   demo=DEMO_SCHEDULE["eta_layers"], **PAPER_SCHEDULE))
    schedule.add_argument("--eta_pooling", choices=SHORTCUT_POOLINGS, default=None,
                          help="how the eta paths downsample on the stride-2 layers: max = 2x2 max pooling, as in "
                               "the release; subsample = beyond the paper, every second pixel, what a SkipConnect "
                               "there keeps, so the supernet sees what skipping a stride-2 layer loses "
                               "(paper: {eta_pooling}, demo: {demo})".format(
                                   demo=DEMO_SCHEDULE["eta_pooling"], **PAPER_SCHEDULE))
    schedule.add_argument("--strided_skips", choices=("allow", "forbid"), default=None,
                          help="forbid = beyond the paper, SkipConnect is no candidate on the four stride-2 "
                               "layers (as in ProxylessNAS, TF-NAS, Once-for-All) (paper: {strided_skips}, "
                               "demo: {demo})".format(demo=DEMO_SCHEDULE["strided_skips"], **PAPER_SCHEDULE))
    schedule.add_argument("--arch_split_from_train", type=float, default=None, metavar="FRACTION",
                          help="beyond the paper: train alpha on this fraction of train/ (per class, fixed by "
                               "--seed) and the weights on the rest, leaving val/ unseen by the search; "
                               "default: alpha on val/, as the paper")

    weights = parser.add_argument_group("supernet weights (SGD)")
    weights.add_argument("--learning_rate", type=float, default=None,
                         help="initial lr, cosine to 0 (paper: {learning_rate}, demo: {demo})".format(
                             demo=DEMO_SCHEDULE["learning_rate"], **PAPER_SCHEDULE))
    weights.add_argument("--augment", choices=("release", "flip"), default=None,
                         help="the weights' training augmentation: release = RandomResizedCrop + flip + colour "
                              "jitter; flip = horizontal flip only (paper: {augment}, demo: {demo})".format(
                                  demo=DEMO_SCHEDULE["augment"], **PAPER_SCHEDULE))
    weights.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    weights.add_argument("--weight_decay", type=float, default=3e-5, help="SGD weight decay")
    weights.add_argument("--grad_clip", type=float, default=5.0, help="gradient-norm clip")
    weights.add_argument("--label_smooth", type=float, default=0.1, help="label smoothing of the cross-entropy")

    arch = parser.add_argument_group("architecture (Adam) and lambda")
    arch.add_argument("--arch_learning_rate", type=float, default=None,
                      help="Adam's lr for alpha (paper: {arch_learning_rate}, demo: {demo})".format(
                          demo=DEMO_SCHEDULE["arch_learning_rate"], **PAPER_SCHEDULE))
    arch.add_argument("--arch_weight_decay", type=float, default=None,
                      help="Adam's L2 term on alpha (paper: {arch_weight_decay}, demo: {demo})".format(
                          demo=DEMO_SCHEDULE["arch_weight_decay"], **PAPER_SCHEDULE))
    arch.add_argument("--tradeoff", type=float, default=0.0, help="initial lambda")
    arch.add_argument("--tau_max", type=float, default=5.0, help="Gumbel temperature during the warm-up")
    arch.add_argument("--latch", choices=constraint.LATCH_MODES, default=None,
                      help="what the latch does: scale = the paper's, alpha's lr times |LAT/T - 1|; hold = beyond "
                           "the paper, alpha keeps its lr and goes on learning, lambda is set to 0, and when a step "
                           "takes the argmax out of the tolerance the layers it flipped are put back "
                           "(paper: {latch}, demo: {demo})".format(
                               demo=DEMO_SCHEDULE["latch"], **PAPER_SCHEDULE))
    arch.add_argument("--hold_lambda", choices=("zero", "keep"), default=None,
                      help="lambda while --latch hold holds: zero = set to 0 and left there; keep = it goes on "
                           "following the argmax's cost, so alpha's steps keep feeling the target (paper: "
                           "{hold_lambda}, demo: {demo})".format(
                               demo=DEMO_SCHEDULE["hold_lambda"], **PAPER_SCHEDULE))
    arch.add_argument("--latch_tolerance", default=None,
                      help="|LAT - T| below which the latch engages in the last --latch_epochs: a number in "
                           "the unit of T, or a share of T such as 0.5%% (paper: {latch_tolerance}, demo: "
                           "{demo})".format(demo=DEMO_SCHEDULE["latch_tolerance"].replace("%", "%%"),
                                            latch_tolerance=PAPER_SCHEDULE["latch_tolerance"]))

    add_device_arguments(parser)
    return parser


# ------------------------------------------------------------------ settings


def resolve_schedule(args):
    """Fill the schedule options the user left unset from --schedule (the
    paper's values with --dataset, the demo's without, unless it says
    otherwise). Explicit values always win."""
    return fill_from_schedule(args, SCHEDULES)


MIN_IMAGE_SIZE = 16  # the smallest crop the tests run; below it every late layer sees one pixel
MAX_PICK_AMONG = 1000
MAX_TAU = 100.0  # a Gumbel temperature above this makes every sample uniform noise
MIN_FINAL_TAU = 1e-4  # below it alpha / tau overflows float32 (the paper's schedule ends at 1.7e-3)
MAX_ETA = 100.0  # the shared shortcut's weight
MAX_TRADEOFF = 1e6  # |initial lambda|
# |lambda| in a checkpoint: far beyond what the multiplier's steps reach in
# any search, and far below where lambda times a cost overflows.
MAX_RESUMED_TRADEOFF = 1e12
# Each numeric option: what it must be (utils.check_number_rules).
NUMBER_RULES = (
    (("epochs", "arch_lr_step"), lambda value: 1 <= value <= MAX_EPOCHS, f"in [1, {MAX_EPOCHS}]"),
    (("warmup_epochs", "latch_epochs"), lambda value: 0 <= value <= MAX_EPOCHS, f"in [0, {MAX_EPOCHS}]"),
    # BatchNorm in training mode needs two values per channel, and the last
    # stage's maps are 1x1 at the demo's size: one image per batch fails.
    (("batch_size_train", "batch_size_val"), lambda value: 2 <= value <= MAX_BATCH_SIZE,
     f"in [2, {MAX_BATCH_SIZE}] (BatchNorm needs two images per batch)"),
    (("learning_rate", "arch_learning_rate"), lambda value: 0 < value <= MAX_LEARNING_RATE,
     f"in (0, {MAX_LEARNING_RATE:g}]"),
    (("tradeoff_learning_rate",), lambda value: 0 <= value <= MAX_LEARNING_RATE, f"in [0, {MAX_LEARNING_RATE:g}]"),
    (("target_latency", "grad_clip"), lambda value: value > 0, "positive"),
    (("tau_max",), lambda value: 0 < value <= MAX_TAU, f"in (0, {MAX_TAU:g}]"),
    (("eta", "eta_floor"), lambda value: 0 <= value <= MAX_ETA, f"in [0, {MAX_ETA:g}]"),
    (("arch_weight_decay", "weight_decay"), lambda value: 0 <= value <= 1, "in [0, 1]"),
    (("land_within", "tau_decay"), lambda value: value >= 0, "non-negative"),
    (("workers",), lambda value: 0 <= value <= MAX_WORKERS, f"in [0, {MAX_WORKERS}]"),
    (("pick_among",), lambda value: 0 <= value <= MAX_PICK_AMONG, f"in [0, {MAX_PICK_AMONG}]"),
    (("momentum", "label_smooth"), lambda value: 0 <= value < 1, "in [0, 1)"),
    (("tradeoff",), lambda value: abs(value) <= MAX_TRADEOFF, f"at most {MAX_TRADEOFF:g} in size"),
    # The fixed penalty's weight stands where lambda does in alpha's loss.
    (("penalty_weight",), lambda value: value is None or 0 <= value <= MAX_TRADEOFF, f"in [0, {MAX_TRADEOFF:g}]"),
    (("image_size",), lambda value: MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE,
     f"in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (pixels)"),
)


def validate_settings(args):
    check_seed(args.seed)
    check_number_rules(args, NUMBER_RULES)
    try:
        constraint.parse_tolerance(args.latch_tolerance)
    except ValueError as error:
        raise UserError(f"--latch_tolerance {error}") from None
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise UserError(f"--stop_after_epoch must be at least 1, got {args.stop_after_epoch}")
    if args.arch_split_from_train is not None and not 0 < args.arch_split_from_train < 1:
        raise UserError(f"--arch_split_from_train must be a fraction in (0, 1), e.g. 0.2; got {args.arch_split_from_train}")
    if not 0 <= args.freeze_epochs < args.epochs:
        raise UserError(f"--freeze_epochs must be in [0, --epochs), got {args.freeze_epochs} with {args.epochs} epochs")
    if args.num_classes is not None and not 2 <= args.num_classes <= MAX_CLASSES:
        raise UserError(f"--num_classes must be in [2, {MAX_CLASSES}]")
    final_tau = args.tau_max * math.exp(-args.tau_decay * (args.epochs - args.freeze_epochs))
    if final_tau < MIN_FINAL_TAU:
        raise UserError(f"--tau_decay {args.tau_decay:g} lowers the Gumbel temperature to {final_tau:.1e} by the "
                        f"last epoch, below {MIN_FINAL_TAU:g} where sampling overflows; use a smaller --tau_decay")
    if args.eta_decay != "none" and args.eta_floor > args.eta:
        raise UserError(f"--eta_floor {args.eta_floor:g} is above --eta {args.eta:g}: --eta_decay lowers eta to the "
                        "floor, it does not raise it; give a floor at most --eta")
    if args.penalty == "fixed" and (args.penalty_weight is None or not 0 <= args.penalty_weight < math.inf):
        raise UserError("--penalty fixed needs a non-negative --penalty_weight, e.g. --penalty_weight 0.1")
    if args.penalty == "lagrange" and args.penalty_weight is not None:
        raise UserError("--penalty_weight applies to --penalty fixed only; the paper's search learns lambda instead")
    if args.skip_majority and args.pick_among:
        raise UserError("--skip_majority and --pick_among each choose the final architecture; give one of them")


def check_target(predictor, target, option="--target_latency"):
    """Stop early when no architecture can meet the target."""
    if not 0 < target < math.inf:
        raise UserError(f"{option} must be a positive number of {predictor.unit}, got {target}")
    lowest, highest = predictor.feasible_range()
    if not lowest <= target <= highest:
        reach = latency_predictor.describe_range(lowest, highest, predictor.unit, target)
        raise UserError(f"{option} {target:g} {predictor.unit} is outside what this search space can "
                        f"reach on {predictor.identifier}: {reach}")


# ----------------------------------------------------------------- schedules


def tau_at(epoch, args):
    """Gumbel temperature: tau_max during the warm-up, then exponential decay."""
    if epoch < args.freeze_epochs:
        return args.tau_max
    return args.tau_max * math.exp(-args.tau_decay * (epoch - args.freeze_epochs))


def eta_at(epoch, args):
    """The shortcut's weight: eta during the warm-up, then with --eta_decay
    linear (the release's) falling to --eta_floor at the last epoch, with
    late the same fall over the last third of the search epochs."""
    if args.eta_decay == "none" or epoch < args.freeze_epochs:
        return args.eta
    first, last = args.freeze_epochs, args.epochs - 1
    if args.eta_decay == "late":
        first = last - (last - args.freeze_epochs) // 3
    progress = min(1.0, max(0.0, (epoch - first) / max(1, last - first)))
    return args.eta + (args.eta_floor - args.eta) * progress


def weight_lr_factor(epoch, args):
    """The weights' lr multiplier in `epoch`: (epoch + 1) / warmup_epochs in
    the warm-up (per epoch, as the release's option), cosine over all epochs
    after it."""
    if epoch < args.warmup_epochs:
        return (epoch + 1) / args.warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))


def scheduled_arch_lr(epoch, args):
    """Alpha's lr: halved every `arch_lr_step` epochs after the warm-up, and
    no longer changed in the last `latch_epochs` epochs."""
    last_change_epoch = max(args.freeze_epochs, args.epochs - args.latch_epochs - 1)
    halvings = (min(epoch, last_change_epoch) - args.freeze_epochs) // args.arch_lr_step
    return args.arch_learning_rate * 0.5 ** max(0, halvings)


def in_latch_window(epoch, args):
    return epoch >= args.epochs - args.latch_epochs


# ---------------------------------------------------------------------- data


def build_datasets(args):
    """(weights' set, alpha's set, class names): train/ and val/ as in the
    paper, or with --arch_split_from_train two disjoint parts of train/."""
    def folder(split, transform):
        dataset = data.image_folder(args.dataset, split, transform)
        return data.keep_first_classes(dataset, args.num_classes, os.path.join(args.dataset, split))

    if args.augment == "release":
        train_transform = data.build_train_transform(args.image_size, hue=0.1)
    else:
        train_transform = data.build_flip_transform(args.image_size)
    # alpha's images framed as the weights saw theirs
    eval_transform = data.build_eval_transform(args.image_size, data.eval_crop_ratio(args.augment))
    train_set = folder("train", train_transform)
    if args.arch_split_from_train is None:
        arch_set = folder("val", eval_transform)
        data.check_same_classes(args.dataset, train_set.classes, arch_set.classes)
        return train_set, arch_set, train_set.classes
    weight_part, arch_part = data.split_for_architecture(train_set.targets, args.arch_split_from_train, args.seed)
    arch_view = folder("train", eval_transform)  # the same images, without augmentation
    classes = train_set.classes
    return torch.utils.data.Subset(train_set, weight_part), torch.utils.data.Subset(arch_view, arch_part), classes


# ------------------------------------------------------------------- passes


def search_state_per_process(searcher, context):
    """Every process's (lambda, sha256 of its alpha's bytes), in rank order;
    they must all be equal: the search stops if they are not (cheap: once
    per epoch)."""
    alpha = searcher.model.alpha.detach().cpu().contiguous()
    own = (searcher.state.tradeoff, hashlib.sha256(alpha.numpy().tobytes()).hexdigest())
    states = all_gather_objects(own)
    if any(state != states[0] for state in states[1:]):
        raise RuntimeError(f"alpha or lambda differ between processes ({states}); the search cannot continue")
    return states


def average_gradients(parameters, world_size):
    """All-reduce the gradients that exist (every process runs the same
    path, so the same parameters have gradients everywhere)."""
    if world_size == 1:
        return
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    all_reduce_sum(flat).div_(world_size)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


class Searcher:
    """Holds the supernet, optimizers and predictor; runs the three passes."""

    def __init__(self, args, context, predictor, num_classes, dataset_fingerprint):
        self.args = args
        self.context = context
        self.predictor = predictor
        self.dataset_fingerprint = dataset_fingerprint  # kept in checkpoints: a resume must use the same images
        self.num_classes = num_classes
        self.model = build_supernet(num_classes, args).to(context.device)
        if context.distributed and context.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.weight_parameters = self.model.weight_parameters()
        self.weight_optimizer = torch.optim.SGD(self.weight_parameters, args.learning_rate,
                                                momentum=args.momentum, weight_decay=args.weight_decay)
        self.weight_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.weight_optimizer, lambda epoch: weight_lr_factor(epoch, args))
        self.arch_optimizer = torch.optim.Adam(self.model.arch_parameters(), args.arch_learning_rate,
                                               betas=(0.5, 0.999), weight_decay=args.arch_weight_decay)
        # The same stream on every process: all sample the same path.
        self.arch_generator = torch.Generator(device=context.device).manual_seed(args.seed)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
        self.state = SearchState(tradeoff=args.tradeoff)
        self.latch = constraint.Latch(args.latch, args.hold_lambda,
                                      constraint.tolerance_amount(args.latch_tolerance, args.target_latency),
                                      args.target_latency, enabled=args.penalty == "lagrange")

    def argmax_cost(self):
        return self.predictor.cost(self.model.derive())

    def latency_penalty(self, sample_cost):
        """The latency term of alpha's loss: the paper's Lagrangian, or the
        fixed-weight penalty of earlier methods (the baseline)."""
        target = self.args.target_latency
        if self.args.penalty == "fixed":
            return self.args.penalty_weight * sample_cost / target
        return self.state.tradeoff * (sample_cost / target - 1.0)

    def _weight_step(self, images, targets, paths, eta):
        """Forward/backward every path in `paths`, then one SGD step."""
        # Zero-filled, not None, as in the release: an op that has run once
        # keeps receiving momentum and weight decay in the steps that do not
        # sample it.
        self.weight_optimizer.zero_grad(set_to_none=False)
        losses, logits_first = [], None
        for path in paths:
            logits = self.model(images, one_hot_paths(path, self.context.device), eta)
            loss = self.criterion(logits, targets)
            loss.backward()
            losses.append(loss.detach())
            logits_first = logits.detach() if logits_first is None else logits_first
        average_gradients(self.weight_parameters, self.context.world_size)
        nn.utils.clip_grad_norm_(self.weight_parameters, self.args.grad_clip)
        self.weight_optimizer.step()
        return torch.stack(losses).mean(), logits_first

    def train_weights(self, loader, epoch, tau, eta, warmup):
        """One pass over train/: in the warm-up, the 7 paths that cover every
        op of every layer per batch; after it, one hard sample per batch."""
        self.model.train()
        loss_meter, top1_meter = AverageMeter(), AverageMeter()
        description = f"epoch {epoch + 1} {'warm-up' if warmup else 'weights'}"
        for images, targets in progress_bar(loader, self.context.is_main, desc=description, leave=False):
            images = images.to(self.context.device, non_blocking=True)
            targets = targets.to(self.context.device, non_blocking=True)
            if warmup:
                paths = warmup_paths(self._cpu_generator())
            else:
                with torch.no_grad():
                    sample = gumbel_softmax_hard(self.model.arch_logits(), tau, self.arch_generator)
                paths = [sample.argmax(dim=-1)]
            loss, logits = self._weight_step(images, targets, paths, eta)
            loss_meter.update(loss.item(), targets.size(0))
            top1_meter.update(accuracy(logits, targets, topk=(1,))[0], targets.size(0))
        return loss_meter.average, top1_meter.average

    def _cpu_generator(self):
        """randperm needs a CPU generator; derive one from the arch stream."""
        seed = int(torch.randint(2**62, (1,), generator=self.arch_generator, device=self.arch_generator.device))
        return torch.Generator().manual_seed(seed)

    def train_alpha(self, loader, epoch, tau, eta, steps):
        """One pass over val/ updating alpha; lambda after every step. Each
        step's costs, lambda, latch and lr are appended to `steps`."""
        args, state, latch = self.args, self.state, self.latch
        self.model.train()
        loss_meter, top1_meter = AverageMeter(), AverageMeter()
        scheduled_lr = scheduled_arch_lr(epoch, args)
        lr = scheduled_lr
        in_window = in_latch_window(epoch, args)
        alpha = self.model.alpha
        cost = self.argmax_cost()
        with frozen(self.weight_parameters):  # alpha's pass needs no weight gradients
            for images, targets in progress_bar(loader, self.context.is_main, desc=f"epoch {epoch + 1} alpha",
                                                leave=False):
                images = images.to(self.context.device, non_blocking=True)
                targets = targets.to(self.context.device, non_blocking=True)
                latch.engage_if_near(state, cost, in_window)
                lr = latch.arch_lr(state, scheduled_lr, cost)
                before = constraint.alpha_snapshot(alpha, self.arch_optimizer) if latch.holding(state) else None
                cross_entropy, logits, sample_cost = self.alpha_step(images, targets, tau, eta, lr)
                new_cost = self.argmax_cost()
                undone = latch.must_undo(state, new_cost)
                if undone:
                    constraint.restore_flipped_layers(alpha, self.arch_optimizer, before, self.model.arch_logits)
                else:
                    cost = new_cost
                if latch.updates_lambda(state):
                    state.tradeoff = constraint.update_lagrange_multiplier(state.tradeoff, cost, args.target_latency,
                                                                           args.tradeoff_learning_rate)
                constraint.append_step(steps, argmax_cost=cost, expected_cost=self.expected_cost(),
                                       sample_cost=sample_cost, tradeoff=state.tradeoff, latched=state.latched,
                                       arch_lr=lr, undone=undone)
                loss_meter.update(cross_entropy.item(), targets.size(0))
                top1_meter.update(accuracy(logits.detach(), targets, topk=(1,))[0], targets.size(0))
        return loss_meter.average, top1_meter.average, lr

    def expected_cost(self):
        """The cost of alpha's distribution (sum of p * cost for a table)."""
        with torch.no_grad():
            return float(self.predictor.expected_cost(self.model.op_probabilities()))

    def alpha_step(self, images, targets, tau, eta, lr):
        """One Adam step on alpha for CE + the latency penalty of a sampled
        path; returns the cross-entropy, the logits and the sample's cost."""
        for group in self.arch_optimizer.param_groups:
            group["lr"] = lr
        sample = gumbel_softmax_hard(self.model.arch_logits(), tau, self.arch_generator)
        logits = self.model(images, sample, eta)
        cross_entropy = self.criterion(logits, targets)
        sample_cost = self.predictor.expected_cost(sample)
        loss = cross_entropy + self.latency_penalty(sample_cost)
        self.arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.model.arch_parameters(), self.context.world_size)
        self.arch_optimizer.step()
        return cross_entropy, logits, float(sample_cost.detach())

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, epoch, rows):
        """Everything needed to continue after `epoch` exactly, and the
        digest of the metrics rows up to it (`rows`), so that a resume in
        place can tell its own folder's record from another search's, or
        from an edited one."""
        return {
            "metrics_sha256": content_digest(rows),
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch + 1,
            "state_dict": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "weight_scheduler": self.weight_scheduler.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "arch_generator": self.arch_generator.get_state(),
            "tradeoff": self.state.tradeoff,
            "latched": self.state.latched,
            "tau": tau_at(epoch, self.args),
            "rng": rng_states(),
            "search_space_hash": operations.search_space_hash(),
            "predictor": self.predictor.identifier,
            "predictor_fingerprint": self.predictor.fingerprint,
            "dataset": self.dataset_fingerprint,
            "args": vars(self.args),
        }

    def restore(self, checkpoint):
        mismatch = state_dict_mismatch(self.model, checkpoint["state_dict"])
        if mismatch:
            raise UserError(f"--resume: the checkpoint's supernet does not fit these settings ({mismatch}); it "
                            "was changed or written by another version: start the search again")
        # torch loads an optimizer or schedule state of any kind and fails at the first step with it.
        damaged = (optimizer_state_mismatch(self.weight_optimizer, checkpoint["weight_optimizer"], "weight_optimizer")
                   + optimizer_state_mismatch(self.arch_optimizer, checkpoint["arch_optimizer"], "arch_optimizer")
                   + settings_mismatch(checkpoint["weight_scheduler"], self.weight_scheduler.state_dict(),
                                       "weight_scheduler")
                   + schedule_position_mismatch(checkpoint["weight_scheduler"], "weight_scheduler"))
        if damaged:
            raise UserError(f"--resume: the checkpoint's optimizers or schedule are damaged or of another version "
                            f"(wrong kind or shape: {name_a_few(damaged)}); start the search again")
        self.model.load_state_dict(checkpoint["state_dict"])
        # The settings are this run's (the same as the checkpoint's, checked before), never an edited file's.
        load_keeping_this_runs_settings(self.weight_optimizer, checkpoint["weight_optimizer"],
                                        self.weight_scheduler, checkpoint["weight_scheduler"])
        # An uninterrupted search holds zero gradients for every op that has
        # run (see _weight_step); give them back, or the first steps after
        # resuming would skip the momentum of the ops they do not sample.
        for parameter in self.weight_parameters:
            if "momentum_buffer" in self.weight_optimizer.state.get(parameter, {}):
                parameter.grad = torch.zeros_like(parameter)
        load_keeping_this_runs_settings(self.arch_optimizer, checkpoint["arch_optimizer"])
        self.arch_generator.set_state(checkpoint["arch_generator"])
        self.state = SearchState(tradeoff=checkpoint["tradeoff"], latched=checkpoint["latched"])
        set_rng_states(checkpoint["rng"])
        return checkpoint["epoch"]


# What a checkpoint saved before these options existed ran with: the release's behaviour.
OPTIONS_BEFORE_THEY_EXISTED = {name: PAPER_SCHEDULE[name] for name in ("eta_floor", "eta_layers", "eta_pooling",
                                                                        "strided_skips")}


def build_supernet(num_classes, args):
    """The supernet a search with these settings trains (also used to load
    its checkpoint, whose saved settings may predate the options)."""
    def setting(name):
        return getattr(args, name, OPTIONS_BEFORE_THEY_EXISTED[name])

    return SuperNet(num_classes, shortcuts=args.eta > 0, shortcut_layers=setting("eta_layers"),
                    shortcut_pooling=setting("eta_pooling"),
                    forbidden=strided_skip_mask() if setting("strided_skips") == "forbid" else None)


def resolve_resume_path(path):
    if path is not None and os.path.isdir(path):
        return os.path.join(path, CHECKPOINT_NAME)
    return path


CHECKPOINT_KEYS = ("epoch", "state_dict", "weight_optimizer", "weight_scheduler", "arch_optimizer", "arch_generator",
                   "tradeoff", "latched", "rng", "search_space_hash", "predictor", "args")


def check_search_checkpoint(checkpoint, path):
    """Refuse anything but a complete search checkpoint of this project."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"--resume: {path} is not a search checkpoint of this project"
                        + (" (it is a training run's: continue it with train_imagenet.py --resume)"
                           if checkpoint_kind(checkpoint) == "training" else ""))
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if not missing and not isinstance(checkpoint["args"], dict):
        missing = ["args"]
    if not missing:
        missing = [f"args.{name}" for name in RESUME_MUST_MATCH + ("target_latency",)
                   if name not in checkpoint["args"] and name not in OPTIONS_BEFORE_THEY_EXISTED]
    if not missing and "classifier.3.weight" not in checkpoint["state_dict"]:
        missing = ["classifier weights"]
    if missing:
        raise UserError(f"--resume: {path} is an incomplete search checkpoint (missing: "
                        f"{name_a_few(missing)}); start the search again")


# What a resumed search must share with the run that saved its checkpoint:
# everything that shaped the supernet's weights (and the schedule's length).
RESUME_MUST_MATCH = ("epochs", "freeze_epochs", "seed", "image_size", "batch_size_train", "batch_size_val", "eta",
                     "eta_decay", "eta_floor", "eta_layers", "eta_pooling", "strided_skips", "warmup_epochs",
                     "arch_split_from_train", "learning_rate", "momentum", "weight_decay", "grad_clip", "label_smooth",
                     "augment")
# What drives alpha and lambda: the same too, except where another target
# may start, from a warm-up checkpoint (alpha has not moved) into a new --save.
ALPHA_SETTINGS = ("arch_learning_rate", "arch_weight_decay", "arch_lr_step", "tau_max", "tau_decay", "tradeoff",
                  "tradeoff_learning_rate", "latch", "latch_epochs", "latch_tolerance", "hold_lambda")
# What only the paper's penalty reads: lambda's step and the latch, which
# --penalty fixed has neither of (its --tradeoff is checked on its own).
LAGRANGE_ONLY_SETTINGS = ("tradeoff_learning_rate", "latch", "latch_epochs", "latch_tolerance", "hold_lambda")


def check_same_setting(used, name, args, path, otherwise=None):
    """Refuse a resume whose checkpoint used another --name than this run;
    `otherwise` says what to do instead."""
    if not same_kind_of_value(used, getattr(args, name)):  # "3" prints as 3: no advice would help
        raise UserError(f"--resume: {path} is damaged (its --{name} is {used!r}, not a value of that option); "
                        "start the search again")
    if used != getattr(args, name):
        raise UserError(f"--resume: {path} used --{name} {used}, this run {getattr(args, name)}; use the same "
                        "settings to continue" + (f" ({otherwise})" if otherwise else ""))


def check_resume_compatible(checkpoint, args, predictor, dataset_fingerprint, path):
    """Refuse a checkpoint from another search space, dataset or schedule;
    a warm-up checkpoint may start a search for any target, into a folder
    other than the one that holds its own search."""
    check_search_checkpoint(checkpoint, path)
    if checkpoint["search_space_hash"] != operations.search_space_hash():
        raise UserError(f"--resume: {path} was made for a different search space")
    saved = checkpoint["args"]
    check_saved_epoch(checkpoint, args.epochs, path)
    if args.stop_after_epoch is not None and args.stop_after_epoch <= checkpoint["epoch"] < args.epochs:
        raise UserError(f"--stop_after_epoch {args.stop_after_epoch}: {path} is already after epoch "
                        f"{checkpoint['epoch']}; give a later epoch, or leave it out to finish the search")
    if not isinstance(checkpoint["latched"], bool) or not is_finite_number(checkpoint["tradeoff"]):
        raise UserError(f"--resume: {path} is damaged (its latch or lambda is not a boolean and a number); "
                        "start the search again")
    if abs(checkpoint["tradeoff"]) > MAX_RESUMED_TRADEOFF:
        raise UserError(f"--resume: {path} is damaged: its lambda is {checkpoint['tradeoff']:g}, beyond "
                        f"{MAX_RESUMED_TRADEOFF:g}, which no search reaches; resume from an earlier checkpoint or "
                        "start from scratch")
    classifier = checkpoint["state_dict"]["classifier.3.weight"]
    num_classes = len(dataset_fingerprint["weights"]["classes"])
    if classifier.shape[0] != num_classes:
        raise UserError(f"--resume: {path} has {classifier.shape[0]} classes, this dataset {num_classes}")
    check_same_dataset(checkpoint.get("dataset"), dataset_fingerprint, path)
    for name in RESUME_MUST_MATCH:
        check_same_setting(saved.get(name, OPTIONS_BEFORE_THEY_EXISTED.get(name)), name, args, path)
    is_warmup = checkpoint["epoch"] == args.freeze_epochs
    into_its_own_folder = os.path.abspath(os.path.dirname(path)) == os.path.abspath(args.save)
    if not is_warmup or into_its_own_folder:
        for name in ALPHA_SETTINGS:
            if name in saved:
                check_same_setting(saved[name], name, args, path, "another setting for alpha can start from its "
                                   f"{WARMUP_CHECKPOINT_NAME} into a new --save")
    if (not is_warmup and checkpoint["predictor"] == predictor.identifier
            and checkpoint.get("predictor_fingerprint", predictor.fingerprint) != predictor.fingerprint):
        raise UserError(f"--resume: {path} searched on another {checkpoint['predictor']}: the table now at "
                        f"{args.lut or latency_predictor.DEFAULT_LUT} has the same name but other costs; continue with "
                        f"the table it used, or start from its {WARMUP_CHECKPOINT_NAME} for this one")
    # The same costs under another name (a hard link, a copy) are the same predictor to the search.
    same_predictor = (checkpoint["predictor"] == predictor.identifier
                      or checkpoint.get("predictor_fingerprint") == predictor.fingerprint)
    same_target = (saved["target_latency"] == args.target_latency and same_predictor
                   and saved.get("metric", "latency") == args.metric
                   and saved.get("penalty", "lagrange") == args.penalty
                   and saved.get("penalty_weight") == args.penalty_weight)
    if into_its_own_folder and not same_target:
        raise UserError(f"--resume: {path} belongs to the search in {args.save} (for {saved['target_latency']:g} "
                        f"on {checkpoint['predictor']}, {saved.get('penalty', 'lagrange')} penalty); a search for "
                        "another target, predictor or penalty from it needs a new --save")
    if not (is_warmup or same_target):
        raise UserError(f"--resume: {path} searched for {saved['target_latency']:g} on {checkpoint['predictor']} "
                        f"with the {saved.get('penalty', 'lagrange')} penalty; "
                        f"to search for another target, start from its {WARMUP_CHECKPOINT_NAME}")


def check_resume_dataset_given(checkpoint, args, path):
    """Left out, --dataset means the demo's synthetic set: a search of the
    user's own folder resumed without it would go on with other images."""
    saved = checkpoint["args"].get("dataset")
    if args.dataset is None and isinstance(saved, str) and not data.is_synthetic_dataset(saved):
        raise UserError(f"--resume: {path} searched on --dataset {saved}; resume with --dataset {saved} (or where "
                        "that folder is now)")


def check_same_dataset(saved, current, path):
    """Refuse to continue a search on other images than it started on (a
    checkpoint from before fingerprints were kept is not checked)."""
    if saved is None:
        return
    for split, what in (("weights", "the weights' images"), ("alpha", "alpha's images")):
        change = data.describe_image_change(saved[split], current[split])
        if change is None:
            continue
        raise UserError(f"--resume: {path} searched on another dataset: {what}, {change}; continue it with the "
                        "same --dataset, or start a new search")


# ------------------------------------------------------------------- outputs


def describe_cost(predictor, cost, target):
    return (f"{latency_predictor.format_cost(cost)} {predictor.unit} (target {target:g}, "
            f"{100.0 * (cost / target - 1):+.2f}%)")


def cost_record(arch_config, cost, target):
    """An architecture as arch.json lists it: ops, predicted cost, error."""
    return {"arch_config": arch_config, "predicted": cost, "error_percent": 100.0 * (cost / target - 1.0)}


def alpha_log_probabilities(model):
    """Alpha's per-layer log-probabilities (21 x 7, float64, numpy): what the
    final choices (project_to_band, --pick_among) rank architectures by."""
    return torch.log_softmax(model.arch_logits().detach().double(), dim=-1).cpu().numpy()


SKIP_INDEX = operations.SEARCHABLE_OPS.index(operations.SKIP)


def minority_skip_layers(log_p):
    """Layers (0-based rows of `log_p`) where SkipConnect holds less than
    half of alpha's probability: --skip_majority keeps the layer there."""
    return [layer for layer in range(log_p.shape[0]) if log_p[layer, SKIP_INDEX] < math.log(0.5)]


def project_final(model, predictor, band, arch_config, cost, target, skip_majority=False):
    """--land_within / --strict / --skip_majority: the most probable
    architecture in the band (constraint.project_to_band), with what it
    cost; the raw argmax is kept. With `skip_majority` a skip is ranked out
    (as a forbidden op is) wherever it holds less than half the layer's
    probability."""
    log_p = alpha_log_probabilities(model)
    raw = operations.arch_to_indices(arch_config)
    minority = minority_skip_layers(log_p) if skip_majority else []
    ranked = log_p.copy()
    ranked[minority, SKIP_INDEX] = FORBIDDEN_LOGIT
    indices = constraint.project_to_band(ranked, predictor, *band)
    if indices is None or any(indices[layer] == SKIP_INDEX for layer in minority):
        # only a non-additive predictor (the MLP) can miss, see project_to_band
        raise UserError(f"no architecture found whose cost by {predictor.identifier} lies in "
                        f"[{band[0]:.2f}, {band[1]:.2f}] {predictor.unit}"
                        + (" without a skip where alpha gives it less than half" if skip_majority else "")
                        + "; the raw argmax is in checkpoint.pth.tar (run again without --land_within/--strict/"
                        "--skip_majority, or with a latency table)")
    final = operations.indices_to_arch(indices)
    projected = predictor.cost(final)
    layers = range(len(raw))
    return {
        **cost_record(final, projected, target),
        "raw_argmax": cost_record(arch_config, cost, target),
        "band": list(band),
        "changed_layers": [layer + 1 for layer in layers if raw[layer] != indices[layer]],
        "log_probability_given_up": float(sum(log_p[layer, raw[layer]] - log_p[layer, indices[layer]]
                                              for layer in layers)),
        **({"minority_skips_kept_out": [layer + 1 for layer in minority if raw[layer] == SKIP_INDEX]}
           if skip_majority else {}),
    }


# --pick_among: architectures drawn from alpha at once, in search of K
# distinct ones in the band (a concentrated alpha repeats its argmax often);
# the supernet scores each on alpha's images after recomputing BatchNorm on
# this many batches of the weights' images.
PICK_DRAWS = 20_000
PICK_BAND_PERCENT = 1.0  # without --land_within
PICK_CALIBRATION_BATCHES = 10


def draws_in_band(log_p, predictor, band, count, generator):
    """Up to `count` distinct architectures (op indices) drawn from alpha's
    distribution whose cost lies in `band`, the most probable first
    (found among PICK_DRAWS draws)."""
    probabilities = torch.from_numpy(log_p).exp()
    drawn = torch.multinomial(probabilities, PICK_DRAWS, replacement=True, generator=generator).T.numpy()
    costs = predictor.costs(drawn)
    found = {}
    for indices, cost in zip(drawn, costs):
        if band[0] <= cost <= band[1]:
            found.setdefault(tuple(int(index) for index in indices), None)
    layers = np.arange(log_p.shape[0])
    ranked = sorted(found, key=lambda indices: -float(log_p[layers, list(indices)].sum()))
    return [list(indices) for indices in ranked[:count]]


def pick_by_supernet(args, searcher, predictor, train_set, arch_set):
    """--pick_among K: alpha's most probable architecture in the band and
    up to K-1 others drawn from alpha there, each scored by the supernet
    (path_top1 on alpha's images); the best one, with every candidate."""
    band = constraint.landing_band(args.target_latency, args.land_within or PICK_BAND_PERCENT, args.strict)
    log_p = alpha_log_probabilities(searcher.model)
    most_probable = constraint.project_to_band(log_p, predictor, *band)
    if most_probable is None:
        raise UserError(f"--pick_among: no architecture found whose cost by {predictor.identifier} lies in "
                        f"[{band[0]:.2f}, {band[1]:.2f}] {predictor.unit}; the search itself is in checkpoint.pth.tar")
    generator = torch.Generator().manual_seed(args.seed)
    drawn = draws_in_band(log_p, predictor, band, args.pick_among, generator)
    candidates = [most_probable] + [indices for indices in drawn if indices != most_probable][:args.pick_among - 1]
    calibration = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size_train, shuffle=True,
                                              generator=torch.Generator().manual_seed(args.seed))
    val_loader = torch.utils.data.DataLoader(arch_set, batch_size=args.batch_size_val)
    eta = eta_at(args.epochs - 1, args)
    layers = np.arange(log_p.shape[0])
    scored = []
    for indices in candidates:
        arch_config = operations.indices_to_arch(indices)
        top1 = path_top1(searcher.model, indices, eta, calibration, val_loader, PICK_CALIBRATION_BATCHES)
        scored.append({"arch_config": arch_config, "predicted": predictor.cost(arch_config), "supernet_top1": top1,
                       "log_probability": float(log_p[layers, indices].sum())})
    best = max(range(len(scored)), key=lambda index: scored[index]["supernet_top1"])  # ties: the more probable
    return {"band": list(band), "draws": PICK_DRAWS, "chosen": best, "candidates": scored}


def describe_pick(pick, predictor, target):
    """--pick_among's choice in one line, beside alpha's own choice."""
    candidates, chosen = pick["candidates"], pick["candidates"][pick["chosen"]]
    return (f"picked candidate {pick['chosen'] + 1} of {len(candidates)} in [{pick['band'][0]:.2f}, "
            f"{pick['band'][1]:.2f}] {predictor.unit} by the supernet's top-1 on alpha's images: "
            f"{chosen['supernet_top1']:.1f}% against {candidates[0]['supernet_top1']:.1f}% for alpha's most probable "
            f"in the band; {describe_cost(predictor, chosen['predicted'], target)} (--pick_among)")


# The settings that decide what a search finds most, recorded in its arch.json
# for the tools that report it (args.json holds every option).
SEARCH_SETTINGS = (
    "epochs", "freeze_epochs", "seed", "dataset", "num_classes", "image_size", "tradeoff_learning_rate",
    "penalty", "penalty_weight", "eta", "eta_decay", "eta_floor", "eta_layers", "eta_pooling", "strided_skips",
    "hold_lambda", "learning_rate", "arch_learning_rate", "arch_weight_decay", "augment", "arch_split_from_train",
    "latch", "latch_tolerance", "latch_epochs", "land_within", "strict", "pick_among", "skip_majority")


def write_arch_json(args, searcher, predictor, train_set, arch_set):
    model = searcher.model
    arch_config = model.derive()
    cost = predictor.cost(arch_config)
    result = {
        **cost_record(arch_config, cost, args.target_latency),
        "target": args.target_latency,
        "metric": predictor.metric,
        "unit": predictor.unit,
        "predictor": predictor.identifier,
        "search": {name: getattr(args, name) for name in SEARCH_SETTINGS},
        "tradeoff_final": searcher.state.tradeoff,
    }
    band = constraint.landing_band(args.target_latency, args.land_within, args.strict)
    if args.skip_majority and band is None:
        band = constraint.landing_band(args.target_latency, PICK_BAND_PERCENT, args.strict)
    if args.pick_among:
        pick = pick_by_supernet(args, searcher, predictor, train_set, arch_set)
        chosen = pick["candidates"][pick["chosen"]]
        result.update(cost_record(chosen["arch_config"], chosen["predicted"], args.target_latency), pick=pick,
                      raw_argmax=cost_record(arch_config, cost, args.target_latency))
    elif band is not None:
        result.update(project_final(model, predictor, band, arch_config, cost, args.target_latency,
                                    skip_majority=args.skip_majority))
    # The supernet it ended with (what benchmarks/screen.py scores networks with), so that another
    # search's checkpoint put in its place is noticed; None where --save holds none (a finished search
    # resumed into a new folder only to choose its architecture again).
    checkpoint = os.path.join(args.save, CHECKPOINT_NAME)
    result["checkpoint_sha256"] = file_sha256(checkpoint) if os.path.isfile(checkpoint) else None
    result["seal"] = search_seal(result, read_json_lines(os.path.join(args.save, METRICS_NAME)),
                                 read_json(os.path.join(args.save, ARGS_NAME), "the file"))
    write_json(os.path.join(args.save, ARCH_NAME), result)
    return result


def search_seal(result, rows, settings):
    """SHA-256 binding arch.json (less this seal) to its search's
    metrics.jsonl rows and args.json. A composite tool reuses a kept search
    only if its three files are still the ones the search wrote: an edit that
    keeps them consistent with each other (a cost and its error changed
    together) is then noticed, not reported as that search's result."""
    return content_digest({"arch": {key: value for key, value in result.items() if key != "seal"},
                           "metrics": rows, "args": settings})


def read_finished_search(folder, remedy="delete that folder to run its search again", arguments=None):
    """(arch.json, metrics.jsonl rows) of a finished search, checked to be
    what write_arch_json and the epochs wrote: a folder kept by a composite
    tool (closed_loop.py, reproduce_tables.py, the benchmarks) whose files
    were cut short or edited is named in one line, with `remedy`. With
    `arguments` (the options the tool runs this script with), a search made
    with other settings is refused too: the tool's plan.json guards its
    reruns, but only the search's own sealed record says how it was made."""
    def refuse(problem):
        raise UserError(f"{folder} is not a finished search ({problem}); {remedy}")

    try:
        result = read_json(os.path.join(folder, ARCH_NAME), "the file")
        rows = read_json_lines(os.path.join(folder, METRICS_NAME))
    except UserError as error:
        refuse(str(error))
    if not isinstance(result, dict) or not all(
            is_finite_number(result.get(key)) for key in ("predicted", "error_percent", "target")):
        refuse(f"its {ARCH_NAME} lacks the found network's cost or target")
    settings = result.get("search")
    if not isinstance(settings, dict) or not all(isinstance(settings.get(name), int) and not isinstance(
            settings.get(name), bool) for name in ("epochs", "freeze_epochs", "seed")):
        refuse(f"its {ARCH_NAME} lacks the search's settings (epochs, freeze_epochs, seed)")
    written = dict(result)
    try:
        result["arch_config"] = validate_arch_config(result.get("arch_config"))
    except UserError as error:
        refuse(f"its {ARCH_NAME}'s arch_config: {str(error).removeprefix('--arch_config: ')}")
    if not rows:
        refuse(f"its {METRICS_NAME} holds no epochs")
    if not all(is_finite_number(row.get("seconds")) and 0 <= row["seconds"] <= MAX_EPOCH_SECONDS
               and isinstance(row.get("epoch"), int) for row in rows):
        refuse(f"a row of its {METRICS_NAME} lacks its epoch or time (seconds, 0 to a year)")
    last = rows[-1]
    probabilities = last.get("probabilities")
    whole_table = (isinstance(probabilities, list) and len(probabilities) == operations.NUM_SEARCHABLE_LAYERS
                   and all(isinstance(layer, list) and len(layer) == operations.NUM_OPS
                           and all(is_finite_number(p) for p in layer) for layer in probabilities))
    if not (is_finite_number(last.get("val_top1")) and 0 <= last["val_top1"] <= 100) or not whole_table:
        refuse(f"the last row of its {METRICS_NAME} lacks alpha's accuracy or op probabilities (one per op of each "
               "layer)")
    # From epoch 1, or after a warm-up shared from another search's checkpoint (reproduce_tables.py's).
    first = rows[0]["epoch"] if rows[0]["epoch"] == settings["freeze_epochs"] + 1 else 1
    if [row["epoch"] for row in rows] != list(range(first, settings["epochs"] + 1)):
        refuse(f"its {METRICS_NAME} does not hold epochs {first} to {settings['epochs']} once each, in order")
    try:
        saved_arguments = read_json(os.path.join(folder, ARGS_NAME), "the file")
    except UserError as error:
        refuse(str(error))
    if written.get("seal") != search_seal(written, rows, saved_arguments):
        refuse(f"its {ARCH_NAME}, {METRICS_NAME} and {ARGS_NAME} are not the ones the search wrote: edited since, or "
               "written by a version of this project before arch.json carried their seal")
    if not isinstance(saved_arguments, dict):
        refuse(f"its {ARGS_NAME} is not the search's options (a JSON object)")
    if last.get("target") != result["target"]:
        refuse(f"its {ARCH_NAME} names target {result['target']:g}, its last epoch {last.get('target')}")
    if not math.isclose(result["error_percent"], 100.0 * (result["predicted"] / result["target"] - 1.0),
                        rel_tol=1e-9, abs_tol=1e-9):
        refuse(f"its {ARCH_NAME}'s error_percent is not its predicted cost's error against its target")
    fault = recorded_cost_fault(folder, result, last)
    if fault:
        refuse(fault)
    differences = [] if arguments is None else settings_differences(result, saved_arguments, arguments)
    if differences:
        raise UserError(f"{folder} holds a search made with other settings than this run's "
                        f"({name_a_few(differences, separator='; ')}); {remedy}")
    return result, rows


# Options that say where and how a search runs, not what it finds: a kept
# search is reused whatever they were.
RUN_ONLY_OPTIONS = frozenset({"save", "resume", "stop_after_epoch", "workers", "gpus", "visible", "device",
                              "device_type"})


def settings_differences(result, saved_arguments, arguments):
    """How the finished search `result` (its arch.json; `saved_arguments`:
    its args.json) differs from the one `arguments` (this script's options)
    run: its latency table (by its costs, whatever path names it) and every
    other option but RUN_ONLY_OPTIONS, each as "--name kept there, asked
    here"; empty if none."""
    wanted = parse_forwarded_arguments(get_args_parser(), arguments, "the search's options")
    resolve_schedule(wanted)
    table = latency_predictor.load_predictor(wanted.lut, metric=wanted.metric).identifier
    pairs = [("lut", result.get("predictor"), table)]
    pairs += [(name, saved_arguments.get(name, "(not recorded)"), value) for name, value in vars(wanted).items()
              if name not in RUN_ONLY_OPTIONS | {"lut"}]
    return [f"--{name} {kept} there, {asked} here" for name, kept, asked in pairs
            if not same_setting(name, kept, asked)]


def same_setting(name, kept, asked):
    """Whether a kept search's setting is the one asked for: a dataset as
    the place it leads to, the demo's synthetic set by its folder's name
    (LIGHTNAS_DATA may put it elsewhere now)."""
    if name != "dataset" or not isinstance(kept, str):
        return kept == asked
    if asked is None:
        return os.path.basename(kept) == data.synthetic_folder_name(**DEMO_DATASET)
    return setting_value(name, kept) == setting_value(name, asked)


def recorded_cost_fault(folder, result, last_row):
    """Why arch.json's predicted cost is not what its search's cost predictor
    gives its arch_config, or None. Checked where that predictor can still
    be opened as the search named it (its args.json's --lut, the same
    identifier, and the cost its last epoch logged for that epoch's network
    reproduced); a search whose table is elsewhere now (moved from another
    machine, a relative --lut) is taken as written."""
    try:
        settings = read_json(os.path.join(folder, ARGS_NAME), "the file")
        predictor = latency_predictor.load_predictor(settings.get("lut"), metric=settings.get("metric"))
        if predictor.identifier != result.get("predictor") or not math.isclose(
                predictor.cost(last_row["arch_config"]), last_row["cost"], rel_tol=1e-9, abs_tol=1e-9):
            return None
    except (UserError, AttributeError, TypeError, ValueError, KeyError):
        return None
    expected = predictor.cost(result["arch_config"])
    if math.isclose(expected, result["predicted"], rel_tol=1e-9, abs_tol=1e-9):
        return None
    return (f"its {ARCH_NAME} gives its network {result['predicted']:g} {predictor.unit}, but {predictor.identifier} "
            f"predicts {expected:g} for it: the file was edited, or the table changed after the search")


def write_plots(save_dir, metrics, predictor, target):
    """Cost vs target (per alpha step, with lambda), lambda and tau per
    epoch, and the op-probability heatmap."""
    epochs = [row["epoch"] for row in metrics]
    figure, axis = new_figure((7, 4.5))
    axis.plot(*constraint.step_series(metrics, "argmax_cost"), linewidth=1, label="argmax architecture")
    axis.plot(*constraint.step_series(metrics, "expected_cost"), linewidth=1, label="expected (sum of p * cost)")
    axis.axhline(target, color="black", linestyle="--", label=f"target {target:g}")
    latched = [x for x, on in zip(*constraint.step_series(metrics, "latched")) if on]
    if latched:
        axis.axvspan(min(latched) - 0.5 / len(latched), max(latched), color="tab:green", alpha=0.1, label="latched")
    axis.set(xlabel="epoch", ylabel=f"predicted {predictor.metric} ({predictor.unit})", title=predictor.identifier)
    right = axis.twinx()
    right.plot(*constraint.step_series(metrics, "tradeoff"), color="tab:red", linewidth=0.8, alpha=0.6,
               label="lambda")
    right.set_ylabel("lambda", color="tab:red")
    handles, labels = (left + right for left, right in zip(axis.get_legend_handles_labels(),
                                                           right.get_legend_handles_labels()))
    right.legend(handles, labels, loc="best", fontsize=8)  # inside the axes, clear of the title
    save_figure(figure, os.path.join(save_dir, COST_FIGURE))

    figure, left = new_figure((6, 4))
    left.plot(epochs, [row["tradeoff"] for row in metrics], color="tab:red", label="lambda")
    left.set(xlabel="epoch", ylabel="lambda")
    right = left.twinx()
    right.plot(epochs, [row["tau"] for row in metrics], color="tab:blue", label="tau")
    right.set_ylabel("tau")
    figure.legend(loc="upper right")
    save_figure(figure, os.path.join(save_dir, LAMBDA_TAU_FIGURE))

    figure, axis = new_figure((6, 7))
    image = axis.imshow(metrics[-1]["probabilities"], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axis.set(xticks=range(operations.NUM_OPS), yticks=range(operations.NUM_SEARCHABLE_LAYERS),
             yticklabels=range(1, operations.NUM_LAYERS), ylabel="layer", title=f"op probabilities, epoch {epochs[-1]}")
    axis.set_xticklabels(operations.SEARCHABLE_OPS, rotation=45, ha="right")
    figure.colorbar(image, ax=axis)
    save_figure(figure, os.path.join(save_dir, PROBABILITIES_FIGURE))


# ---------------------------------------------------------------------- main


def search_worker(args):
    """One process of the search (all processes run it)."""
    context = init_distributed(args.device_type)
    try:
        run(args, context)
    finally:
        cleanup_distributed()


@dataclasses.dataclass
class SearchRecord:
    """What a search keeps between epochs besides its Searcher: the run's
    settings, cost predictor, datasets and loaders, and (main process)
    its log, metrics and plot clock."""

    args: argparse.Namespace
    predictor: object
    train_set: torch.utils.data.Dataset
    arch_set: torch.utils.data.Dataset
    train_loader: torch.utils.data.DataLoader
    arch_loader: torch.utils.data.DataLoader
    logger: object
    metrics: MetricsFile = None  # main process only
    figures: RedrawClock = dataclasses.field(default_factory=RedrawClock)


def run(args, context):
    """The search in this process; returns its Searcher (alpha, lambda and
    the supernet as this process ended them)."""
    share_cpu_threads(context)
    searcher, record, start_epoch = set_up_search(args, context)
    for epoch in range(start_epoch, args.epochs):
        row = search_epoch(searcher, record, epoch)
        stop_here = (args.stop_after_epoch is not None and args.stop_after_epoch <= epoch + 1 < args.epochs)
        if context.is_main:
            record_search_epoch(record, searcher, row, stop_here)
        log_search_epoch(record, row)
        if stop_here:
            record.logger.info(f"stopped after epoch {epoch + 1} as asked; continue with "
                               f"--resume {os.path.join(args.save, CHECKPOINT_NAME)}")
            return searcher
    if context.is_main:
        report_architecture(record, searcher)
    return searcher


def set_up_search(args, context):
    """Datasets, predictor and Searcher (restored on --resume), checked
    before anything is written; then args.json, the log and the loaders.
    Returns (searcher, record, first epoch)."""
    if args.dataset is None:
        args.dataset = data.synthetic_dataset_once(context, **DEMO_DATASET)
    predictor = latency_predictor.load_predictor(args.lut, metric=args.metric)
    train_set, arch_set, classes = build_datasets(args)
    fingerprint = {"weights": data.dataset_fingerprint(train_set), "alpha": data.dataset_fingerprint(arch_set)}
    seed_everything(args.seed)  # the same initial weights and alpha on every process
    searcher = Searcher(args, context, predictor, len(classes), fingerprint)
    seed_everything(args.seed + context.rank)  # then each its own augmentation and dropout
    start_epoch = 0
    resume_path, checkpoint = resolve_resume_path(args.resume), None
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path, what="--resume")
        with damaged_checkpoint_refused(resume_path):
            check_resume_compatible(checkpoint, args, predictor, fingerprint, resume_path)
            start_epoch = searcher.restore(checkpoint)
        check_finite_state(searcher, resume_path)
        if checkpoint["epoch"] == args.freeze_epochs:
            searcher.state = SearchState(tradeoff=args.tradeoff)  # a search from the warm-up starts a fresh lambda
    # Read (and checked against the checkpoint) before anything is written: a refused resume leaves the kept
    # run's args.json and log.txt as they were.
    metrics = (run_metrics_file(os.path.join(args.save, METRICS_NAME), start_epoch, resume_path, checkpoint)
               if context.is_main else None)
    if metrics is not None and start_epoch > args.freeze_epochs:
        check_lambda_matches_its_row(searcher.state.tradeoff, metrics.rows, start_epoch, resume_path)
    # Only now, every check passed, does the run write into --save (only the
    # main process writes; the others only read args.save): args.json
    # always describes the run that continues or starts here.
    if context.is_main:
        os.makedirs(args.save, exist_ok=True)
        write_json(os.path.join(args.save, ARGS_NAME), vars(args))
    logger = run_logger(context, args.save, "search")
    if resume_path is not None:
        logger.info(f"resumed from {resume_path} at epoch {start_epoch}")
    record = SearchRecord(
        args, predictor, train_set, arch_set,
        train_loader=data.seeded_loader(train_set, args.batch_size_train // context.world_size, args.seed, context,
                                        args.workers, what="the weights' split"),
        arch_loader=data.seeded_loader(arch_set, args.batch_size_val // context.world_size, args.seed + 1, context,
                                       args.workers, what="alpha's split"),
        logger=logger,
        metrics=metrics)
    alpha_images = ("val/" if args.arch_split_from_train is None
                    else f"{100 * args.arch_split_from_train:g}% of train/")
    logger.info(f"searching {args.epochs} epochs ({args.freeze_epochs} warm-up) on {len(classes)} classes, "
                f"{len(train_set)} images for the weights / {len(arch_set)} for alpha ({alpha_images}) "
                f"at {args.image_size} px, eta {args.eta:g} ({args.eta_decay}), "
                f"{context.world_size} process(es) on {context.device.type}; "
                f"target {args.target_latency:g} {predictor.unit} on {predictor.identifier}, {args.penalty} penalty")
    return searcher, record, start_epoch


def search_epoch(searcher, record, epoch):
    """One epoch, every process: the weights' pass, then (after the
    warm-up) alpha's; stops a diverged search. Returns the metrics row."""
    args = record.args
    started = time.time()
    tau, eta = tau_at(epoch, args), eta_at(epoch, args)
    weight_lr = searcher.weight_optimizer.param_groups[0]["lr"]
    warmup = epoch < args.freeze_epochs
    record.train_loader.sampler.set_epoch(epoch)
    train_loss, train_top1 = searcher.train_weights(record.train_loader, epoch, tau, eta, warmup)
    steps = constraint.new_step_log()
    if warmup:
        val_loss = val_top1 = None
        arch_lr = scheduled_arch_lr(args.freeze_epochs, args)
    else:
        record.arch_loader.sampler.set_epoch(epoch)
        val_loss, val_top1, arch_lr = searcher.train_alpha(record.arch_loader, epoch, tau, eta, steps)
    stop_if_diverged(epoch, train_loss, val_loss, searcher, args)
    searcher.weight_scheduler.step()
    process_states = search_state_per_process(searcher, searcher.context)
    return {
        "epoch": epoch + 1, "tau": tau, "eta": eta, "tradeoff": searcher.state.tradeoff, "arch_lr": arch_lr,
        "weight_lr": weight_lr, "latched": searcher.state.latched,
        "train_loss": train_loss, "train_top1": train_top1, "val_loss": val_loss, "val_top1": val_top1,
        "arch_config": searcher.model.derive(), "cost": searcher.argmax_cost(),
        "expected_cost": searcher.expected_cost(),
        "target": args.target_latency, "steps": steps, "probabilities": searcher.model.op_probabilities().tolist(),
        "seconds": time.time() - started, "process_states": process_states,
    }


def record_search_epoch(record, searcher, row, stop_here):
    """Main process, after each epoch: the metrics row, then the checkpoint
    (and, at the warm-up's end, its copy warmup.pth.tar), then the plots."""
    args, epoch = record.args, row["epoch"] - 1
    record.metrics.append(row)
    save_checkpoint(searcher.checkpoint(epoch, record.metrics.rows), os.path.join(args.save, CHECKPOINT_NAME))
    if epoch + 1 == args.freeze_epochs:
        save_checkpoint_again(os.path.join(args.save, CHECKPOINT_NAME), os.path.join(args.save, WARMUP_CHECKPOINT_NAME))
    if record.figures.due(last=epoch + 1 == args.epochs or stop_here):
        write_plots(args.save, record.metrics.rows, record.predictor, args.target_latency)


def log_search_epoch(record, row):
    args = record.args
    accuracy_text = "" if row["val_loss"] is None else f" | val loss {row['val_loss']:.3f} top-1 {row['val_top1']:.1f}"
    penalty_text = (f"w {args.penalty_weight:g} (fixed)" if args.penalty == "fixed"
                    else f"lambda {row['tradeoff']:.4f}")
    record.logger.info(f"epoch {row['epoch']}/{args.epochs} | tau {row['tau']:.3f} | {penalty_text} | "
                       f"train loss {row['train_loss']:.3f} top-1 {row['train_top1']:.1f}{accuracy_text} | "
                       f"arch {describe_cost(record.predictor, row['cost'], args.target_latency)} | "
                       f"{row['seconds']:.0f} s")


def report_architecture(record, searcher):
    """Main process, after the last epoch: arch.json and its lines in the log."""
    args, predictor, logger = record.args, record.predictor, record.logger
    result = write_arch_json(args, searcher, predictor, record.train_set, record.arch_set)
    logger.info(f"architecture: {result['arch_config']}")
    if "pick" in result:
        logger.info(describe_pick(result["pick"], predictor, args.target_latency))
    if "raw_argmax" in result and "pick" not in result:
        logger.info(describe_projection(result, predictor, args.target_latency))
    logger.info(f"predicted: {describe_cost(predictor, result['predicted'], args.target_latency)}; "
                f"written to {os.path.join(args.save, 'arch.json')}")


def describe_projection(result, predictor, target):
    """--land_within / --strict / --skip_majority: how the final
    architecture differs from the raw argmax, in one line."""
    line = (f"raw argmax: {describe_cost(predictor, result['raw_argmax']['predicted'], target)}; projected into "
            f"[{result['band'][0]:.2f}, {result['band'][1]:.2f}] by changing layer(s) "
            f"{result['changed_layers'] or 'none'}, giving up {result['log_probability_given_up']:.3f} in "
            "log-probability")
    if "minority_skips_kept_out" in result:
        return line + (f"; skips alpha gives less than half kept out of layer(s) "
                       f"{result['minority_skips_kept_out'] or 'none'} (--skip_majority)")
    return line + " (--land_within/--strict)"


def divergence(train_loss, val_loss, searcher):
    """(what stopped being finite or exploded, the options most likely at
    fault), or None while the losses, alpha and lambda are all sane."""
    if loss_exploded(train_loss, searcher.num_classes):  # NaN too
        return f"the weights' loss is {train_loss:g}", "--learning_rate, --grad_clip or --eta"
    if val_loss is not None and loss_exploded(val_loss, searcher.num_classes):
        return f"alpha's loss is {val_loss:g}", "--tau_decay, --eta or --arch_learning_rate"
    if not torch.isfinite(searcher.model.alpha).all():
        return "alpha holds a value that is not finite", "--arch_learning_rate"
    if not math.isfinite(searcher.state.tradeoff):
        return f"lambda is {searcher.state.tradeoff}", "--tradeoff_learning_rate"
    broken = non_finite_entries(searcher.model.state_dict())  # a loss can stay finite while a statistic overflows
    if broken:
        return f"not finite: {name_a_few(broken)}", "--learning_rate, --grad_clip or --eta"
    return None


def check_finite_state(searcher, resume_path):
    """A checkpoint whose weights, alpha or lambda are not finite cannot be
    resumed: every step from it would be NaN too."""
    found = divergence(0.0, None, searcher)
    if found is not None:
        raise UserError(f"--resume {resume_path}: {found[0]} in this checkpoint; it cannot be resumed: "
                        "start from an earlier checkpoint or from scratch")


def check_lambda_matches_its_row(tradeoff, rows, epoch, resume_path):
    """A search checkpoint's lambda is the one its epoch's metrics row logged
    just before it was written; one that differs was edited (a lambda of
    1e11 would throw alpha to the cheapest ops in one step)."""
    row = rows[-1] if rows and rows[-1]["epoch"] == epoch else None
    if row is not None and is_finite_number(row.get("tradeoff")) and row["tradeoff"] != tradeoff:
        raise UserError(f"--resume {resume_path}: its lambda is {tradeoff:g}, but its epoch {epoch} logged "
                        f"{row['tradeoff']:g} just before it was written: one of the two was edited; resume from "
                        "another checkpoint or start again")


def stop_if_diverged(epoch, train_loss, val_loss, searcher, args):
    """Stop a search whose numbers are no longer finite, before this epoch
    is checkpointed and before any architecture is written: a diverged
    search claims no result."""
    found = divergence(train_loss, val_loss, searcher)
    if not any_process_diverged(found is not None, searcher.context.device):
        return
    what, options = found or ("another process's numbers are not finite", "--learning_rate or --grad_clip")
    checkpoint = os.path.join(args.save, CHECKPOINT_NAME)
    last = (f"; the last finite state (epoch {epoch}) is in {checkpoint}"
            if epoch > 0 and os.path.isfile(checkpoint) else "")
    raise UserError(f"the search diverged in epoch {epoch + 1}: {what}; check {options}{last}. "
                    "No architecture was written")


def check_save_folder(args):
    """Refuse to overwrite another search unless it is being resumed, and to
    write into a folder that holds other files (the shipped tables, a
    dataset, the repository): the search's log and figures would land among
    them."""
    existing = os.path.join(args.save, CHECKPOINT_NAME)
    resuming_here = args.resume is not None and os.path.abspath(resolve_resume_path(args.resume)) == \
        os.path.abspath(existing)
    if os.path.exists(existing) and not resuming_here:
        held = describe_saved_run(existing)
        if held != RUN_DESCRIPTIONS["search"]:
            raise UserError(f"--save {args.save} holds {held}, not a search: choose another --save")
        raise UserError(f"--save {args.save} already holds a search; continue it with --resume {existing} "
                        "or choose another --save")
    refuse_save_inside_dataset(args.save, args.dataset)
    # Resuming here (from its checkpoint or its warm-up's), the earlier results are this search's own.
    own_warmup = args.resume is not None and os.path.abspath(resolve_resume_path(args.resume)) == \
        os.path.abspath(os.path.join(args.save, WARMUP_CHECKPOINT_NAME))
    refuse_files_of_others_or_earlier_runs(args.save, "search", OUTPUT_NAMES,
                                           () if resuming_here or own_warmup else (ARCH_NAME, METRICS_NAME))


def check_options_apply(args):
    """An option set to another value than its schedule's for a mechanism
    that is off would be ignored in silence; refuse it instead (a tool that
    passes a whole schedule on may repeat the schedule's values)."""
    given = {name for name in SCHEDULES[args.schedule] if getattr(args, name) != SCHEDULES[args.schedule][name]}
    if "eta_floor" in given and args.eta_decay == "none":
        raise UserError(f"--eta_floor {args.eta_floor:g} is where --eta_decay lowers eta to, and --eta_decay is none; "
                        "add --eta_decay linear or late, or drop --eta_floor")
    eta_settings = sorted(given & {"eta_decay", "eta_floor", "eta_layers", "eta_pooling"})
    if eta_settings and args.eta == 0:
        raise UserError(f"--{eta_settings[0]} shapes the eta paths, and --eta is 0 (there are none); give --eta, "
                        f"or drop --{eta_settings[0]}")
    if args.penalty == "fixed" and args.tradeoff != 0:
        raise UserError(f"--tradeoff {args.tradeoff:g} is lambda's start, and --penalty fixed has no lambda; "
                        "drop it")
    lagrange_settings = sorted(given & set(LAGRANGE_ONLY_SETTINGS))
    if args.penalty == "fixed" and lagrange_settings:
        raise UserError(f"--{lagrange_settings[0]} sets lambda's step or the latch, and --penalty fixed has neither; "
                        f"drop --{lagrange_settings[0]}")
    if "hold_lambda" in given and args.latch != "hold":
        raise UserError(f"--hold_lambda applies to --latch hold only (this search latches with --latch {args.latch}); "
                        "drop it or add --latch hold")


def main(args):
    if args.save is None:  # a resumed search continues in its own folder, not in a new search-demo/
        args.save = os.path.dirname(os.path.abspath(resolve_resume_path(args.resume))) if args.resume else "search-demo"
    resolve_schedule(args)
    validate_settings(args)
    check_options_apply(args)
    args.device_type = resolve_device_type(args)
    for name in ("batch_size_train", "batch_size_val"):
        if getattr(args, name) % args.gpus:
            raise UserError(f"--{name} {getattr(args, name)} must be divisible by --gpus {args.gpus}")
    predictor = latency_predictor.load_predictor(args.lut, metric=args.metric)
    check_target(predictor, args.target_latency)
    if args.dataset is not None:
        build_datasets(args)  # a wrong --dataset fails now, before --save is touched (a scan of the folders)
    if (args.resume is not None and os.path.isdir(args.resume)
            and not os.path.isfile(resolve_resume_path(args.resume))):
        if not any(os.path.isfile(os.path.join(args.resume, name)) for name in (ARGS_NAME, LOG_NAME)):
            raise UserError(f"--resume: {args.resume} is a folder no search ran in (no {CHECKPOINT_NAME}); give a "
                            "search's folder or checkpoint")
        warmup = os.path.join(args.resume, WARMUP_CHECKPOINT_NAME)
        if os.path.isfile(warmup):
            raise UserError(f"--resume: {args.resume} holds no {CHECKPOINT_NAME}, only its warm-up's; continue from "
                            f"that with --resume {warmup}")
        raise UserError(f"--resume: {args.resume} holds no {CHECKPOINT_NAME} yet (the search stopped before its "
                        f"first epoch ended): nothing to resume; delete {args.resume} and start the search again "
                        "without --resume, or start it into another --save")
    if args.resume is not None:
        check_regular_file(resolve_resume_path(args.resume), "--resume:")
    if args.resume is not None:  # a wrong file fails now, before --save is touched
        resume_path = resolve_resume_path(args.resume)
        checkpoint = load_checkpoint(resume_path, what="--resume")
        check_search_checkpoint(checkpoint, resume_path)
        check_resume_dataset_given(checkpoint, args, resume_path)
    with run_folder_lock(args.save, checkpoint=CHECKPOINT_NAME):
        check_save_folder(args)
        resumable_at(os.path.join(args.save, CHECKPOINT_NAME))
        launch(search_worker, args, args.gpus)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
