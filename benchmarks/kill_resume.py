"""kill -9, then resume: does a resumed run end exactly where an
uninterrupted one does?

For a small search and a small training run (a 3-class synthetic set at
32 px, CPU) this script

1. runs each once without interruption (the reference);
2. runs each again in a fresh folder, killing it with SIGKILL --kills times:
   at random moments, and every other time while a checkpoint is being
   written over an earlier one (the moment a `.checkpoint.pth.tar.tmp-*`
   file appears);
3. after each kill restarts it the documented way: `--resume FOLDER` (search)
   or `--resume FOLDER/checkpoint.pth.tar` (training) once a checkpoint
   exists, the same command without it otherwise;
4. lets the last start finish, then compares it with the reference:
   every tensor of the final checkpoint (weights, alpha, optimizer states),
   lambda, the metrics of every epoch (wall-clock fields aside), and that no
   temporary file is left.

    python3 benchmarks/kill_resume.py                 # 6 kills per run, a few minutes on 2 cores
    python3 benchmarks/kill_resume.py --kills 10 --seed 3 --out kill-resume

Exit status 0 when both runs match their reference bitwise, 1 otherwise.
"""

import argparse
import glob
import os
import random
import signal
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import data  # noqa: E402
import utils  # noqa: E402

SEARCH_OPTIONS = ["--target_latency", "24", "--num_classes", "3", "--epochs", "10", "--freeze_epochs", "1",
                  "--latch_epochs", "3", "--arch_lr_step", "3", "--batch_size_train", "4", "--batch_size_val", "4",
                  "--image_size", "32", "--workers", "0", "--tradeoff_learning_rate", "0.05"]
TRAIN_OPTIONS = ["--arch_config", "LightNet-24ms", "--epochs", "6", "--batch_size", "8", "--image_size", "32",
                 "--workers", "0", "--warmup_epochs", "1", "--ema"]
WALL_CLOCK_FIELDS = {"seconds", "epoch_s", "images_per_s", "data_wait"}
CHECKPOINT = "checkpoint.pth.tar"


class Job:
    """One script, its options and how it resumes."""

    def __init__(self, name, script, options, resume_target):
        self.name, self.script, self.options, self.resume_target = name, script, options, resume_target

    def command(self, folder, dataset):
        command = [sys.executable, os.path.join(REPO, self.script), "--save", folder, "--dataset", dataset]
        command += self.options
        if os.path.isfile(os.path.join(folder, CHECKPOINT)):
            command += ["--resume", self.resume_target(folder)]
        return command


JOBS = (Job("search", "search_imagenet.py", SEARCH_OPTIONS, lambda folder: folder),
        Job("training", "train_imagenet.py", TRAIN_OPTIONS, lambda folder: os.path.join(folder, CHECKPOINT)))


def get_args_parser():
    parser = argparse.ArgumentParser(description="kill -9 and resume, compared with an uninterrupted run.")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs per run (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default: 0)")
    parser.add_argument("--out", default="kill-resume", help="working folder (default: kill-resume)")
    return parser


def start(job, folder, dataset):
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    log = open(folder + ".log", "a")
    return subprocess.Popen(job.command(folder, dataset), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=environment), log


def run_to_end(job, folder, dataset):
    process, log = start(job, folder, dataset)
    code = process.wait()
    log.close()
    if code != 0:
        raise utils.UserError(f"{job.name} in {folder} failed (exit {code}); see {folder}.log")
    return code


def checkpoint_temporaries(folder):
    return set(glob.glob(os.path.join(glob.escape(folder), f".{CHECKPOINT}.tmp-*")))


def kill_once(job, folder, dataset, rng, during_write, budget_s):
    """Start the job, kill it with SIGKILL (while a checkpoint is being
    written, or at a random moment within `budget_s`); returns what happened
    as one line, or None if it finished before being killed."""
    had_checkpoint = os.path.isfile(os.path.join(folder, CHECKPOINT))
    left_by_earlier_kills = checkpoint_temporaries(folder)

    def being_written():  # a temporary file of this start's own, replacing an existing checkpoint
        return (bool(checkpoint_temporaries(folder) - left_by_earlier_kills)
                and os.path.isfile(os.path.join(folder, CHECKPOINT)))

    process, log = start(job, folder, dataset)
    started = time.time()
    deadline = started + (budget_s if during_write else rng.uniform(1.0, budget_s / 2))
    while process.poll() is None and time.time() < deadline:
        if during_write and being_written():
            break
        time.sleep(0.0005 if during_write else 0.01)
    if process.poll() is not None:
        log.close()
        return None
    in_write = being_written()
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    epochs_done = len(utils.read_json_lines(os.path.join(folder, "metrics.jsonl")))
    return (f"killed after {time.time() - started:4.1f} s ({'resumed' if had_checkpoint else 'fresh'} start)"
            f"{', mid checkpoint write' if in_write else ''}; {epochs_done} epoch(s) recorded")


def differences(reference_folder, resumed_folder):
    """What differs between the two runs' final state (empty: identical)."""
    problems = []
    reference = utils.load_checkpoint(os.path.join(reference_folder, CHECKPOINT))
    resumed = utils.load_checkpoint(os.path.join(resumed_folder, CHECKPOINT))
    problems += compare(reference, resumed, "checkpoint")
    reference_rows = utils.read_json_lines(os.path.join(reference_folder, "metrics.jsonl"))
    resumed_rows = utils.read_json_lines(os.path.join(resumed_folder, "metrics.jsonl"))
    strip = [{key: value for key, value in row.items() if key not in WALL_CLOCK_FIELDS} for row in reference_rows]
    if strip != [{key: value for key, value in row.items() if key not in WALL_CLOCK_FIELDS} for row in resumed_rows]:
        problems.append("metrics.jsonl differs")
    leftovers = glob.glob(os.path.join(glob.escape(resumed_folder), ".*.tmp-*"))
    if leftovers:
        problems.append(f"temporary files left: {', '.join(os.path.basename(path) for path in leftovers)}")
    return problems


def compare(a, b, where):
    """Bitwise comparison of nested checkpoint contents; the saved options
    differ only in --resume and --save, which are skipped."""
    if isinstance(a, dict) and isinstance(b, dict):
        if where.endswith(".args"):
            a, b = ({key: value for key, value in side.items() if key not in ("resume", "save")} for side in (a, b))
        if set(a) != set(b):
            return [f"{where}: keys differ"]
        return [problem for key in a for problem in compare(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths differ"]
        return [problem for index, (x, y) in enumerate(zip(a, b)) for problem in compare(x, y, f"{where}[{index}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def chaos(job, dataset, args, rng):
    """The reference run, then the killed-and-resumed one; prints both."""
    reference = os.path.join(args.out, f"{job.name}-reference")
    started = time.time()
    run_to_end(job, reference, dataset)
    reference_s = time.time() - started
    print(f"\n{job.name}: uninterrupted run {reference_s:.0f} s", flush=True)
    folder = os.path.join(args.out, f"{job.name}-killed")
    kills = 0
    while kills < args.kills:
        outcome = kill_once(job, folder, dataset, rng, during_write=kills % 2 == 1, budget_s=0.8 * reference_s)
        if outcome is None:  # finished before the kill: nothing left to interrupt
            break
        kills += 1
        print(f"  kill {kills}: {outcome}", flush=True)
    run_to_end(job, folder, dataset)  # the last start runs to the end
    problems = differences(reference, folder)
    verdict = "identical to the uninterrupted run (bitwise)" if not problems else "DIFFERS: " + "; ".join(problems)
    print(f"  after {kills} kills and resumes: {verdict}", flush=True)
    return not problems


def main(args):
    if args.kills < 1:
        raise utils.UserError("--kills must be at least 1")
    if os.path.exists(args.out):
        raise utils.UserError(f"--out {args.out} exists; remove it or choose another --out (every run starts "
                              "from empty folders)")
    utils.make_output_folder(args.out)
    dataset = data.write_synthetic_dataset(os.path.join(args.out, "data"), num_classes=3, train_per_class=8,
                                           val_per_class=4, image_size=32, seed=0)
    rng = random.Random(args.seed)
    results = [chaos(job, str(dataset), args, rng) for job in JOBS]
    print(f"\n{sum(results)} of {len(results)} runs resumed bitwise identical after kill -9")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
