"""What a supernet step costs next to one sampled standalone network.

A single-path supernet step should cost what the sampled network costs
(target ratio <= 1.15), and a warm-up step (7 paths covering every op) what 7
standalone steps cost. Steps are timed interleaved, A B A B ..., so machine
noise hits both sides alike; the median step time is reported. Peak memory
is the peak resident set (VmHWM) of a fresh process that builds only what one
kind of step needs and runs three of them.

    python3 benchmarks/search_step_cost.py --batch_size 16 --image_size 224 --steps 10
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import operations  # noqa: E402
import utils  # noqa: E402
from latency_timing import MAX_THREADS  # noqa: E402
from model_search import SuperNet, gumbel_softmax_hard, one_hot_paths, warmup_paths  # noqa: E402
from model_train import LightNet  # noqa: E402

NUM_CLASSES = 100


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=3e-5)


STEP_KINDS = ("standalone", "standalone_x7", "supernet", "warmup", "alpha")


def make_steps(batch_size, image_size, kinds, seed=0):
    """Step functions for `kinds` sharing one batch and one sampled path;
    only the networks those kinds need are built (so a process measuring
    peak memory holds nothing else)."""
    torch.manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size)
    targets = torch.randint(NUM_CLASSES, (batch_size,))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator().manual_seed(seed)
    path = torch.randint(operations.NUM_OPS, (operations.NUM_SEARCHABLE_LAYERS,), generator=generator)
    steps = {}

    if {"standalone", "standalone_x7"} & set(kinds):
        standalone = LightNet(operations.indices_to_arch(path.tolist()), num_classes=NUM_CLASSES).train()
        standalone_optimizer = sgd(standalone.parameters())

        def standalone_step():
            standalone_optimizer.zero_grad(set_to_none=True)
            criterion(standalone(images), targets).backward()
            standalone_optimizer.step()

        steps["standalone"] = standalone_step
        steps["standalone_x7"] = lambda: [standalone_step() for _ in range(operations.NUM_OPS)]
    if not {"supernet", "warmup", "alpha"} & set(kinds):
        return steps

    supernet = SuperNet(NUM_CLASSES).train()
    weight_optimizer = sgd(supernet.weight_parameters())
    alpha_optimizer = torch.optim.Adam(supernet.arch_parameters(), lr=1e-3, betas=(0.5, 0.999))

    def supernet_weight_step(paths=(path,)):
        weight_optimizer.zero_grad(set_to_none=True)
        for sampled in paths:
            criterion(supernet(images, one_hot_paths(sampled)), targets).backward()
        weight_optimizer.step()

    def supernet_alpha_step():
        for parameter in supernet.weight_parameters():
            parameter.requires_grad_(False)
        alpha_optimizer.zero_grad(set_to_none=True)
        sample = gumbel_softmax_hard(supernet.alpha, 5.0, generator)
        criterion(supernet(images, sample), targets).backward()
        alpha_optimizer.step()
        for parameter in supernet.weight_parameters():
            parameter.requires_grad_(True)

    steps["supernet"] = supernet_weight_step
    steps["warmup"] = lambda: supernet_weight_step(warmup_paths(generator))
    steps["alpha"] = supernet_alpha_step
    return steps


def timed_interleaved(functions, steps, warmup_steps=2):
    """Median seconds per call of each function, calls interleaved."""
    for _ in range(warmup_steps):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(steps):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mib(step_name, args):
    """Peak resident memory of a fresh process running 3 steps of one kind."""
    command = [sys.executable, os.path.abspath(__file__), "--measure_memory", step_name,
               "--batch_size", str(args.batch_size), "--image_size", str(args.image_size),
               "--threads", str(args.threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(output.strip().splitlines()[-1])


def measure_memory_in_this_process(step_name, args):
    if step_name not in STEP_KINDS:  # an internal option, but a user may still type it
        raise utils.UserError(f"--measure_memory must be one of {', '.join(STEP_KINDS)}, got {step_name!r}")
    step = make_steps(args.batch_size, args.image_size, [step_name])[step_name]
    for _ in range(3):
        step()
    print(peak_resident_mib())


def peak_resident_mib():
    """This process's peak resident memory. VmHWM belongs to the address
    space, which exec replaces; ru_maxrss would carry the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--image_size", type=int, default=224, help="input size in pixels (default: 224)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per kind (default: 10)")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--measure_memory", default=None, help=argparse.SUPPRESS)
    return parser


MAX_STEPS = 100_000

# Each numeric option: what it must be (utils.check_number_rules).
NUMBER_RULES = (
    (("batch_size",), lambda value: 2 <= value <= utils.MAX_BATCH_SIZE,
     f"in [2, {utils.MAX_BATCH_SIZE}] (BatchNorm needs two images)"),
    (("image_size",), lambda value: 32 <= value <= utils.MAX_IMAGE_SIZE,
     f"in [32, {utils.MAX_IMAGE_SIZE}] (the network downsamples 32x)"),
    (("steps",), lambda value: 1 <= value <= MAX_STEPS, f"in [1, {MAX_STEPS:,}]"),
    (("warmup_steps",), lambda value: 0 <= value <= MAX_STEPS, f"in [0, {MAX_STEPS:,}]"),
    (("threads",), lambda value: 1 <= value <= MAX_THREADS, f"in [1, {MAX_THREADS:,}]"),
)


def main(args):
    utils.check_number_rules(args, NUMBER_RULES)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        measure_memory_in_this_process(args.measure_memory, args)
        return
    print(f"batch {args.batch_size}, {args.image_size}x{args.image_size}, {args.threads} threads, "
          f"{args.steps} timed steps each, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    steps = make_steps(args.batch_size, args.image_size, ["standalone", "supernet", "alpha", "warmup"])
    single = timed_interleaved({name: steps[name] for name in ("standalone", "supernet", "alpha")},
                               args.steps, args.warmup_steps)
    warmup = timed_interleaved({name: steps[name] for name in ("standalone_x7", "warmup")},
                               max(2, args.steps // 3), 1)
    rows = [
        ("standalone network step", single["standalone"], None),
        ("supernet weight step (one path)", single["supernet"], single["supernet"] / single["standalone"]),
        ("supernet alpha step (one path)", single["alpha"], single["alpha"] / single["standalone"]),
        ("7 standalone steps", warmup["standalone_x7"], None),
        ("supernet warm-up step (7 paths)", warmup["warmup"], warmup["warmup"] / warmup["standalone_x7"]),
    ]
    print(f"{'step':<34} {'median s':>9} {'ratio':>7}")
    for name, seconds, ratio in rows:
        print(f"{name:<34} {seconds:>9.3f} {'' if ratio is None else f'{ratio:7.3f}':>7}")
    memory = {name: peak_memory_mib(name, args) for name in ("standalone", "supernet", "alpha", "warmup")}
    print(f"{'peak resident memory':<34} {'MiB':>9} {'ratio':>7}")
    for name, mib in memory.items():
        print(f"{name:<34} {mib:>9.0f} {mib / memory['standalone']:>7.2f}")


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
