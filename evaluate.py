"""Top-1/top-5 accuracy of a LightNet on a dataset's whole `val/` folder.

Loads the authors' released `.pth.tar` files (`{"state_dict": ...}` with
`module.` prefixes) and the project's own checkpoints, and evaluates with the
paper's transform (Resize 256, CenterCrop 224, ImageNet mean/std):

    python3 evaluate.py --model LightNet-20ms --weights LightNet-20ms.pth.tar \
        --dataset /path/to/imagenet --device cuda --batch_size 64

prints, like the authors' script, `Total: 50000  Top1-Acc: ...  Top5-Acc: ...`.
"""

import argparse
import os

import torch

import data
import model_train
from utils import (
    MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_WIDTH_MULT, MAX_WORKERS, UserError, all_reduce_sum, correct_counts,
    load_checkpoint, name_a_few, non_finite_entries, progress_bar, refuse_search_checkpoint, resolve_device, run_cli,
    state_dict_mismatch, strip_module_prefix,
)

CLASSIFIER_WEIGHT = "classifier.4.weight"  # its rows give num_classes
DEFAULT_IMAGE_SIZE = 224  # ImageNet evaluation: resize to 256, centre crop 224
MIN_IMAGE_SIZE = 32  # the network downsamples 32x


def checkpoint_state_dict(checkpoint, path):
    """The model weights inside a checkpoint, without wrapper prefixes.

    Accepts `{"state_dict": ...}` (released and project checkpoints) and a
    bare state_dict.
    """
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(value) for value in state_dict.values()):
        raise UserError(f"--weights: {path} holds no model state_dict")
    return strip_module_prefix(state_dict)


def weights_num_classes(state_dict, path, option):
    """The number of classes a LightNet state_dict predicts."""
    if CLASSIFIER_WEIGHT not in state_dict:
        raise UserError(f"{option}: {path} has no {CLASSIFIER_WEIGHT}; is it a LightNet checkpoint?")
    return state_dict[CLASSIFIER_WEIGHT].shape[0]


def check_dataset_classes(dataset, num_classes, option, recorded=None):
    """Weights and val/ must agree on the number of classes, and on their
    names where the weights record them (`recorded`; this project's
    best.pth.tar does, the released checkpoints do not)."""
    if len(dataset.classes) != num_classes:
        raise UserError(f"{option}: val/ has {len(dataset.classes)} classes but the weights predict "
                        f"{num_classes}; is this the dataset the network was trained on?")
    if recorded is None:
        return
    if not (isinstance(recorded, list) and len(recorded) == num_classes and all(isinstance(name, str)
                                                                               for name in recorded)):
        raise UserError(f"{option}: the weights' record of their class names is damaged (not {num_classes} names; "
                        "an edited file?)")
    if recorded != list(dataset.classes):
        now, then = data.first_renamed_class(recorded, list(dataset.classes))
        raise UserError(f"{option}: val/ holds other classes than the weights were trained on ({now!r} where they "
                        f"had {then!r}); is this the dataset the network was trained on?")


def load_weights(model, state_dict, path, option="--weights"):
    """Load weights strictly, turning a mismatch into one readable line."""
    mismatch = state_dict_mismatch(model, state_dict)
    if mismatch:
        raise UserError(f"{option}: {path} does not fit this architecture ({mismatch}); "
                        "check --model/--arch_config and --width_mult")
    broken = non_finite_entries(state_dict)
    if broken:
        raise UserError(f"--weights: {path} holds NaN or infinite values ({name_a_few(broken)}): the run that "
                        "wrote it diverged")
    model.load_state_dict(state_dict, strict=True)


@torch.no_grad()
def evaluate_counts(model, loader, device, progress=True):
    """Exact counts over the loader: (images, top-1 hits, top-5 hits)."""
    model.eval()
    total = top1 = top5 = 0
    for images, targets in progress_bar(loader, progress, desc="eval", unit="batch", leave=False):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        batch_top1, batch_top5 = correct_counts(model(images), targets, topk=(1, 5))
        total += targets.size(0)
        top1 += batch_top1
        top5 += batch_top5
    return total, top1, top5


class ShardSampler(torch.utils.data.Sampler):
    """This process's share of a dataset for exact distributed evaluation:
    indices rank, rank + world_size, ... The shards of all processes
    partition the dataset, with no padding and no index twice (unlike
    DistributedSampler, which repeats samples to even out the shards)."""

    def __init__(self, dataset_size, rank, world_size):
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def evaluate_counts_distributed(model, loader, device, progress=True):
    """`evaluate_counts` of this process's shard, summed over all processes:
    exact over the whole dataset when every loader samples with a
    ShardSampler. Every process must call it."""
    counts = torch.tensor(evaluate_counts(model, loader, device, progress), dtype=torch.int64, device=device)
    all_reduce_sum(counts)
    total, top1, top5 = counts.tolist()
    return total, top1, top5


def format_result(total, top1, top5):
    """The authors' output line, accuracies in percent."""
    return f"Total: {total}  Top1-Acc: {100.0 * top1 / total:.3f}  Top5-Acc: {100.0 * top5 / total:.3f}"


def get_args_parser():
    parser = argparse.ArgumentParser(description="Evaluate a LightNet on a dataset's val/ folder.")
    architecture = parser.add_mutually_exclusive_group()
    architecture.add_argument("--model", help="registered network, e.g. LightNet-20ms or LightNet-20ms-SE")
    architecture.add_argument("--arch_config", help="the list string \"['MBK3E1', ...]\" or a search's arch.json")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth.tar): released or the project's own")
    parser.add_argument("--dataset", required=True, help="folder holding val/ with one sub-folder per class")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda when available, else cpu")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="data-loading processes (default: min(8, CPU cores))")
    parser.add_argument("--image_size", type=int, default=None,
                        help="center-crop size; images are first resized to size/0.875 (default: the size the "
                             "checkpoint records it was trained at, else 224)")
    parser.add_argument("--width_mult", type=float, default=1.0, help="channel width multiplier (default: 1.0)")
    return parser


def recorded_image_size(checkpoint):
    """The image size a project checkpoint records it was trained at (None
    for released weights, which record none)."""
    size = checkpoint.get("image_size") if isinstance(checkpoint, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return None
    if size > MAX_IMAGE_SIZE:  # an edited file: taken at its word, the first batch would not fit in memory
        raise UserError(f"the checkpoint records an image size of {size} px, more than the {MAX_IMAGE_SIZE} this "
                        "project allows (an edited file?); give --image_size")
    return size


def recorded_crop_ratio(checkpoint):
    """The crop ratio a project checkpoint's own evaluation framed images
    with (1: the whole image, after flip-only training); None for released
    weights and older checkpoints, which record none."""
    ratio = checkpoint.get("eval_crop_ratio") if isinstance(checkpoint, dict) else None
    return float(ratio) if isinstance(ratio, (int, float)) and 0 < ratio <= 1 else None


def evaluate_weights(weights, dataset_root, arch_choice=None, device="cpu", batch_size=64, workers=0,
                     image_size=None, width_mult=1.0, progress=True):
    """Load `weights` into the network `arch_choice` (a name, list string or
    arch.json; None: the one the checkpoint records) and count exactly over
    `dataset_root`/val at `image_size` (None: the checkpoint's training size,
    else 224), framed as the checkpoint's own evaluation framed them (else
    the recipe's centre crop): (images, top-1 hits, top-5 hits)."""
    device = resolve_device(device)
    checkpoint = load_checkpoint(weights, what="--weights")
    refuse_search_checkpoint(checkpoint, weights, "--weights")
    state_dict = checkpoint_state_dict(checkpoint, weights)
    if arch_choice is None:
        recorded = checkpoint.get("arch_config") if isinstance(checkpoint, dict) else None
        if recorded is None:
            raise UserError("give --model or --arch_config: the checkpoint does not record its architecture")
        arch_config = model_train.recorded_arch_config(recorded, weights)
    else:
        arch_config = model_train.resolve_arch_config(arch_choice)
    if image_size is None:
        image_size = recorded_image_size(checkpoint) or DEFAULT_IMAGE_SIZE
    num_classes = weights_num_classes(state_dict, weights, "--weights")
    model = model_train.LightNet(arch_config, num_classes=num_classes, width_mult=width_mult)
    load_weights(model, state_dict, weights)

    crop_ratio = recorded_crop_ratio(checkpoint) or data.EVAL_CROP_RATIO
    dataset = data.image_folder(dataset_root, "val", data.build_eval_transform(image_size, crop_ratio))
    check_dataset_classes(dataset, num_classes, "--dataset", checkpoint.get("classes") if isinstance(checkpoint, dict)
                          else None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    return evaluate_counts(model.to(device), loader, device, progress)


def main(args):
    if not 0 < args.width_mult <= MAX_WIDTH_MULT:
        raise UserError(f"--width_mult must be in (0, {MAX_WIDTH_MULT:g}], got {args.width_mult}")
    if not (1 <= args.batch_size <= MAX_BATCH_SIZE and 0 <= args.workers <= MAX_WORKERS):
        raise UserError(f"--batch_size must be in [1, {MAX_BATCH_SIZE}] and --workers in [0, {MAX_WORKERS}]")
    if args.image_size is not None and not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"--image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (pixels)")
    counts = evaluate_weights(args.weights, args.dataset, args.model or args.arch_config, args.device,
                              args.batch_size, args.workers, args.image_size, args.width_mult)
    print(format_result(*counts))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
