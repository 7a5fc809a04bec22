"""Does train_imagenet.py keep the model fed? Training images/s of the
script's own loop (its DataLoader pipeline: decode, RandomResizedCrop, flip,
ColorJitter, normalise, in --workers processes) against a bare
forward/backward/step loop on one in-memory batch of the same images, for
the same network and batch, measured side by side in one run (the paper's
retraining recipe; LightNet-24ms).

Data: the project's synthetic dataset drawn at 256 px (PNG), cropped to
224 px as ImageNet images are; ImageNet's larger JPEGs cost a few ms more
to decode per image.

    python3 benchmarks/train_throughput.py --workers 2             # CPU
    python3 benchmarks/train_throughput.py --device cuda --batch_size 256 --steps 50 --workers 8
    python3 benchmarks/train_throughput.py --device cuda --batch_size 256 --steps 50 --workers 8 \\
        --amp bf16 --channels_last [--compile]

The script's loop runs two epochs of --steps steps; the first (loading
processes starting, kernels warming up) is not timed. The bare loop is timed
before and after it and averaged, which evens out a drifting machine load.
"""

import argparse
import math
import os
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import train_imagenet  # noqa: E402
import utils  # noqa: E402
from model_train import LightNet, resolve_arch_config  # noqa: E402

SOURCE_IMAGE_SIZE = 256  # the synthetic images, before the 224 px random-resized crop
NUM_CLASSES = 10


def get_args_parser():
    parser = argparse.ArgumentParser(description="train_imagenet.py's loop vs a bare in-memory loop")
    parser.add_argument("--arch_config", default="LightNet-24ms", help="(default: LightNet-24ms)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--image_size", type=int, default=224, help="training crop in px (default: 224)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    parser.add_argument("--bare_warmup_steps", type=int, default=3,
                        help="untimed steps before each bare measurement (default: 3)")
    parser.add_argument("--workers", type=int, default=2, help="loading processes of the script (default: 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: cpu)")
    parser.add_argument("--amp", choices=tuple(train_imagenet.AMP_DTYPES), default="none")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model (default: torch's, one per core)")
    parser.add_argument("--data_root", default=None,
                        help="where the synthetic set is cached (default: $LIGHTNAS_DATA or ~/.cache/lightnas)")
    return parser


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_memory_batch(dataset_root, args, device, memory_format):
    """One augmented training batch of real images, decoded once: the bare
    loop's input (real pixels, so the arithmetic is that of training)."""
    dataset = data.image_folder(dataset_root, "train", data.build_train_transform(args.image_size))
    images, targets = next(iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)))
    return images.to(device).contiguous(memory_format=memory_format), targets.to(device)


def bare_loop(model, images, targets, args, device):
    """images/s of forward, loss, backward and SGD step on one fixed batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    amp_dtype = train_imagenet.AMP_DTYPES[args.amp]
    for step in range(args.bare_warmup_steps + args.steps):
        if step == args.bare_warmup_steps:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return args.batch_size * args.steps / (time.perf_counter() - start)


def script_loop(dataset_root, args, save_dir):
    """images/s of train_imagenet.py's second epoch, its data-wait share, and
    images/s of its data pipeline alone (a third epoch, no model)."""
    script_args = train_imagenet.get_args_parser().parse_args([
        "--dataset", str(dataset_root), "--save", save_dir, "--arch_config", args.arch_config,
        "--batch_size", str(args.batch_size), "--image_size", str(args.image_size), "--epochs", "2",
        "--workers", str(args.workers), "--device", args.device, "--amp", args.amp,
        *(["--channels_last"] if args.channels_last else []), *(["--compile"] if args.compile else [])])
    train_imagenet.prepare(script_args)
    context = utils.init_distributed(script_args.device_type)
    loader = train_imagenet.build_train_loader(dataset_root, script_args, context)
    training = train_imagenet.setup_training(script_args, context, NUM_CLASSES, len(loader))
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        stats = train_imagenet.train_one_epoch(training, loader, epoch)
    loader.sampler.set_epoch(2)
    start = time.perf_counter()
    images = sum(batch_images.size(0) for batch_images, _ in loader)
    return stats, images / (time.perf_counter() - start)


def load_average():
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


# Each numeric option: what it must be (utils.check_number_rules).
NUMBER_RULES = (
    (("batch_size",), lambda value: 2 <= value <= utils.MAX_BATCH_SIZE,
     f"in [2, {utils.MAX_BATCH_SIZE}] (BatchNorm needs two images per batch)"),
    (("steps",), lambda value: 1 <= value <= utils.MAX_EPOCHS, f"in [1, {utils.MAX_EPOCHS}]"),
    (("image_size",), lambda value: 32 <= value <= utils.MAX_IMAGE_SIZE, f"in [32, {utils.MAX_IMAGE_SIZE}]"),
    (("bare_warmup_steps",), lambda value: 0 <= value <= utils.MAX_BATCH_SIZE, "non-negative"),
    (("workers",), lambda value: 0 <= value <= utils.MAX_WORKERS, f"in [0, {utils.MAX_WORKERS}]"),
    (("threads",), lambda value: value is None or 1 <= value <= utils.MAX_WORKERS, f"in [1, {utils.MAX_WORKERS}]"),
)


# The synthetic set holds one epoch, --batch_size x --steps images, made
# before anything is timed: about 30 s and 150 MB per thousand on one core.
MAX_EPOCH_IMAGES = 30_000


def main(args):
    utils.check_number_rules(args, NUMBER_RULES)
    if args.batch_size * args.steps > MAX_EPOCH_IMAGES:
        raise utils.UserError(f"--batch_size x --steps must be at most {MAX_EPOCH_IMAGES} images (the synthetic "
                              f"set holds one epoch), got {args.batch_size * args.steps}; take fewer --steps")
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise utils.UserError("--device cuda: no CUDA GPU is available")
    # One epoch of the script = exactly --steps batches.
    per_class = math.ceil(args.batch_size * args.steps / NUM_CLASSES)
    print(f"synthetic set: {per_class * NUM_CLASSES} images of {SOURCE_IMAGE_SIZE} px under {args.data_root or data.default_data_dir()} "
          "(made on first use, about 30 s per thousand, then reused)", flush=True)
    dataset_root = data.synthetic_dataset(args.data_root, num_classes=NUM_CLASSES, train_per_class=per_class,
                                          val_per_class=1, image_size=SOURCE_IMAGE_SIZE, seed=0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = LightNet(resolve_arch_config(args.arch_config), num_classes=NUM_CLASSES)
    model = model.to(device, memory_format=memory_format)
    bare_model = torch.compile(model) if args.compile else model

    print(f"{args.arch_config}, batch {args.batch_size}, {args.image_size} px, {args.steps} timed steps, "
          f"{device.type} ({torch.get_num_threads()} threads), amp {args.amp}, channels_last "
          f"{args.channels_last}, compile {args.compile}; load average at start {load_average()}", flush=True)
    images, targets = in_memory_batch(dataset_root, args, device, memory_format)
    bare_before = bare_loop(bare_model.train(), images, targets, args, device)
    with tempfile.TemporaryDirectory() as save_dir:
        stats, pipeline_rate = script_loop(dataset_root, args, os.path.join(save_dir, "run"))
    bare_after = bare_loop(bare_model.train(), images, targets, args, device)
    bare = (bare_before + bare_after) / 2

    print(f"bare loop (in-memory batch):           {bare:8.1f} images/s "
          f"(before {bare_before:.1f}, after {bare_after:.1f})")
    print(f"train_imagenet.py loop ({args.workers} workers):    {stats.images_per_second:8.1f} images/s "
          f"(waiting for data {100 * stats.data_wait:.1f}% of the epoch)")
    print(f"data pipeline alone ({args.workers} workers):  {pipeline_rate:8.1f} images/s")
    print(f"ratio script / bare: {stats.images_per_second / bare:.3f}; load average at end {load_average()}")


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
