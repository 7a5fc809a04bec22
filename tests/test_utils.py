"""The shared helpers: errors, checkpoints, RNG state, device options,
help texts and progress bars."""

import argparse
import contextlib
import errno
import importlib.util
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train_imagenet
import utils
from utils import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_worker_wrapped_user_error_keeps_its_one_line():
    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                        "call last):\n  File \"x.py\", line 1, in f\nutils.UserError: cannot read image a.png")
    assert utils.user_error_message(wrapped) == "cannot read image a.png"
    assert utils.user_error_message(UserError("plain")) == "plain"
    # Sweep 5. Before: a path holding a line break was cut to its last line ("error: b.json not found").
    assert utils.user_error_message(UserError("file /tmp/a\nb.json not found")) == "file /tmp/a\\nb.json not found"
    # Sweep 8: the same from a loading process ("error: y.png (not an image format ...)").
    wrapped = UserError("Caught UserError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nutils.UserError: cannot read image /d/x\ny.png (not "
                        "an image format Pillow knows)")
    assert utils.user_error_message(wrapped) == "cannot read image /d/x\\ny.png (not an image format Pillow knows)"


def test_checkpoint_round_trip_restores_rng_streams(tmp_path):
    path = tmp_path / "state.pth.tar"
    utils.seed_everything(3)
    utils.save_checkpoint({"rng": utils.rng_states(), "epoch": 4}, path)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    utils.seed_everything(99)
    loaded = utils.load_checkpoint(path)
    utils.set_rng_states(loaded["rng"])
    assert loaded["epoch"] == 4
    actual = (random.random(), np.random.rand(), torch.rand(2))
    assert actual[:2] == expected[:2] and torch.equal(actual[2], expected[2])


def test_failed_save_leaves_the_previous_file(tmp_path):
    path = tmp_path / "state.pth.tar"
    utils.save_checkpoint({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        utils.save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert utils.load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["state.pth.tar"]  # no temporary file left behind


def test_a_checkpoint_whose_weights_changed_on_disk_is_refused(tmp_path):
    # Before: torch.load checks none of its archive's checksums, so a flipped bit in a weight loaded without a word.
    path = tmp_path / "state.pth.tar"
    weights = torch.arange(10_000, dtype=torch.float32)
    utils.save_checkpoint({"state_dict": {"w": weights}, "epoch": 3}, path)
    assert torch.equal(utils.load_checkpoint(path)["state_dict"]["w"], weights)
    content = bytearray(path.read_bytes())
    content[bytes(content).index(weights.numpy().tobytes()[4000:4016]) + 5] ^= 0x10  # inside the stored weight
    path.write_bytes(bytes(content))
    with pytest.raises(UserError, match=r"--resume .* is damaged: its record .*data/0 no longer matches"):
        utils.load_checkpoint(path, what="--resume")


class RunsCode:
    """A pickle that would run a shell command when loaded."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("links", [True, False])
def test_a_second_name_keeps_the_checkpoint_when_the_first_is_replaced(tmp_path, monkeypatch, links):
    if not links:  # a file system without hard links: a copy instead
        def no_links(*args):
            raise OSError("links not supported")
        monkeypatch.setattr(utils.os, "link", no_links)
    first, second = tmp_path / "checkpoint.pth.tar", tmp_path / "warmup.pth.tar"
    utils.save_checkpoint({"epoch": 1}, first)
    utils.save_checkpoint_again(first, second)
    utils.save_checkpoint({"epoch": 2}, first)  # the next epoch's checkpoint
    assert utils.load_checkpoint(second) == {"epoch": 1} and utils.load_checkpoint(first) == {"epoch": 2}
    utils.save_checkpoint_again(first, second)  # over an existing file too
    assert utils.load_checkpoint(second) == {"epoch": 2}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pth.tar", "warmup.pth.tar"]


def test_load_checkpoint_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        utils.load_checkpoint(tmp_path / "absent.pth.tar")
    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a checkpoint of tensors and plain containers"):
        utils.load_checkpoint(corrupt)
    malicious = tmp_path / "malicious.pth.tar"
    with open(malicious, "wb") as file:
        pickle.dump(RunsCode(), file)
    with pytest.raises(UserError, match="such as code, is refused"):
        utils.load_checkpoint(malicious)
    empty = tmp_path / "empty.pth.tar"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty or cut short"):
        utils.load_checkpoint(empty)
    good = tmp_path / "good.pth.tar"
    torch.save({"weights": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(UserError, match="could not be loaded"):
        utils.load_checkpoint(truncated)


def test_load_checkpoint_lets_a_bug_through(tmp_path, monkeypatch):
    """Only a bad file is the user's problem: an error of the program itself
    keeps its traceback."""
    path = tmp_path / "good.pth.tar"
    torch.save({"epoch": 1}, path)

    def broken_load(*args, **kwargs):
        raise TypeError("load() got an unexpected keyword argument")

    monkeypatch.setattr(utils.torch, "load", broken_load)
    with pytest.raises(TypeError):
        utils.load_checkpoint(path)


def test_strip_module_prefix_only_when_every_key_has_it():
    assert utils.strip_module_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert utils.strip_module_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def _device_args(*argv):
    parser = argparse.ArgumentParser()
    utils.add_device_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without a GPU")
def test_device_options_on_a_machine_without_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert utils.resolve_device_type(_device_args("--gpus", "1", "--visible", "0")) == "cpu"
    assert utils.resolve_device_type(_device_args("--gpus", "2", "--device", "cpu")) == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU is available; add --device cpu"):
        utils.resolve_device_type(_device_args("--gpus", "4", "--visible", "0,1,2,3"))
    with pytest.raises(UserError, match="only 0 CUDA GPU"):
        utils.resolve_device_type(_device_args("--device", "cuda"))
    with pytest.raises(UserError, match="expected GPU ids"):
        utils.resolve_device_type(_device_args("--visible", "0,a"))
    with pytest.raises(UserError, match="expected GPU ids separated by commas"):  # sweep 12: a ValueError before
        utils.resolve_device_type(_device_args("--visible", "\u00b2"))
    with pytest.raises(UserError, match="lists 1 GPU"):
        utils.resolve_device_type(_device_args("--gpus", "2", "--visible", "0"))
    with pytest.raises(UserError, match="--visible 0 picks GPUs, but --device cpu runs on the CPU"):
        utils.resolve_device_type(_device_args("--gpus", "2", "--visible", "0", "--device", "cpu"))


def test_frozen_restores_gradients_even_after_an_error():
    weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(RuntimeError):
        with utils.frozen(weights):
            assert not any(weight.requires_grad for weight in weights)
            raise RuntimeError("interrupted step")
    assert all(weight.requires_grad for weight in weights)


def test_a_resume_in_place_needs_every_row_its_checkpoint_vouches_for(tmp_path):
    """Sweep 17 #96, #111: with only the checkpoint's epoch's row vouched for, an earlier row edited by hand
    was carried on (and sealed with the finished search). Checkpoints of earlier versions vouch for the
    last row only, and still resume."""
    path = str(tmp_path / "metrics.jsonl")
    metrics = utils.MetricsFile(path)
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "train_loss": 1.0 / epoch})
    checkpoint = {"metrics_sha256": utils.content_digest(metrics.rows)}
    checkpoint_path = str(tmp_path / "checkpoint.pth.tar")
    assert utils.run_metrics_file(path, 3, checkpoint_path, checkpoint).rows == metrics.rows
    utils.write_json_lines(path, [dict(metrics.rows[0], train_loss=0.123)] + metrics.rows[1:])
    with pytest.raises(UserError, match="holds other rows up to epoch 3 than the checkpoint records"):
        utils.run_metrics_file(path, 3, checkpoint_path, checkpoint)
    older = {"metrics_row_sha256": utils.content_digest(metrics.rows[-1])}
    assert len(utils.run_metrics_file(path, 3, checkpoint_path, older).rows) == 3
    assert len(utils.run_metrics_file(path, 3, str(tmp_path / "elsewhere" / "c.pth.tar"), checkpoint).rows) == 3
    with pytest.raises(UserError, match="holds other rows up to epoch 2"):  # what epoch 2's checkpoint vouched for
        utils.run_metrics_file(path, 2, checkpoint_path, {"metrics_sha256": utils.content_digest(metrics.rows[:2])})


def test_metrics_file_keeps_rows_up_to_the_resumed_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = utils.MetricsFile(path)
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "loss": 1.0 / epoch})
    assert [row["epoch"] for row in utils.read_json_lines(path)] == [1, 2, 3]
    resumed = utils.MetricsFile(path, resume_epoch=2)  # epoch 3 is about to be redone
    assert [row["epoch"] for row in resumed.rows] == [1, 2]
    resumed.append({"epoch": 3, "loss": 0.5})
    assert [row["loss"] for row in utils.read_json_lines(path)] == [1.0, 0.5, 0.5]
    assert utils.MetricsFile(path).rows == []  # a fresh run does not inherit an old run's rows


def test_figures_are_redrawn_once_a_minute_and_after_the_last_epoch(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(utils.time, "monotonic", lambda: now[0])
    clock = utils.RedrawClock(interval_s=60)
    drawn = []
    for epoch, seconds in enumerate([10, 10, 45, 10, 70, 5], start=1):  # epoch lengths
        now[0] += seconds
        if clock.due(last=epoch == 6):
            drawn.append(epoch)
    # a minute from the start (epoch 3 at 65 s), a minute later (epoch 5,
    # after a 70 s epoch), and the last epoch; a short run draws once, at its end
    assert drawn == [3, 5, 6]
    short = utils.RedrawClock(interval_s=60)
    assert [short.due(last=epoch == 3) for epoch in (1, 2, 3)] == [False, False, True]


def test_run_folder_lock_refuses_a_second_run_and_tidies_an_empty_new_folder(tmp_path):
    folder = tmp_path / "run"
    with utils.run_folder_lock(str(folder)):
        (folder / "log.txt").write_text("first run")
        with pytest.raises(UserError, match="is in use by another run"):
            with utils.run_folder_lock(str(folder)):
                pass
    with utils.run_folder_lock(str(folder)):  # free again once the first run ends
        pass
    assert (folder / "log.txt").read_text() == "first run"

    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        with utils.run_folder_lock(str(failed)):
            raise RuntimeError("failed before writing anything")
    assert not failed.exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write there"):
        with utils.run_folder_lock(str(blocker / "run")):
            pass


def test_a_folder_another_run_writes_is_named_in_use_before_its_files_are_read(tmp_path):
    # Sweep 6. Before: a second training started a second after the first into the same --save was told to
    # resume the first one's checkpoint, or to move its results away.
    folder = tmp_path / "run"
    utils.refuse_folder_in_use(str(folder))  # not there yet: nothing to say
    with utils.run_folder_lock(str(folder)):
        (folder / "checkpoint.pth.tar").write_bytes(b"epoch 1")
        with pytest.raises(UserError, match=f"--save {folder} is in use by another run"):
            utils.refuse_folder_in_use(str(folder))
        args = train_imagenet.get_args_parser().parse_args(["--save", str(folder)])
        with pytest.raises(UserError, match="is in use by another run"):
            train_imagenet.resolve_save_folder(args)
    utils.refuse_folder_in_use(str(folder))  # released


def write_run_files(folder, checkpoint=False):
    (folder / "args.json").write_text("{}")
    (folder / "log.txt").write_text("setup lines")
    if checkpoint:
        (folder / "checkpoint.pth.tar").write_bytes(b"epoch 1")


def torch_writer_stopped_by_sigterm():
    """What torch.save raises when SIGTERM's exception interrupts its writer."""
    try:
        raise utils.Terminated
    except utils.Terminated:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file")
        except RuntimeError as error:
            return error


def test_a_write_stopped_by_a_signal_or_a_file_size_limit_is_not_called_a_full_disk(tmp_path):
    # Sweep 6. Before: SIGTERM inside torch's writer and `ulimit -f` were both "is it full?".
    assert not utils._is_write_failure(torch_writer_stopped_by_sigterm())
    assert utils._is_write_failure(RuntimeError("PytorchStreamWriter failed writing file data/0"))
    command = "import utils; print(utils.torch_write_failure_reason())"
    limited = subprocess.run(["bash", "-c", f'ulimit -f 1000; exec "{sys.executable}" -c "$0"', command],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert limited.stdout.strip() == ("the write was refused: is the disk full, or the file over this shell's size "
                                      "limit (1024000 bytes)?")
    # Sweep 8: an OSError of the size limit (File too large) advised freeing space, which cannot help.
    command = ("import utils\ntry:\n    utils.write_json('big.json', ['x' * 2_000_000])\nexcept utils.UserError as e:"
               "\n    print(e)")
    limited = subprocess.run(["bash", "-c", f'cd "{tmp_path}" && ulimit -f 1000; exec "{sys.executable}" -c "$0"',
                              command], env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True,
                             text=True, timeout=120)
    assert limited.stdout.strip() == (f"cannot write big.json: File too large: the file would pass this shell's size "
                                      "limit (1024000 bytes, `ulimit -f`); raise the limit, then run again")
    assert list(tmp_path.iterdir()) == []  # no temporary file left


# Sweep 6: Ctrl-C or SIGTERM at the first checkpoint's write said "run the same command again to start
# over", and the same command was then refused (the first epoch's metrics.jsonl was kept).
@pytest.mark.parametrize("stop", [UserError("cannot read image x.png"), SystemExit(utils.USER_ERROR_EXIT_CODE),
                                  KeyboardInterrupt(), utils.Terminated(), torch_writer_stopped_by_sigterm()])
def test_a_run_stopped_by_bad_input_or_a_signal_before_its_first_checkpoint_leaves_nothing(tmp_path, stop):
    new_folder = tmp_path / "new"
    with pytest.raises(type(stop)):
        with utils.run_folder_lock(str(new_folder), checkpoint="checkpoint.pth.tar"):
            write_run_files(new_folder)
            raise stop
    assert not new_folder.exists()

    users_folder = tmp_path / "mine"  # a folder that existed: its own files stay
    users_folder.mkdir()
    (users_folder / "notes.txt").write_text("the user's")
    with pytest.raises(type(stop)):
        with utils.run_folder_lock(str(users_folder), checkpoint="checkpoint.pth.tar"):
            write_run_files(users_folder)
            raise stop
    assert sorted(entry.name for entry in users_folder.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("checkpoint_written, stop", [
    (True, UserError("cannot read image x.png")),  # a later epoch: the run so far is resumable
    (False, SystemExit(1)),  # a crash, not bad input: its log is evidence
    (False, RuntimeError("a bug")),
])
def test_a_run_keeps_its_files_once_it_has_a_checkpoint_or_when_it_crashed(tmp_path, checkpoint_written, stop):
    folder = tmp_path / "run"
    with pytest.raises(type(stop)):
        with utils.run_folder_lock(str(folder), checkpoint="checkpoint.pth.tar"):
            write_run_files(folder, checkpoint_written)
            raise stop
    expected = {"args.json", "log.txt"} | ({"checkpoint.pth.tar"} if checkpoint_written else set())
    assert {entry.name for entry in folder.iterdir()} == expected


def test_an_output_folder_made_for_a_failed_command_is_removed_only_if_empty(tmp_path):
    # Before: `validate --out_dir` on a full disk timed every network, failed
    # at its first write and left the empty folder it had made.
    new = tmp_path / "new"
    with pytest.raises(utils.UserError):
        with utils.output_folder(str(new), "--out_dir"):
            assert new.is_dir()
            raise utils.UserError("no space left")
    assert not new.exists()
    nested = tmp_path / "parent" / "child" / "run"  # the folders os.makedirs made for it go too
    with pytest.raises(utils.UserError):
        with utils.output_folder(str(nested)):
            raise utils.UserError("no space left")
    assert not (tmp_path / "parent").exists()
    with pytest.raises(utils.UserError):  # sweep 9: the command removed its own folder first; its parents went on
        with utils.output_folder(str(nested)):
            shutil.rmtree(nested)
            raise utils.UserError("the first step failed")
    assert not (tmp_path / "parent").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    written = tmp_path / "written"
    for folder, write in ((kept, False), (written, True)):
        with pytest.raises(KeyboardInterrupt):
            with utils.output_folder(str(folder)):
                if write:
                    (folder / "validate.csv").write_text("arch\n")
                raise KeyboardInterrupt
        assert folder.is_dir()  # there before, or holding what the command wrote


def test_a_second_tool_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    # Sweep 7: two closed_loop runs into one --out: the second was told its search's "--save .../search is in use;
    # choose another --save" (closed_loop has no --save), as only the search inside locked its folder.
    out = tmp_path / "loop"
    with utils.tool_folder(str(out), "closed_loop.py"):
        with pytest.raises(UserError, match=f"--out {out} is in use by another run; wait for it to end or choose "
                                            "another --out"):
            with utils.tool_folder(str(out), "closed_loop.py"):
                pass
    with utils.tool_folder(str(out), "closed_loop.py"):  # free again once the first has ended
        pass


def test_a_name_too_long_for_the_file_system_is_named_as_such(tmp_path):
    # Before: the advice was to free some space.
    path = tmp_path / ("x" * 300 + ".json")
    with pytest.raises(UserError, match="File name too long; choose a shorter name"):
        with utils.atomic_write(path) as file:
            file.write("{}")
    assert list(tmp_path.iterdir()) == []


def test_an_output_name_too_long_with_its_temporary_name_is_refused_before_the_run(tmp_path):
    # Before: train --export_onnx with such a name was refused only after the training, when it was written.
    fits = tmp_path / ("y" * 241)  # .NAME.tmp-XXXXXXXX: 255 bytes, the file system's limit
    utils.check_output_file(str(fits), "--out")
    with utils.atomic_write(fits) as file:
        file.write("{}")
    with pytest.raises(UserError, match="--export_onnx: the file name is 242 bytes long, and at most 241 fit"):
        utils.check_output_file(str(tmp_path / ("y" * 237 + ".onnx")), "--export_onnx")


def test_a_full_disk_is_found_before_the_run_not_at_its_end(tmp_path, monkeypatch):
    """Sweep 20 #114: ground_truth.py --out on a full disk passed the up-front check (a full disk still
    takes an empty file) and retrained for minutes before the write failed."""
    made = utils.tempfile.TemporaryFile

    class FullDisk:  # a file the disk holds no byte of
        def __init__(self, **options):
            self.file = made(**options)

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            self.file.close()

        def write(self, data):
            if data:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    monkeypatch.setattr(utils.tempfile, "TemporaryFile", FullDisk)
    full = r"cannot write there \(No space left on device\); free some space$"
    with pytest.raises(UserError, match=r"^--out .*: " + full):
        utils.check_output_file(str(tmp_path / "truth.json"), "--out")
    with pytest.raises(UserError, match=r"^--save .*deep: " + full):
        utils.make_output_folder(str(tmp_path / "run" / "deep"), "--save")
    # Sweep 21 #109-#115: the folders made for the run were left behind, empty.
    assert list(tmp_path.iterdir()) == []


def test_a_link_loop_is_named_as_a_loop_not_as_a_link_to_nothing(tmp_path):
    # Sweep 21 #175: LIGHTNAS_DATA given a loop of two links was "a link to nothing (was what it names moved?)".
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match="a is a loop of links"):
        utils.refuse_link_to_nothing(str(tmp_path / "a"), "LIGHTNAS_DATA")


def test_ctrl_c_just_after_the_file_was_moved_into_place_stays_a_ctrl_c(tmp_path, monkeypatch):
    """Sweep 17 #117: a Ctrl-C landing right after the temporary file had been moved over the old one made
    the cleanup delete a file no longer there: a FileNotFoundError traceback instead of the run's resume line."""
    path = tmp_path / "checkpoint.pth.tar"
    path.write_text("old")
    replace = os.replace

    def interrupted_after_replacing(source, destination):
        replace(source, destination)
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.os, "replace", interrupted_after_replacing)
    with pytest.raises(KeyboardInterrupt):
        with utils.atomic_write(path) as file:
            file.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["checkpoint.pth.tar"]


def test_a_successful_save_removes_temporary_files_a_killed_write_left(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    killed = tmp_path / ".checkpoint.pth.tar.tmp-abc123"  # what a SIGKILL mid-write leaves
    killed.write_bytes(b"half a checkpoint")
    other = tmp_path / ".best.pth.tar.tmp-xyz"  # another file's: not this write's to remove
    other.write_bytes(b"")
    utils.save_checkpoint({"epoch": 2}, path)
    assert utils.load_checkpoint(path) == {"epoch": 2}
    assert not killed.exists() and other.exists()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".best.pth.tar.tmp-xyz", "checkpoint.pth.tar"]


def test_processes_on_one_host_share_its_cores_unless_told_otherwise(monkeypatch):
    context = argparse.Namespace(device=torch.device("cpu"), distributed=True)
    host = utils.socket.gethostname()
    monkeypatch.setattr(utils, "all_gather_objects", lambda value: [host, "another-node", host])  # 2 here
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        utils.share_cpu_threads(context)
        assert torch.get_num_threads() == 4
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's (or torchrun's) choice stands
        utils.share_cpu_threads(context)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("message, lost", [
    ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:16776: Connection reset by "
     "peer. This is typically caused by ...", True),
    ("NCCL error in: ProcessGroupNCCL.cpp:1275, remote process exited or there was a network error, NCCL version "
     "2.21.5; Connection closed by peer", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),  # this process's own problem: keep the traceback
])
def test_a_lost_peer_is_one_line_other_runtime_errors_keep_their_traceback(message, lost, capsys):
    def main(args):
        raise RuntimeError(message)

    parser = argparse.ArgumentParser()
    if lost:
        with pytest.raises(SystemExit) as exit_info:
            utils.run_cli(main, parser, [])
        assert exit_info.value.code == 1
        assert capsys.readouterr().err.strip() == ("error: another process of this run stopped (lost the connection "
                                                   "to it); its own output says why")
    else:
        with pytest.raises(RuntimeError, match="out of memory"):
            utils.run_cli(main, parser, [])


def test_a_killed_process_of_a_spawned_run_is_named_in_one_line(monkeypatch, capsys):
    def killed_spawn(*args, **kwargs):
        raise utils.mp.ProcessExitedException("process 1 terminated with signal SIGKILL", error_index=1,
                                               error_pid=4321, exit_code=-9, signal_name="SIGKILL")

    monkeypatch.setattr(utils.mp, "spawn", killed_spawn)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        utils.launch(lambda args: None, argparse.Namespace(), num_processes=2)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == ("error: process 1 of this run was killed (signal 9); the others "
                                               "were stopped")


# ------------------------------------------------------------ help texts


def test_help_formatter_names_a_default_once_and_never_none():
    parser = argparse.ArgumentParser(formatter_class=utils.DefaultsHelpFormatter)
    parser.add_argument("--plain", type=int, default=3, help="a number")
    parser.add_argument("--stated", default="auto", help="a mode (default: auto)")
    parser.add_argument("--later", type=int, default=None, help="filled in by the schedule (paper: 90, demo: 30)")
    parser.add_argument("--needed", required=True, help="a file to write")
    text = " ".join(parser.format_help().split())
    assert "a number (default: 3)" in text
    assert text.count("(default: auto)") == 1
    assert "(paper: 90, demo: 30) --needed" in text  # nothing appended to the schedule's values
    assert text.endswith("a file to write")  # a required option has no default
    assert "None" not in text


def load_script(relative_path):
    """A script of the repository as a module (benchmarks/ is no package)."""
    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every script whose --help appends defaults by itself (train_imagenet.py writes its own into each help text).
DEFAULTS_HELP_SCRIPTS = ("search_imagenet.py", "benchmarks/landing.py", "benchmarks/screen.py",
                         "benchmarks/search_quality.py", "benchmarks/ground_truth.py")


@pytest.mark.parametrize("script", DEFAULTS_HELP_SCRIPTS)
def test_script_help_names_each_default_at_most_once_and_never_none(script):
    parser = load_script(script).get_args_parser()
    assert parser.formatter_class is utils.DefaultsHelpFormatter
    assert "(default: None)" not in " ".join(parser.format_help().split())
    formatter = parser._get_formatter()
    for action in parser._actions:  # each option's help as --help prints it, before line wrapping
        if action.help:
            assert formatter._expand_help(action).count("default:") <= 1, action.option_strings


def test_search_help_keeps_the_defaults_it_had():
    import search_imagenet

    text = " ".join(search_imagenet.get_args_parser().format_help().split())
    for shown in ("total search epochs (paper: 90, demo: 30)", "(default: 24.0)", "(default: the Jetson AGX Xavier "
                  "table)", "(default: lagrange)", "SGD momentum (default: 0.9)", "(default: 1); under torchrun",
                  "--gpus N runs N CPU processes with gloo (default: auto)"):
        assert shown in text


# ---------------------------------------------------------- progress bars


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


@pytest.mark.parametrize("stream, enabled, drawn", [
    (TerminalStream(), True, True),
    (io.StringIO(), True, False),  # output redirected to a file: no bar
    (TerminalStream(), False, False),  # a process that is not the main one
])
def test_progress_bar_is_drawn_on_a_terminal_only(monkeypatch, stream, enabled, drawn):
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(utils.progress_bar(range(3), enabled, desc="pass")) == [0, 1, 2]
    assert ("pass" in stream.getvalue()) == drawn
    assert drawn or stream.getvalue() == ""


def test_number_rules_refuse_the_first_bad_value_with_its_option_and_infinities_too():
    rules = ((("epochs",), lambda value: 1 <= value <= 10, "in [1, 10]"),
             (("lr", "clip"), lambda value: value > 0, "positive"))
    utils.check_number_rules(argparse.Namespace(epochs=3, lr=0.1, clip=5.0), rules)
    for values, message in (({"epochs": 0, "lr": 0.1, "clip": 1.0}, "--epochs must be in [1, 10], got 0"),
                            ({"epochs": 3, "lr": float("nan"), "clip": 1.0}, "--lr must be positive, got nan"),
                            ({"epochs": 3, "lr": 0.1, "clip": float("inf")}, "--clip must be positive, got inf")):
        with pytest.raises(utils.UserError, match=f"^{re.escape(message)}$"):
            utils.check_number_rules(argparse.Namespace(**values), rules)


def test_a_schedule_fills_only_the_unset_options_paper_with_a_dataset_demo_without():
    schedules = {"paper": {"epochs": 90, "lr": 0.1}, "demo": {"epochs": 30, "lr": 0.05}}
    demo = utils.fill_from_schedule(argparse.Namespace(schedule=None, dataset=None, epochs=None, lr=0.2), schedules)
    assert (demo.schedule, demo.epochs, demo.lr) == ("demo", 30, 0.2)
    paper = utils.fill_from_schedule(argparse.Namespace(schedule=None, dataset="x", epochs=None, lr=None), schedules)
    assert (paper.schedule, paper.epochs, paper.lr) == ("paper", 90, 0.1)
    chosen = utils.fill_from_schedule(argparse.Namespace(schedule="demo", dataset="x", epochs=None, lr=None), schedules)
    assert (chosen.epochs, chosen.lr) == (30, 0.05)


def test_a_full_disk_is_one_line_and_the_earlier_file_stays(tmp_path, monkeypatch):
    import errno
    import json as json_module
    path = tmp_path / "checkpoint.pth.tar"
    utils.save_checkpoint({"epoch": 1}, path)

    def full_disk_save(state, file):  # what torch.save raises when the disk fills mid-write
        file.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(utils.torch, "save", full_disk_save)
    with pytest.raises(utils.UserError, match=r"^cannot write .*checkpoint.pth.tar: the disk refused the write; is it "
                                              r"full\? \(the earlier file is kept\)"):
        utils.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert utils.load_checkpoint(str(path)) == {"epoch": 1}
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint.pth.tar"]  # no temporary file left

    def no_space(*arguments, **options):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json_module, "dump", no_space)
    with pytest.raises(utils.UserError, match="cannot write .*log.json: No space left on device; free some space, "
                                              "then run again"):
        utils.write_json(tmp_path / "log.json", {"a": 1})
    monkeypatch.undo()

    def read_only(*arguments, **options):
        raise OSError(errno.EROFS, "Read-only file system")

    # Sweep 19 #228: a read-only place was also told to free some space.
    monkeypatch.setattr(json_module, "dump", read_only)
    with pytest.raises(utils.UserError, match="cannot write .*log.json: Read-only file system; choose a writable "
                                              "folder, then run again"):
        utils.write_json(tmp_path / "log.json", {"a": 1})
    monkeypatch.undo()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint.pth.tar"]
    with pytest.raises(utils.UserError, match="a part of the path is a file, not a folder"):
        utils.write_json(path / "under-a-file.json", {"a": 1})

    def buggy_save(state, file):
        raise RuntimeError("a bug, not the disk")

    monkeypatch.setattr(utils.torch, "save", buggy_save)
    with pytest.raises(RuntimeError, match="a bug, not the disk"):  # the code's own errors are not hidden
        utils.save_checkpoint({"epoch": 3}, path)


def test_visible_naming_a_gpu_the_machine_lacks_is_refused(tmp_path, monkeypatch):
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (gpus / bus).mkdir()
    monkeypatch.setattr(utils, "NVIDIA_GPU_FOLDER", str(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = argparse.Namespace(visible="1,7", gpus=1, device="auto")
    with pytest.raises(utils.UserError, match="this machine has 2 GPU\\(s\\), ids 0-1; there is no GPU 7"):
        utils.resolve_device_type(args)
    # Without the driver (a CPU machine) the authors' `--gpus 1 --visible 0` still runs, on the CPU.
    monkeypatch.setattr(utils, "NVIDIA_GPU_FOLDER", str(tmp_path / "no-driver"))
    monkeypatch.setattr(utils.torch.cuda, "device_count", lambda: 0)
    assert utils.resolve_device_type(argparse.Namespace(visible="0", gpus=1, device="auto")) == "cpu"
    # Any other id names a GPU that is not there: it ran on the CPU in silence (sweep 14 #152, #188).
    for visible in ("3", "1", "0,1"):
        with pytest.raises(utils.UserError, match=f"--visible {visible}: this machine has no CUDA GPU"):
            utils.resolve_device_type(argparse.Namespace(visible=visible, gpus=1, device="auto"))


def test_an_unusable_thread_setting_is_named(capsys):
    utils.check_thread_setting({})
    utils.check_thread_setting({"OMP_NUM_THREADS": "1"})
    utils.check_thread_setting({"OMP_NUM_THREADS": "1,1"})  # OpenMP's nested levels (sweep 11: refused before)
    for bad in ("abc", "0", "-2", "", "2,", "1,0", "\u00b2"):  # sweep 12: '²' was a ValueError traceback
        with pytest.raises(utils.UserError, match=f"OMP_NUM_THREADS={bad!r} is not a number of threads"):
            utils.check_thread_setting({"OMP_NUM_THREADS": bad})
    assert capsys.readouterr().err == ""
    utils.check_thread_setting({"OMP_NUM_THREADS": str(10 * (os.cpu_count() or 1))})
    assert "tens of times slower" in capsys.readouterr().err


def test_torchruns_variables_set_by_hand_are_named():
    # Sweep 7. Before: ValueError tracebacks from torch.distributed's rendezvous.
    utils.check_process_group_setting({})
    utils.check_process_group_setting({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                                       "MASTER_PORT": "29500"})  # as torchrun sets them
    for environment, message in (({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a process number"),
                                 ({"RANK": "1", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 without MASTER_ADDR and MASTER_PORT"),
                                 ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
                                  "RANK=2 with WORLD_SIZE=2: not a process of that group")):
        with pytest.raises(UserError, match=re.escape(message) + ".*start runs of several processes with torchrun"):
            utils.check_process_group_setting(environment)
    # Sweep 8. Before: '²' passed str.isdigit() and failed in int(); a port 'abc' and an address no name server
    # knows failed, or were retried for minutes, inside torch's rendezvous.
    group = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for change, message in (({"RANK": "\u00b2"}, "RANK='²' is not a process number"),
                            ({"MASTER_PORT": "abc"}, "MASTER_PORT='abc' is not a port number (1 to 65535)"),
                            ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' is not a port number"),
                            ({"MASTER_ADDR": "no-such-host.invalid"}, "MASTER_ADDR='no-such-host.invalid' cannot be "
                                                                       "found")):
        with pytest.raises(UserError, match=re.escape(message)):
            utils.check_process_group_setting(dict(group, **change))


@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_waiting_for_its_group_says_so_and_stops_on_sigterm(tmp_path, rank):
    # Sweep 8. Before: process 0 of a hand-set group of two waited in torch's rendezvous without a word, deaf to
    # SIGTERM, for up to 30 minutes; killed, it left its new run folder behind.
    # Sweep 11: process 1 alone printed torch's C++ connection errors, with stack dumps, on every try.
    command = ("import argparse, time, utils\n"
               "utils.run_cli(lambda args: utils.init_distributed('cpu'), argparse.ArgumentParser(), [])")
    environment = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(utils._free_local_port()))
    environment.pop("TORCHELASTIC_RUN_ID", None)
    process = subprocess.Popen([sys.executable, "-c", command], cwd=REPO_ROOT, env=environment, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_line = process.stdout.readline()
    assert first_line.startswith(f"process {rank} of 2: waiting for the group's other processes at 127.0.0.1:")
    time.sleep(5)  # a few tries to reach process 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert process.stderr.read().strip() == "terminated"


def test_forwarded_options_count_as_the_settings_they_give():
    import search_imagenet

    def settings(*arguments):
        return utils.forwarded_settings(search_imagenet.get_args_parser(), list(arguments), "the search options",
                                        sets_itself=("save",), owner="the loop")
    same = settings("--dataset", "data", "--epochs", "3")
    assert settings("--epo=3", "--dataset", "./data/") == same  # sweep 12: "data/" was another setting
    assert settings("--dataset", os.path.abspath("data"), "--epochs", "3", "--penalty", "lagrange") == same
    assert settings("--dataset", "data2", "--epochs", "3") != same
    with pytest.raises(UserError, match="the search options: --save is set by the loop; remove it"):
        settings("--save", "x")


def answer_with_a_banner(listener):
    """Serve `listener` as an SSH or SMTP server does a stranger: a banner,
    then the connection closed."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:  # the listener was closed: the test is over
            return
        with connection, contextlib.suppress(OSError):
            connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + b"x" * 1000)


def reset_each_connection(listener):
    """Serve `listener` as a firewall or a crashed server might: each
    connection taken and dropped at once (a TCP reset)."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:  # the listener was closed: the test is over
            return
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()


@pytest.mark.parametrize("listener_kind, stopped_by", [("silent", "its time limit"), ("silent", "SIGTERM"),
                                                       ("banner", "its time limit"), ("reset", "its time limit")])
def test_a_process_whose_port_holds_another_program_is_not_hung(listener_kind, stopped_by):
    # Sweep 12: process 1 given the port of a web server waited inside torch's store client, silent and deaf to
    # SIGTERM, for as long as it was left (ten minutes, then kill -9). A listener that never answers stands in.
    # Sweep 13: one that sends a banner and closes (SSH, SMTP) had it retry forever, printing torch's C++ stack
    # dumps on every try (9,102 lines in 300 s). Sweep 14: one that resets each connection was taken for no
    # listener at all, and the process waited for process 0 for good.
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts (the kernel's backlog)
        serve = {"banner": answer_with_a_banner, "reset": reset_each_connection}.get(listener_kind)
        if serve is not None:
            threading.Thread(target=serve, args=(listener,), daemon=True).start()
        limit = "utils.STORE_ANSWER_LIMIT_S = 3\n" if stopped_by == "its time limit" else ""
        if listener_kind == "silent":  # its client never ends a try: the grace for a last one would only wait
            limit += "utils.STORE_CLIENT_GRACE_S = 1\n"
        command = ("import argparse, utils\n" + limit +
                   "utils.run_cli(lambda args: utils.init_distributed('cpu'), argparse.ArgumentParser(), [])")
        environment = dict(os.environ, RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(listener.getsockname()[1]))
        environment.pop("TORCHELASTIC_RUN_ID", None)
        process = subprocess.Popen([sys.executable, "-c", command], cwd=REPO_ROOT, env=environment, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if stopped_by == "SIGTERM":
            time.sleep(8)  # in torch's client by now
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        stderr = process.stderr.read().strip()
    if stopped_by == "SIGTERM":
        assert (code, stderr) == (128 + signal.SIGTERM, "terminated")
    else:
        assert code == 2
        assert stderr == (f"error: MASTER_ADDR:MASTER_PORT {environment['MASTER_ADDR']}:{environment['MASTER_PORT']}: "
                          "something accepts connections there but did not answer as process 0's store within 3 s "
                          "(another program on that port?); give every process the address and port process 0 "
                          "listens on")


def test_an_unknown_plotting_backend_is_named_before_any_work(tmp_path):
    utils.check_plotting_setting({})
    utils.check_plotting_setting({"MPLBACKEND": "agg"})
    # In a fresh process, where importing matplotlib with it would fail: peers.py timed every network
    # first and then ended in matplotlib's traceback, losing the measurements.
    result = subprocess.run([sys.executable, "peers.py", "--out", str(tmp_path / "peers"), "--rounds", "1"],
                            cwd=REPO_ROOT, env={**os.environ, "MPLBACKEND": "bogus"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: MPLBACKEND='bogus' is not a matplotlib backend; unset it (the figures "
                                     "are written as files and need none) or set MPLBACKEND=agg")
    assert not (tmp_path / "peers").exists()


def test_a_plotting_cache_folder_that_cannot_be_written_is_named(tmp_path):
    # Before: matplotlib's own two-line warning on every run, and its font cache rebuilt each time.
    utils.check_plotting_setting({"MPLCONFIGDIR": str(tmp_path / "cache")})  # made, as matplotlib would
    assert (tmp_path / "cache").is_dir()
    (tmp_path / "file").write_text("")
    for folder, reason in ((tmp_path / "file", "it is a file"), (tmp_path / "file" / "cache", "Not a directory")):
        with pytest.raises(utils.UserError, match=re.escape(f"MPLCONFIGDIR={str(folder)!r} is not a writable "
                                                            f"folder ({reason}); unset it")):
            utils.check_plotting_setting({"MPLCONFIGDIR": str(folder)})


def test_ctrl_c_prints_the_command_that_resumes_once_there_is_a_checkpoint(tmp_path, capsys, monkeypatch):
    save = tmp_path / "my run"
    checkpoint = save / "checkpoint.pth.tar"
    monkeypatch.setattr(sys, "argv", ["search_imagenet.py", "--save", str(save), "--resume=old/warmup.pth.tar",
                                      "--target_latency", "22"])
    monkeypatch.setattr(utils, "_resumable_checkpoint", None)

    def interrupted_run(args):
        utils.resumable_at(str(checkpoint))
        raise KeyboardInterrupt

    def stderr_after_ctrl_c():
        with pytest.raises(SystemExit) as stop:
            utils.run_cli(interrupted_run, argparse.ArgumentParser(), [])
        assert stop.value.code == 130
        return capsys.readouterr().err.strip()

    assert stderr_after_ctrl_c() == (f"interrupted before the first checkpoint ({checkpoint}) was written: nothing "
                                     "to resume; run the same command again to start over")
    save.mkdir()
    checkpoint.write_bytes(b"")
    assert stderr_after_ctrl_c() == ("interrupted; continue with: python3 search_imagenet.py --save "
                                     f"'{save}' --target_latency 22 --resume '{checkpoint}'")


SIGTERM_MID_WRITE = """
import sys, time
sys.path.insert(0, {repo!r})
import argparse, utils

def main(args):
    utils.resumable_at({checkpoint!r})
    with utils.atomic_write({target!r}) as file:
        file.write("half of it")
        file.flush()
        print("writing", flush=True)
        time.sleep(60)

utils.run_cli(main, argparse.ArgumentParser(), [])
"""


def test_sigterm_mid_write_removes_the_temporary_file_and_says_how_to_resume(tmp_path):
    target, checkpoint = tmp_path / "result.json", tmp_path / "checkpoint.pth.tar"
    target.write_text("the earlier result")
    checkpoint.write_bytes(b"")
    script = tmp_path / "writer.py"
    script.write_text(SIGTERM_MID_WRITE.format(repo=str(REPO_ROOT), checkpoint=str(checkpoint), target=str(target)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.glob(".result.json.tmp-*"))) == 1
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert stderr.strip().splitlines() == [f"terminated; continue with: python3 {script} --resume {checkpoint}"]
    assert not list(tmp_path.glob(".result.json.tmp-*")) and target.read_text() == "the earlier result"


def _vote_where_only_rank_1_diverged(args):
    """Runs in each spawned process: rank 1 alone has diverged; every rank
    writes what the vote told it."""
    context = utils.init_distributed("cpu")
    try:
        verdict = utils.any_process_diverged(context.rank == 1, context.device)
        (Path(args.out) / f"rank-{context.rank}.txt").write_text(str(verdict))
    finally:
        utils.cleanup_distributed()


def test_the_divergence_vote_stops_every_process_when_one_diverged(tmp_path):
    utils.launch(_vote_where_only_rank_1_diverged, argparse.Namespace(out=str(tmp_path)), 2)
    assert [(tmp_path / f"rank-{rank}.txt").read_text() for rank in (0, 1)] == ["True", "True"]
    assert utils.any_process_diverged(False, torch.device("cpu")) is False  # one process: its own verdict
    assert utils.any_process_diverged(True, torch.device("cpu")) is True


def test_a_path_the_terminal_cannot_show_is_escaped_not_a_crash():
    # Before: with PYTHONIOENCODING=ascii a non-ASCII --out was written, then "wrote <path>" raised
    # UnicodeEncodeError and the run ended in a traceback with exit 1.
    program = ("import argparse, utils\n"
               "utils.run_cli(lambda args: print('wrote caf\\u00e9.json'), argparse.ArgumentParser(), [])\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True,
                            env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"wrote caf\\xe9.json\n"


def test_a_second_ctrl_c_while_the_run_stops_is_ignored_not_a_traceback():
    """Sweep 21 #228: `timeout -s INT` signals the process and then its process group, so a run got two
    SIGINTs; the second landed in a progress bar's __del__ as the interpreter exited, and printed "Exception
    ignored in ... KeyboardInterrupt" with a traceback after the run's one line."""
    program = ("import argparse, os, signal, time, utils\n"
               "class Bar:\n"
               "    def __del__(self):  # run at exit, as a progress bar's is\n"
               "        os.kill(os.getpid(), signal.SIGINT)\n"
               "        time.sleep(0.2)\n"
               "def main(args):\n"
               "    main.bar = Bar()\n"
               "    os.kill(os.getpid(), signal.SIGINT)\n"
               "    time.sleep(5)\n"
               "utils.run_cli(main, argparse.ArgumentParser(), [])\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 128 + signal.SIGINT
    assert result.stderr.strip() == "interrupted", result.stderr


def test_an_allocation_the_machine_cannot_make_is_one_line(capsys):
    # Before: --batch_size 65536 at 224 px ended in torch's allocator traceback.
    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 39460012032 bytes. Error code 12 (Cannot allocate memory)")

    with pytest.raises(SystemExit) as stop:
        utils.run_cli(allocate, argparse.ArgumentParser(), [])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: out of memory (36.8 GiB in one piece); lower --batch_size (or the "
                                       "image size) until it fits\n")


def test_a_json_lines_file_cut_short_or_with_a_byte_order_mark(tmp_path):
    # Before: screen.py --table ended in a JSONDecodeError traceback on either.
    path = tmp_path / "screens.jsonl"
    path.write_text("\ufeff" + json.dumps({"epoch": 1}) + "\n" + json.dumps({"epoch": 2}) + "\n")
    assert utils.read_json_lines(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text(json.dumps({"epoch": 1}) + '\n{"epoch": 2, "val')
    with pytest.raises(UserError, match="line 2 is not a row this project wrote"):
        utils.read_json_lines(path)


# A print stops the command (as SIGPIPE would); the log's lines let the run go on, writing only its log.txt.
PIPED_PRINTERS = {"print": ("[print('x' * 80) for _ in range(100_000)]", 1),
                  "log": ("[log.info('x' * 80) for log in [utils.create_logger(sys.argv[1])] for _ in range(100_000)]", 0)}


@pytest.mark.parametrize("kind", PIPED_PRINTERS)
def test_output_piped_to_a_reader_that_stopped_ends_quietly(tmp_path, kind):
    # `script | head -1`: Python's BrokenPipeError was a traceback, and another one at the exit's flush;
    # a run's logger printed a "--- Logging error ---" traceback for every line after it (sweep 5).
    loop, exit_code = PIPED_PRINTERS[kind]
    printer = f"import argparse, sys, utils\nutils.run_cli(lambda args: {loop}, argparse.ArgumentParser(), [])"
    process = subprocess.Popen([sys.executable, "-c", printer, str(tmp_path)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().strip().endswith(b"x" * 80)
    process.stdout.close()
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == exit_code
    assert error == ""
    if kind == "log":
        assert (tmp_path / utils.LOG_NAME).read_text().count("x" * 80) == 100_000


@pytest.mark.parametrize("kind", PIPED_PRINTERS)
def test_output_to_a_full_disk_is_one_line(tmp_path, kind):
    # Sweep 6. Before: `> /dev/full` was an OSError traceback (a print) or a "--- Logging error ---"
    # traceback per line (a run's log), exit 0.
    loop, exit_code = PIPED_PRINTERS[kind]
    printer = f"import argparse, sys, utils\nutils.run_cli(lambda args: {loop}, argparse.ArgumentParser(), [])"
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-c", printer, str(tmp_path)], cwd=REPO_ROOT, stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == exit_code
    expected = ("error: cannot write the output (No space left on device); send it elsewhere" if kind == "print"
                else "warning: cannot write the output (No space left on device); the run goes on, its log in "
                     "log.txt")
    assert result.stderr.strip() == expected
    if kind == "log":
        assert (tmp_path / utils.LOG_NAME).read_text().count("x" * 80) == 100_000


def test_a_closed_stdout_is_named_and_a_hangup_quit_or_usr1_stops_like_sigterm():
    # Sweep 7. Before: `>&-` printed nothing with exit 0; SIGHUP killed a run without a word, leaving its files.
    closed = subprocess.run(["bash", "-c", f'exec "{sys.executable}" latency_build.py predict --arch_config '
                                           'LightNet-24ms >&-'], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert closed.returncode == 2
    assert closed.stderr.strip() == ("error: standard output is closed; give the command somewhere to write (a file "
                                     "or /dev/null)")
    # Sweep 8: SIGQUIT (Ctrl-\\) and SIGUSR1 (SLURM's warning before a time limit) did the same.
    # It says "ready" once run_cli runs it, its signal handlers in place.
    sleeper = ("import argparse, time, utils\nutils.run_cli(lambda args: (print('ready', flush=True), time.sleep(60)), "
               "argparse.ArgumentParser(), [])")
    # Sweep 11: the timer signals (SIGALRM, SIGVTALRM, SIGPROF) killed a run without a word.
    for number in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGALRM, signal.SIGPROF):
        process = subprocess.Popen([sys.executable, "-c", sleeper], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "ready\n"
        process.send_signal(number)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, number
        assert process.stderr.read().strip() == "terminated"
    # A run started under nohup (SIGHUP ignored) ignores a hangup still: a closed terminal does not stop it.
    # Before: run_cli replaced the ignore with its stop, ending nohup's runs when the terminal closed.
    process = subprocess.Popen(["nohup", sys.executable, "-c", sleeper.replace("60", "3")], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=60) == 0


def test_too_many_open_files_is_one_line():
    # Sweep 6. Before: `ulimit -n 12` with loading processes ended in an OSError traceback.
    command = ("import argparse, os, utils\n"
               "utils.run_cli(lambda args: [os.open(os.devnull, os.O_RDONLY) for _ in range(100)], "
               "argparse.ArgumentParser(), [])")
    result = subprocess.run(["bash", "-c", f'ulimit -n 20; exec "{sys.executable}" -c "$0"', command],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: too many open files for this process (ulimit -n is 20); raise the limit "
                                     "(ulimit -n 4096) or give fewer --workers")


def test_a_checkpoint_past_its_metrics_last_row_is_refused_on_resume(tmp_path):
    # Sweep 12. Before: a search checkpoint's epoch edited from 2 to 3 "finished" a 3-epoch search, epoch 3 never run.
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n')
    assert [row["epoch"] for row in utils.MetricsFile(path, resume_epoch=2).rows] == [1, 2]
    assert [row["epoch"] for row in utils.MetricsFile(path, resume_epoch=1).rows] == [1]  # later rows are redone
    with pytest.raises(UserError, match=r"the checkpoint records epoch 3, but .* ends at epoch 2"):
        utils.MetricsFile(path, resume_epoch=3)


def test_a_run_resumed_in_place_without_its_metrics_is_refused(tmp_path):
    # Sweep 13: a search and a training resumed at epoch 2 after their metrics.jsonl was deleted finished with
    # rows (and figures) for the later epochs only.
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(UserError, match=r"the checkpoint records epoch 2, but .*metrics.jsonl is missing or empty "
                                        r"\(deleted\?\), and with it the record of those epochs"):
        utils.MetricsFile(str(path), resume_epoch=2, resumed_in_place=True)
    assert utils.MetricsFile(str(path), resume_epoch=2).rows == []  # from another folder's checkpoint (a warm-up)
    assert utils.same_folder(str(tmp_path / "run" / "checkpoint.pth.tar"), str(tmp_path / "run" / "."))
    assert not utils.same_folder(str(tmp_path / "warmup" / "warmup.pth.tar"), str(tmp_path / "run"))


@pytest.mark.parametrize("row", ["[1]", "{}", '{"epoch": "1"}', '{"epoch": true}', '"text"'])
def test_a_metrics_row_this_project_did_not_write_is_refused_on_resume(tmp_path, row):
    # Sweep 5. Before: a resumed run read these as rows and failed with KeyError / TypeError tracebacks.
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 1.0}\n' + row + "\n")
    with pytest.raises(UserError, match="line 2 is not a row this project wrote"):
        utils.MetricsFile(path, resume_epoch=1)


@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_a_log_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    # Sweep 5. Before: a folder named log.txt was an IsADirectoryError traceback; a pipe would wait for a reader.
    log = tmp_path / utils.LOG_NAME
    log.mkdir() if kind == "folder" else os.mkfifo(log)
    with pytest.raises(UserError, match="is not a regular file"):
        utils.create_logger(str(tmp_path))


def test_a_log_line_that_cannot_be_written_stops_the_run_in_one_line(tmp_path):
    # Sweep 13: a search whose disk filled at log.txt printed logging's 23-line "--- Logging error ---" traceback
    # and went on without its log.
    logger = utils.create_logger(str(tmp_path), name="full-disk")
    handler = next(handler for handler in logger.handlers if isinstance(handler, utils.LogFileHandler))
    handler.stream.close()
    handler.stream = open("/dev/full", "w")  # every write: No space left on device
    with pytest.raises(UserError, match=r"cannot write the run's log .*log.txt \(No space left on device\); free "
                                        "space there or choose another --save"):
        logger.info("epoch 1")
    logger.removeHandler(handler)
    with contextlib.suppress(OSError):  # the line is still buffered: closing writes it again
        handler.stream.close()


def test_a_save_path_of_bytes_that_are_not_utf8_is_escaped_in_the_log(tmp_path):
    # Sweep 5. Before: log.txt was encoded strictly, and every line naming such a path printed a
    # "--- Logging error ---" traceback (22 of them in a search), though the run went on.
    logger = utils.create_logger(str(tmp_path), name="escaped")
    logger.info("written to /tmp/s\udcff/arch.json")
    for handler in logger.handlers:
        handler.flush()
    assert (tmp_path / utils.LOG_NAME).read_text().rstrip().endswith("written to /tmp/s\\udcff/arch.json")


def test_a_kept_file_edited_or_cut_short_is_noticed_on_reading(tmp_path):
    # Sweep 9: reproduce_tables.py's kept timings.json holding '[]', or a LightNet's time "fast", ended in
    # TypeError tracebacks after every search had been kept.
    path = tmp_path / "timings.json"
    content = {"lightnets": [{"model": "LightNet-24ms", "cpu_measured_ms": 9.5}], "peers": []}
    utils.write_sealed_json(path, content)
    assert utils.read_sealed_json(path, "delete it") == content
    for changed in (path.read_text().replace("9.5", '"fast"'), "[]", path.read_text()[:40],
                    json.dumps(content)):  # the last: the unsealed content, as an older version wrote it
        path.write_text(changed)
        with pytest.raises(UserError, match=f"{re.escape(str(path))}.*; delete it$"):
            utils.read_sealed_json(path, "delete it")


def test_a_figure_past_the_file_size_limit_is_named_with_its_file(tmp_path):
    # Sweep 9. Before: "cannot write the output (File too large); send it elsewhere", blaming standard output
    # for landing.png, and a cut figure could be left behind.
    command = ("import utils\nfigure, axis = utils.new_figure((40, 40))\naxis.plot(range(100000))\n"
               "try:\n    utils.save_figure(figure, 'big.png')\nexcept utils.UserError as e:\n    print(e)")
    limited = subprocess.run(["bash", "-c", f'cd "{tmp_path}" && ulimit -f 4; exec "{sys.executable}" -c "$0"',
                              command], env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True,
                             text=True, timeout=120)
    assert limited.stdout.strip().startswith("cannot write big.png: File too large: the file would pass this "
                                             "shell's size limit (4096 bytes, `ulimit -f`)"), limited
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_optimizer_keeps_this_runs_settings_and_the_saved_buffers():
    # Sweeps 9 and 10: the saved lr, weight decay or momentum came back over this run's (a changed --lr did
    # nothing; an edited arch optimizer's weight decay of -1 was trained with).
    def build(lr, weight_decay):
        parameter = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([parameter], lr=lr, momentum=0.9, weight_decay=weight_decay)
        return parameter, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))

    parameter, saved_optimizer, saved_scheduler = build(0.1, 0.0)
    for _ in range(3):
        parameter.grad = torch.ones(3)
        saved_optimizer.step()
        saved_scheduler.step()
    saved = saved_optimizer.state_dict()
    saved["param_groups"][0]["weight_decay"] = -1.0  # as an edited checkpoint holds it
    _, optimizer, scheduler = build(0.02, 1e-4)
    utils.load_keeping_this_runs_settings(optimizer, saved, scheduler, saved_scheduler.state_dict())
    group = optimizer.param_groups[0]
    assert (group["weight_decay"], group["momentum"], scheduler.last_epoch) == (1e-4, 0.9, 3)
    assert group["lr"] == pytest.approx(0.02 / 4)  # this run's lr at the saved place in the schedule
    buffer = optimizer.state[group["params"][0]]["momentum_buffer"]
    assert torch.equal(buffer, saved_optimizer.state[parameter]["momentum_buffer"])
