"""Do distributed CPU runs share the machine's cores sensibly? The same small
training run, timed in three layouts on this machine:

1. one process (all cores);
2. two loopback "nodes" (`torchrun --nnodes 2 --nproc_per_node 1`, both on
   127.0.0.1) as the scripts set them up: processes on one host share its
   cores (utils.share_cpu_threads counts them by host name);
3. the same two nodes with every process taking all cores
   (OMP_NUM_THREADS = cores), which is what a node that does not know of the
   other would do.

Two processes on one machine cannot beat one; the figure is how much the
sharing saves over oversubscribing.

    python3 benchmarks/distributed_threads.py          # about 2 minutes on a 2-core CPU
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import data  # noqa: E402
from utils import UserError, run_cli  # noqa: E402

TRAIN_SCRIPT = os.path.join(REPO_ROOT, "train_imagenet.py")
DATASET = dict(num_classes=4, train_per_class=32, val_per_class=4, image_size=32, seed=0)
RUN = ["--arch_config", "LightNet-24ms", "--device", "cpu", "--image_size", "32", "--batch_size", "16",
       "--workers", "0", "--lr", "0.05"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def train_command(launcher, save, dataset, epochs):
    return ([sys.executable, "-m", "torch.distributed.run", *launcher, TRAIN_SCRIPT] if launcher
            else [sys.executable, TRAIN_SCRIPT]) + RUN + ["--dataset", dataset, "--save", save,
                                                          "--epochs", str(epochs)]


def timed(commands, environment):
    """Start every command at once; seconds until the last one ends."""
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=environment) for command in commands]
    for process in processes:
        _, errors = process.communicate()
        if process.returncode != 0:
            raise UserError(f"a timed run failed (exit {process.returncode}): {errors.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def two_nodes(save, dataset, epochs):
    """Both nodes' commands; they write one run folder (rank 0 writes)."""
    port = free_port()
    return [train_command(["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr",
                           "127.0.0.1", "--master_port", port], save, dataset, epochs)
            for rank in (0, 1)]


def get_args_parser():
    parser = argparse.ArgumentParser(description="Time one process against two loopback nodes on the CPU.")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run (default: 3)")
    return parser


def main(args):
    if args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    cores = os.cpu_count() or 1
    base = {name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as folder:
        dataset = str(data.write_synthetic_dataset(os.path.join(folder, "data"), **DATASET))
        layouts = [
            ("one process, all cores", [train_command(None, os.path.join(folder, "one"), dataset, args.epochs)],
             base),
            ("two loopback nodes, cores shared (the scripts' default)",
             two_nodes(os.path.join(folder, "shared"), dataset, args.epochs), base),
            (f"two loopback nodes, each taking all {cores} cores",
             two_nodes(os.path.join(folder, "oversubscribed"), dataset, args.epochs),
             dict(base, OMP_NUM_THREADS=str(cores))),
        ]
        seconds = []
        for label, commands, environment in layouts:
            seconds.append(timed(commands, environment))
            print(f"{label:<58} {seconds[-1]:7.1f} s  ({seconds[-1] / seconds[0]:.2f}x one process)", flush=True)
    print(f"sharing the cores makes two nodes on one machine {seconds[2] / seconds[1]:.2f}x faster than "
          f"oversubscribing them ({cores} logical CPUs, {args.epochs} epochs of "
          f"{DATASET['num_classes'] * DATASET['train_per_class']} images)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
