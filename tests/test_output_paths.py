"""Every command that writes refuses an output path it cannot use (a file,
a path under a file, /proc, /sys) with one line and exit 2, before doing any
work and without creating anything."""

import importlib.util
from pathlib import Path

import pytest

import latency_build
import latency_predictor
import reproduce_tables
import search_imagenet
import train_imagenet
import utils
from utils import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("search_quality", REPO_ROOT / "benchmarks" / "search_quality.py")
search_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(search_quality)

COMMANDS = {
    "search": (search_imagenet, ["--save", "{out}"]),
    "training": (train_imagenet, ["--save", "{out}"]),
    "reproduce_tables": (reproduce_tables, ["--quick", "--out", "{out}"]),
    "search_quality": (search_quality, ["--quick", "--out", "{out}"]),
    "from-mlp": (latency_build, ["from-mlp", "--mlp", "{mlp}", "--out", "{out}/table.json"]),
}
PLACES = {
    "a file": ("{file}", "is a file, not a folder"),
    "under a file": ("{file}/run", "a part of the path is a file, not a folder"),
    "in /proc": ("/proc/lightnas-run", "cannot"),
    "in /sys": ("/sys/lightnas-run", "cannot"),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("command", COMMANDS)
def test_unusable_output_path_is_one_line(command, place, tmp_path, capsys):
    if command == "from-mlp" and not Path(latency_predictor.AUTHORS_MLP).is_file():
        pytest.skip("../shared/data latency MLP not present")
    module, arguments = COMMANDS[command]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    pattern, message = PLACES[place]
    out = pattern.format(file=blocker)
    if command == "from-mlp" and place == "a file":
        out, message = str(tmp_path), "is a folder; give the table's file name"  # --out names a file here
        arguments = ["from-mlp", "--mlp", "{mlp}", "--out", "{out}"]
    filled = [argument.format(out=out, mlp=latency_predictor.AUTHORS_MLP) for argument in arguments]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, module.get_args_parser(), filled)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["reproduce_tables", "search_quality"])
def test_a_tool_whose_first_write_fails_leaves_no_empty_out_folder(command, tmp_path, monkeypatch, capsys):
    # Sweep 7: a full disk at plan.json was one line, but the --out folder made just before it was left behind
    # (empty), so the next run's checks met a folder the user never asked to keep.
    def full_disk(path, content, indent=2):
        raise utils.UserError(f"cannot write {path}: No space left on device; free some space or choose a "
                              "writable folder, then run again")

    monkeypatch.setattr(utils, "write_json", full_disk)
    module, arguments = COMMANDS[command]
    out = tmp_path / "new" / "out"  # "new" is made for it too
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, module.get_args_parser(), [argument.format(out=out) for argument in arguments])
    assert exit_info.value.code == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
