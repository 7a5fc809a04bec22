"""The short from-scratch retraining the benchmarks use as evidence.

A searched network is only worth its accuracy after training from scratch.
The paper retrains for 360 epochs on ImageNet; the CPU benchmarks
(benchmarks/search_quality.py, reproduce_tables.py) cannot, so they retrain
every network they compare with one short recipe (SHORT_RECIPE, about
2.5 minutes per network on one core) on a larger version of the demo's
synthetic set (RETRAIN_DATASET), through `train_imagenet.py` itself, one
process per network and one thread each (several single-threaded runs use
a small CPU far better than one run on all cores).

A finished retraining is kept: its folder holds `metrics.jsonl` with one
line per epoch and, once complete, the command that ran it; a rerun of the
same command reads it instead of training again.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

import data
import utils
from utils import UserError, read_json_lines

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
_CHILDREN = set()  # processes run_logged is waiting for, on any thread
_CHILDREN_LOCK = threading.Lock()
# Set while a group of jobs is being stopped: a job thread that reaches
# run_logged then starts no child (one started just after the others were
# terminated would otherwise run to its end, a whole search, unwatched).
_STOPPING = threading.Event()

# Measured on the synthetic set at 32 px (LightNet-24ms, one thread each, 2 cores;
# docs/results.md, "The retraining proxy"). Three changes from the first
# recipe (batch 16, lr 0.05, dropout 0.2, 40 epochs of 600 images, which ended at
# 25-54% with 5.5 points between two seeds of one network):
# - residual blocks start as the identity (zero_init_residual): without it the
#   22-block network sits at the chance loss for several epochs at 32 px and
#   climbs out, loss spiking to 3-4.5, at a time that depends on the seed;
# - no dropout before the head: 10 classes do not need it, and it slowed the fit;
# - batch 64 (1.5-2x the images per second of batch 16 on one thread) over a
#   larger set, 5,000 training images, and 2,000 validation images so that
#   one image is 0.05 points.
# SGD, 3 warm-up epochs then cosine, label smoothing 0.1, resize+flip
# augmentation (random-resized crops of 32 px images of small objects cut the
# object out). Not the paper's recipe: a CPU-sized proxy.
SHORT_RECIPE = {"epochs": 16, "batch_size": 64, "lr": 0.05, "warmup_epochs": 3, "image_size": 32,
                "augment": "flip", "dropout": 0.0, "zero_init_residual": True}
# The synthetic set the recipe trains on (data.synthetic_dataset parameters).
# Images are seeded one by one, so the search demo's images (60 train and 30
# val per class, same seed) are a subset of these, each in the same split.
RETRAIN_DATASET = {"train_per_class": 500, "val_per_class": 200, "image_size": 32}

# Upper bounds of the benchmarks' counts: each seed or search is a run of
# minutes, so a count past these is a typo, not a plan (and would first build
# a list of that many jobs).
MAX_SEEDS = 100
MAX_NETS = 1_000  # random networks, each retrained: a thousand take days on a CPU
MAX_SEARCHES = 100


def retraining_dataset():
    """The folder of the recipe's synthetic set, generated on first use."""
    return data.synthetic_dataset(**RETRAIN_DATASET)


def run_logged(command, log_path, threads=None):
    """Run a project script with its output into `log_path`; a failure
    raises a UserError quoting the log's last line. The child is known to
    `terminate_children` while it runs."""
    environment = utils.step_environment()
    if threads is not None:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path, "w") as log:
        with _CHILDREN_LOCK:
            if _STOPPING.is_set():
                raise UserError(f"{os.path.basename(command[1])} not started: the run is stopping")
            # In the user's folder: relative paths they gave (--out, --lut, ...) mean there what they meant to them.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
            _CHILDREN.add(process)
        try:
            returncode = process.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(process)
    if returncode != 0:
        raise UserError(f"{' '.join(os.path.basename(part) for part in command[1:3])} failed "
                        f"(exit {returncode}): {last_line(log_path)} (log: {log_path})")


def last_line(path):
    """The last non-empty line of a log (progress bars redraw with \\r)."""
    with open(path, errors="replace") as file:
        lines = [line.strip() for line in file.read().replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def terminate_children():
    """Stop every child `run_logged` is waiting for, and let none start
    until `run_in_parallel` has seen its threads end."""
    with _CHILDREN_LOCK:
        _STOPPING.set()
        for process in _CHILDREN:
            process.terminate()


def run_in_parallel(work, items, parallel, on_done=None):
    """`work(item)` for every item, `parallel` at a time on threads whose
    work runs `run_logged` children; the results in the items' order, and
    `on_done(item, result)` on this thread as each finishes. The first
    failure (or an interrupt) stops the children still running, starts no
    more, and is raised."""
    pool = ThreadPoolExecutor(parallel)
    futures = {pool.submit(work, item): index for index, item in enumerate(items)}
    results = [None] * len(items)
    try:
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_done is not None:
                on_done(items[index], results[index])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        terminate_children()
        pool.shutdown(wait=True)
        _STOPPING.clear()
    return results


def stop_children_on_sigterm():
    """On SIGTERM (or another of utils.STOPPING_SIGNALS: SIGHUP, SIGQUIT,
    ...), stop the children of `run_logged`, then raise utils.Terminated in
    the main thread (run_cli exits with status 143), so that its `finally`
    blocks stop any other children too; none is left running and writing
    after its parent is gone."""
    def stop(signum, frame):
        terminate_children()
        raise utils.Terminated()

    for number in utils.signals_to_take_over():
        signal.signal(number, stop)


# Written last (the run it describes is complete), sealed over the run's
# command and its metrics: a kept run edited since is run again, not read.
COMMAND_FILE = "retrain_command.json"


def finished_records(folder, command, epochs):
    """The per-epoch records of a complete retraining run with `command`
    (its options; the interpreter's path aside) and `epochs` epochs, else
    None (also for files cut short or edited since)."""
    path = os.path.join(folder, COMMAND_FILE)
    if not os.path.isfile(path):
        return None
    try:
        kept = utils.read_sealed_json(path, "")
        records = read_json_lines(os.path.join(folder, "metrics.jsonl"))
    except utils.UserError:  # cut short or edited: not known to be complete, so run again
        return None
    if kept != kept_run(command, records):
        return None
    complete = len(records) == epochs and utils.is_finite_number(records[-1].get("val_top1"))
    return records if complete else None


def kept_run(command, records):
    """What COMMAND_FILE holds for a run of `command` (the interpreter's path
    aside, as it differs between machines) that logged `records`."""
    return {"command": command[1:], "metrics": utils.content_digest(records)}


def retrain_command(arch_config, folder, dataset, seed, recipe):
    return ([sys.executable, os.path.join(REPO_ROOT, "train_imagenet.py"), "--save", folder, "--dataset", dataset,
            "--arch_config", json.dumps(arch_config), "--seed", str(seed), "--workers", "0",
            "--epochs", str(recipe["epochs"]), "--batch_size", str(recipe["batch_size"]), "--lr", str(recipe["lr"]),
            "--warmup_epochs", str(recipe["warmup_epochs"]), "--image_size", str(recipe["image_size"]),
            "--augment", recipe["augment"], "--dropout", str(recipe["dropout"]), "--channels_last"]
            + (["--zero_init_residual"] if recipe["zero_init_residual"] else []))


def retrain(arch_config, folder, dataset, seed, **recipe_changes):
    """Final val top-1 of `arch_config` retrained from scratch into `folder`
    with SHORT_RECIPE, changed by `recipe_changes` (epochs=1, ...), its log
    beside it (`folder`.log); a finished run is reused, an interrupted one
    started again."""
    recipe = dict(SHORT_RECIPE, **recipe_changes)
    # The command keys the kept run: one folder or dataset spelt another way (relative, a trailing slash) is
    # the same run.
    folder, dataset = os.path.abspath(folder), os.path.abspath(dataset)
    command = retrain_command(arch_config, folder, dataset, seed, recipe)
    records = finished_records(folder, command, recipe["epochs"])
    if records is None:
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
        run_logged(command, folder + ".log", threads=1)
        records = read_json_lines(os.path.join(folder, "metrics.jsonl"))
        if len(records) != recipe["epochs"]:
            raise UserError(f"retraining in {folder} ended without {recipe['epochs']} epochs of metrics "
                            f"(log: {folder}.log)")
        utils.write_sealed_json(os.path.join(folder, COMMAND_FILE), kept_run(command, records))
    return records[-1]["val_top1"]


if __name__ == "__main__":
    utils.refuse_running_a_library("retraining.py", "the benchmarks retrain through it (benchmarks/search_quality.py, "
                                   "benchmarks/ground_truth.py); to train one network, run train_imagenet.py")
