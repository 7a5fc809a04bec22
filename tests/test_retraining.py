"""retraining.py: the short recipe's command line and the reuse of finished runs."""

import json
import os
import sys
import time

import pytest

import retraining
import train_imagenet
import utils
from utils import UserError

ARCH = ["MBK3E1"] + ["SkipConnect"] * 21


@pytest.fixture
def fake_training(monkeypatch):
    """Replace train_imagenet.py by a stub that writes one metrics line per
    epoch (val top-1 = 50 + number of runs so far); returns the commands run."""
    commands = []

    def run_logged(command, log_path, threads=None):
        commands.append(command)
        folder = command[command.index("--save") + 1]
        epochs = int(command[command.index("--epochs") + 1]) - int(os.environ.get("FAKE_SHORT", "0"))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "metrics.jsonl"), "w") as file:
            for epoch in range(epochs):
                file.write(json.dumps({"epoch": epoch + 1, "val_top1": 50.0 + len(commands)}) + "\n")
        open(log_path, "w").close()

    monkeypatch.setattr(retraining, "run_logged", run_logged)
    return commands


def test_the_command_carries_every_recipe_setting():
    recipe = retraining.SHORT_RECIPE
    # A recipe unlike every default, so a setting the command leaves out shows.
    changed = {name: (not value if isinstance(value, bool) else "recipe" if name == "augment"
                      else value * 2 + 1) for name, value in recipe.items()}
    for tried in (recipe, changed):
        command = retraining.retrain_command(ARCH, "out", "data", 3, tried)
        args = train_imagenet.get_args_parser().parse_args(command[2:])
        assert json.loads(args.arch_config) == ARCH and (args.seed, args.dataset, args.save) == (3, "data", "out")
        assert {name: getattr(args, name) for name in tried} == tried


def test_a_finished_run_is_reused_only_for_the_same_command(tmp_path, fake_training, monkeypatch):
    folder = str(tmp_path / "net-seed0")
    assert retraining.retrain(ARCH, folder, "data", 0, epochs=3) == 51.0
    assert retraining.retrain(ARCH, folder, "data", 0, epochs=3) == 51.0  # kept
    assert len(fake_training) == 1
    assert retraining.retrain(ARCH, folder, "data", 0, epochs=2) == 52.0  # another recipe: trained again
    assert retraining.retrain(ARCH, folder, "data", 1, epochs=2) == 53.0  # another seed: trained again
    assert len(fake_training) == 3
    # Sweep 18 #124: the same --out spelt otherwise (relative, a trailing slash) retrained every kept network.
    dataset = os.path.abspath("data")  # where the runs above read it
    monkeypatch.chdir(tmp_path)
    assert retraining.retrain(ARCH, "net-seed0/", dataset + "/", 1, epochs=2) == 53.0
    assert len(fake_training) == 3


def test_an_interrupted_or_short_run_is_not_reused(tmp_path, fake_training, monkeypatch):
    folder = tmp_path / "net-seed0"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(json.dumps({"val_top1": 99.0}) + "\n")  # no command file: interrupted
    (folder / "stale.txt").write_text("left by the interrupted run")
    assert retraining.retrain(ARCH, str(folder), "data", 0, epochs=1) == 51.0
    assert not (folder / "stale.txt").exists()
    monkeypatch.setenv("FAKE_SHORT", "1")  # the run stops one epoch early
    with pytest.raises(UserError, match="ended without 2 epochs"):
        retraining.retrain(ARCH, str(folder), "data", 0, epochs=2)
    assert not (folder / retraining.COMMAND_FILE).exists()


def sleeper(seconds, exit_status=0):
    return [sys.executable, "-c", f"import sys, time; time.sleep({seconds}); sys.exit({exit_status})"]


def test_the_first_failure_stops_the_running_jobs_and_starts_no_more(tmp_path):
    """A job that fails stops its neighbour at once, and a job whose thread
    reaches run_logged only after the others were stopped starts nothing:
    the error comes in seconds, not after a minute-long child runs out."""
    def work(item):
        if item == "late":  # reaches run_logged only once the failure is being handled
            while not retraining._STOPPING.is_set():
                time.sleep(0.01)
            retraining.run_logged(sleeper(60), str(tmp_path / "late.log"))
        command = sleeper(0.2, exit_status=3) if item == "fails" else sleeper(60)
        retraining.run_logged(command, str(tmp_path / f"{item}.log"))
        return item

    started = time.monotonic()
    with pytest.raises(UserError, match=r"failed \(exit 3\)"):
        retraining.run_in_parallel(work, ["long", "fails", "late"], parallel=3)
    assert time.monotonic() - started < 20
    assert retraining._CHILDREN == set() and not retraining._STOPPING.is_set()  # ready for the next group
    assert retraining.run_in_parallel(lambda item: 2 * item, [1, 2, 3], parallel=2) == [2, 4, 6]


def test_a_step_runs_in_the_users_folder_so_relative_paths_mean_what_they_said(tmp_path, monkeypatch):
    # Before: every step ran from the repository's root, so reproduce_tables.py, screen.py, landing.py and
    # search_quality.py started from another folder with a relative --out wrote their searches into the checkout
    # and then stopped, not finding them.
    monkeypatch.chdir(tmp_path)
    retraining.run_logged([sys.executable, "-c", "open('written-here.txt', 'w').write('x')"], str(tmp_path / "log"))
    assert (tmp_path / "written-here.txt").read_text() == "x"


def test_a_kept_retraining_cut_short_or_edited_is_run_again_not_read(tmp_path):
    # Sweep 8 (suspected there): a retrain_command.json cut short was a JSONDecodeError traceback, and metrics
    # without a final val top-1 a KeyError, in every benchmark that keeps finished retrainings.
    command = ["python3", "train_imagenet.py", "--epochs", "2"]
    rows = [{"epoch": 1, "val_top1": 40.0}, {"epoch": 2, "val_top1": 50.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    utils.write_sealed_json(str(tmp_path / retraining.COMMAND_FILE), retraining.kept_run(command, rows))
    assert retraining.finished_records(str(tmp_path), command, epochs=2) == rows
    assert retraining.finished_records(str(tmp_path), command, epochs=3) is None  # fewer epochs than asked
    assert retraining.finished_records(str(tmp_path), command[:-1] + ["3"], epochs=2) is None  # another run
    # Sweep 13: a kept run's final val top-1 edited from 10.0 to 97.5 was reported and counted in the statistics.
    edited = [rows[0], dict(rows[1], val_top1=97.5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in edited))
    assert retraining.finished_records(str(tmp_path), command, epochs=2) is None
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({"epoch": 2}) + "\n")
    assert retraining.finished_records(str(tmp_path), command, epochs=2) is None
    (tmp_path / retraining.COMMAND_FILE).write_text(json.dumps(command[1:]))  # an older version's, unsealed
    assert retraining.finished_records(str(tmp_path), command, epochs=2) is None
    (tmp_path / retraining.COMMAND_FILE).write_text('["train_imagenet.py", ')
    assert retraining.finished_records(str(tmp_path), command, epochs=2) is None
