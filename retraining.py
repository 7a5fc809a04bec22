"""The short from-scratch retraining the benchmarks use as evidence.

A searched network is only worth its accuracy after training from scratch.
The paper retrains for 360 epochs on ImageNet; the CPU benchmarks
(benchmarks/search_quality.py, reproduce_tables.py) cannot, so they retrain
every network they compare with one short recipe on the demo's synthetic
data, through `train_imagenet.py` itself, one process per network and one
thread each (several single-threaded runs use a small CPU far better than
one run on all cores).

A finished retraining is kept: its folder holds `metrics.jsonl` with one
line per epoch, and a rerun of the same network and seed reads it instead
of training again.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

from utils import UserError, read_json_lines

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
_CHILDREN = set()  # processes run_logged is waiting for, on any thread
_CHILDREN_LOCK = threading.Lock()

# SGD with 3 warm-up epochs then cosine, batch 16, the search's 32 px images
# with resize+flip augmentation (random-resized crops of 32 px images of
# small objects cut the object out). Not the paper's recipe: a CPU-sized one.
SHORT_RECIPE = {"epochs": 40, "batch_size": 16, "lr": 0.05, "warmup_epochs": 3, "image_size": 32,
                "augment": "flip"}


def run_logged(command, log_path, threads=None):
    """Run a project script with its output into `log_path`; a failure
    raises a UserError quoting the log's last line. The child is known to
    `terminate_children` while it runs."""
    environment = dict(os.environ)
    if threads is not None:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)
        with _CHILDREN_LOCK:
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
    """Stop every child `run_logged` is waiting for."""
    with _CHILDREN_LOCK:
        for process in _CHILDREN:
            process.terminate()


def stop_children_on_sigterm():
    """On SIGTERM, stop the children of `run_logged` and exit with status
    143 by raising SystemExit in the main thread, so that its `finally`
    blocks stop any other children too; none is left running and writing
    after its parent is gone."""
    def stop(signum, frame):
        terminate_children()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def finished_records(folder, epochs):
    """The per-epoch records of a retraining that ran all `epochs`, else None."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    records = read_json_lines(path)
    return records if len(records) == epochs else None


def retrain_command(arch_config, folder, dataset, seed, epochs):
    recipe = dict(SHORT_RECIPE, epochs=epochs)
    return [sys.executable, os.path.join(REPO_ROOT, "train_imagenet.py"), "--save", folder, "--dataset", dataset,
            "--arch_config", json.dumps(arch_config), "--seed", str(seed), "--workers", "0",
            "--epochs", str(recipe["epochs"]), "--batch_size", str(recipe["batch_size"]), "--lr", str(recipe["lr"]),
            "--warmup_epochs", str(recipe["warmup_epochs"]), "--image_size", str(recipe["image_size"]),
            "--augment", recipe["augment"], "--channels_last"]


def retrain(arch_config, folder, dataset, seed, epochs=SHORT_RECIPE["epochs"]):
    """Final val top-1 of `arch_config` retrained from scratch into `folder`
    (its log beside it, `folder`.log); a finished run is reused, an
    interrupted one started again."""
    records = finished_records(folder, epochs)
    if records is None:
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
        run_logged(retrain_command(arch_config, folder, dataset, seed, epochs), folder + ".log", threads=1)
        records = finished_records(folder, epochs)
        if records is None:
            raise UserError(f"retraining in {folder} ended without {epochs} epochs of metrics (log: {folder}.log)")
    return records[-1]["val_top1"]
