"""The search end to end on a tiny synthetic dataset: the authors' command
line, outputs, resume, two processes, infeasible targets and --strict."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import data
import latency_predictor
import model_train
import operations
import search_imagenet
import utils
import constraint
from constraint import SearchState, update_lagrange_multiplier
from model_search import SuperNet
from utils import load_checkpoint, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SCHEDULE = ["--epochs", "3", "--freeze_epochs", "1", "--latch_epochs", "1", "--arch_lr_step", "1",
                 "--batch_size_train", "4", "--batch_size_val", "4", "--image_size", "32", "--workers", "0",
                 "--tradeoff_learning_rate", "0.05"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    data.write_synthetic_dataset(root, num_classes=3, train_per_class=4, val_per_class=4, image_size=32, seed=0)
    return str(root)


def run_search(arguments):
    run_cli(search_imagenet.main, search_imagenet.get_args_parser(), arguments)


def read_metrics(save_dir):
    with open(os.path.join(save_dir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def finished_search(tiny_dataset, tmp_path_factory):
    """The authors' command line, shortened by the schedule options."""
    save = str(tmp_path_factory.mktemp("runs") / "search-target-latency-24ms")
    run_search(["--save", save, "--gpus", "1", "--visible", "0", "--target_latency", "24",
                "--dataset", tiny_dataset, "--num_classes", "3"] + TINY_SCHEDULE)
    return save


def test_authors_command_line_writes_every_output(finished_search):
    names = set(os.listdir(finished_search))
    assert {"log.txt", "args.json", "metrics.jsonl", "arch.json", "checkpoint.pth.tar", "warmup.pth.tar",
            "cost.png", "lambda_tau.png", "op_probabilities.png"} <= names
    rows = read_metrics(finished_search)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[0]["val_loss"] is None and rows[1]["val_loss"] is not None  # epoch 1 is the warm-up
    assert len(rows[1]["probabilities"]) == 21 and all(abs(sum(p) - 1) < 1e-5 for p in rows[1]["probabilities"])
    assert len(rows[2]["steps"]["argmax_cost"]) == 3  # 12 val images / batch 4: one lambda update per alpha step
    log = Path(finished_search, "log.txt").read_text()
    assert "epoch 3/3" in log and "written to" in log


def test_arch_json_round_trips_into_the_standalone_network(finished_search):
    result = json.loads(Path(finished_search, "arch.json").read_text())
    predictor = latency_predictor.load_predictor()
    arch_config = model_train.resolve_arch_config(os.path.join(finished_search, "arch.json"))
    assert arch_config == result["arch_config"] and arch_config[0] == "MBK3E1"
    assert result["predicted"] == pytest.approx(predictor.cost(arch_config))
    assert result["target"] == 24 and result["unit"] == "ms" and result["predictor"] == predictor.identifier
    checkpoint = load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"))
    assert checkpoint["epoch"] == 3
    alpha = checkpoint["state_dict"]["alpha"]
    assert operations_names(alpha.argmax(-1).tolist()) == arch_config
    model_train.LightNet(arch_config, num_classes=3)  # builds


def operations_names(indices):
    import operations

    return operations.indices_to_arch(indices)


def test_a_stopped_search_resumed_after_its_record_was_edited_is_refused(tiny_dataset, tmp_path, capsys):
    # Sweep 13: a checkpoint's lambda edited to 1e11 (under the 1e12 bound) threw alpha to the cheapest ops in
    # one step and the search ended 22% under its target; resumed after its metrics.jsonl was deleted, a search
    # finished with rows and figures for its later epochs only.
    save = tmp_path / "stopped"
    common = ["--save", str(save), "--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3"]
    run_search(common + TINY_SCHEDULE + ["--stop_after_epoch", "2"])
    checkpoint_path = save / "checkpoint.pth.tar"
    kept = checkpoint_path.read_bytes()
    written = {name: (save / name).read_text() for name in ("args.json", "log.txt")}
    checkpoint = load_checkpoint(str(checkpoint_path))
    torch.save(dict(checkpoint, tradeoff=1e11), checkpoint_path)
    assert "its lambda is 1e+11, but its epoch 2 logged" in resume_refusal(common + ["--resume", str(save)], capsys)
    # Sweep 15 (#180, in training): another search's checkpoint of the same epoch put in its place (the same
    # settings: its rows differ from this folder's in their times).
    other = tmp_path / "other"
    run_search(common[:1] + [str(other)] + common[2:] + TINY_SCHEDULE + ["--stop_after_epoch", "2"])
    checkpoint_path.write_bytes((other / "checkpoint.pth.tar").read_bytes())
    assert "holds other rows up to epoch 2 than the checkpoint records" in resume_refusal(
        common + ["--resume", str(save)], capsys)
    checkpoint_path.write_bytes(kept)
    # Sweep 17 #96: an earlier row edited (epoch 1's train loss; the checkpoint's epoch's row kept) was carried
    # on, and the finished search's seal then vouched for it.
    metrics = (save / "metrics.jsonl").read_text()
    first, rest = metrics.split("\n", 1)
    (save / "metrics.jsonl").write_text(json.dumps(dict(json.loads(first), train_loss=0.123)) + "\n" + rest)
    assert "holds other rows up to epoch 2 than the checkpoint records" in resume_refusal(
        common + ["--resume", str(save)], capsys)
    (save / "metrics.jsonl").write_text(metrics)
    (save / "metrics.jsonl").unlink()
    assert "metrics.jsonl is missing or empty (deleted?)" in resume_refusal(common + ["--resume", str(save)], capsys)
    assert not (save / "arch.json").exists()
    # Sweep 14: each refusal had first rewritten the kept args.json and appended to its log.txt.
    assert {name: (save / name).read_text() for name in written} == written


def test_stop_and_resume_equals_an_uninterrupted_search(finished_search, tiny_dataset, tmp_path):
    save = str(tmp_path / "interrupted")
    common = ["--save", save, "--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3"]
    run_search(common + TINY_SCHEDULE + ["--stop_after_epoch", "2"])
    assert len(read_metrics(save)) == 2 and not os.path.exists(os.path.join(save, "arch.json"))
    run_search(common + TINY_SCHEDULE + ["--resume", save])
    resumed = load_checkpoint(os.path.join(save, "checkpoint.pth.tar"))
    uninterrupted = load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"))
    assert torch.equal(resumed["state_dict"]["alpha"], uninterrupted["state_dict"]["alpha"])
    assert resumed["tradeoff"] == uninterrupted["tradeoff"]
    assert torch.equal(resumed["state_dict"]["classifier.3.weight"], uninterrupted["state_dict"]["classifier.3.weight"])
    assert [row["epoch"] for row in read_metrics(save)] == [1, 2, 3]


def test_warmup_checkpoint_starts_a_search_for_another_target(finished_search, tiny_dataset, tmp_path):
    save = str(tmp_path / "search-26ms")
    run_search(["--save", save, "--target_latency", "26", "--dataset", tiny_dataset, "--num_classes", "3",
                "--resume", os.path.join(finished_search, "warmup.pth.tar")] + TINY_SCHEDULE)
    rows = read_metrics(save)
    assert [row["epoch"] for row in rows] == [2, 3] and rows[-1]["target"] == 26
    warmup = load_checkpoint(os.path.join(finished_search, "warmup.pth.tar"))
    assert warmup["epoch"] == 1


@pytest.mark.parametrize("case,arguments,message", [
    ("infeasible", ["--target_latency", "1"], "outside what this search space can reach"),
    ("resume missing", ["--resume", "nowhere/checkpoint.pth.tar"], "--resume: nowhere/checkpoint.pth.tar not found"),
    # Sweep 8. Before: "start it again without --resume", which the same --save then refused (its earlier files).
    ("resume before any checkpoint", ["--resume", "{empty}"], "holds no checkpoint.pth.tar yet (the search stopped "
                                                               "before its first epoch ended): nothing to resume; "
                                                               "delete {empty} and start the search again"),
    # Sweep 5. Before: a folder no search ran in (a dataset's) was said to hold a search stopped early.
    ("resume a folder without a search", ["--resume", "{no_search}"], "is a folder no search ran in"),
    ("divisible", ["--gpus", "2", "--device", "cpu", "--batch_size_train", "5"], "must be divisible by --gpus 2"),
    ("freeze", ["--freeze_epochs", "3"], "--freeze_epochs must be in [0, --epochs)"),
    ("fixed without w", ["--penalty", "fixed"], "--penalty fixed needs a non-negative --penalty_weight"),
    ("w without fixed", ["--penalty_weight", "0.1"], "--penalty_weight applies to --penalty fixed only"),
    ("nan lr", ["--learning_rate", "nan"], "--learning_rate must be in (0, 10], got nan"),
    ("nan lambda", ["--tradeoff", "nan"], "--tradeoff must be at most 1e+06 in size, got nan"),
    ("nan tau", ["--tau_max", "nan"], "--tau_max must be in (0, 100], got nan"),
    ("inf tau decay", ["--tau_decay", "inf"], "--tau_decay must be non-negative, got inf"),
    ("tiny images", ["--image_size", "1"], "--image_size must be in [16, 2048] (pixels), got 1"),
    ("stop before start", ["--stop_after_epoch", "-1"], "--stop_after_epoch must be at least 1, got -1"),
    ("negative latch", ["--latch_tolerance", "-1"], "--latch_tolerance must be non-negative and finite, got '-1'"),
    ("latch word", ["--latch_tolerance", "half"], "--latch_tolerance must be a number such as 0.15 or a share"),
    ("negative clip", ["--grad_clip", "-1"], "--grad_clip must be positive, got -1.0"),
    ("momentum 1", ["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
    ("inf weight", ["--penalty", "fixed", "--penalty_weight", "inf"], "--penalty_weight must be in [0, 1e+06], got inf"),
    # Sweep 8. Before: eta rose from 3 to the floor of 5, though --help calls the floor what eta is lowered to.
    ("floor above eta", ["--eta", "3", "--eta_decay", "linear", "--eta_floor", "5"],
     "--eta_floor 5 is above --eta 3"),
])
def test_bad_settings_exit_2_with_one_line(case, arguments, message, tiny_dataset, tmp_path, capsys):
    base = ["--save", str(tmp_path / "run"), "--dataset", tiny_dataset, "--num_classes", "3"] + TINY_SCHEDULE
    (tmp_path / "killed-early").mkdir()  # a search killed before its first checkpoint: its log, no checkpoint
    (tmp_path / "killed-early" / utils.LOG_NAME).write_text("searching ...\n")
    (tmp_path / "no-search").mkdir()
    arguments = [argument.replace("{empty}", str(tmp_path / "killed-early"))
                 .replace("{no_search}", str(tmp_path / "no-search")) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        run_search(base + arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message.replace("{empty}", str(tmp_path / "killed-early")) in error, error
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_a_second_search_into_a_busy_folder_is_refused(tiny_dataset, tmp_path, capsys):
    """While one run holds --save (simulated by holding its lock here), a
    second is refused with one line and writes nothing."""
    save = tmp_path / "busy"
    with utils.run_folder_lock(str(save)):
        with pytest.raises(SystemExit) as exit_info:
            run_search(["--save", str(save), "--dataset", tiny_dataset, "--num_classes", "3"] + TINY_SCHEDULE)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == (f"error: --save {save} is in use by another run; wait for it "
                                                   "to end or choose another --save")
        assert os.listdir(save) == []


def refused_resume(checkpoint, tiny_dataset, tmp_path, capsys, *options):
    """Resume a tiny search from `checkpoint` (a dict, saved here, or a
    path); the one error line it must end with (nothing written)."""
    if isinstance(checkpoint, dict):
        torch.save(checkpoint, tmp_path / "damaged.pth.tar")
        checkpoint = tmp_path / "damaged.pth.tar"
    with pytest.raises(SystemExit) as exit_info:
        run_search(["--save", str(tmp_path / "run"), "--dataset", tiny_dataset, "--num_classes", "3",
                    "--resume", str(checkpoint), *options] + TINY_SCHEDULE)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and not (tmp_path / "run").exists(), error
    return error


@pytest.mark.parametrize("damage", ["search_space_hash", "args", "state_dict", "empty args", "args.target_latency"])
def test_an_incomplete_search_checkpoint_is_refused_in_one_line(damage, finished_search, tiny_dataset, tmp_path,
                                                                capsys):
    # Before: empty args were reported as "used --epochs None", a missing target as a KeyError traceback.
    checkpoint = load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"))
    if damage == "state_dict":
        checkpoint["state_dict"] = {}
    elif damage == "empty args":
        checkpoint["args"] = {}
    elif damage == "args.target_latency":
        del checkpoint["args"]["target_latency"]
    else:
        del checkpoint[damage]
    error = refused_resume(checkpoint, tiny_dataset, tmp_path, capsys)
    assert "is an incomplete search checkpoint" in error, error
    if damage.startswith("args.") or damage == "empty args":
        assert "(missing: args." in error, error


@pytest.mark.parametrize("damage", ["no alpha", "a weight of another shape"])
def test_a_search_checkpoint_whose_supernet_does_not_fit_is_refused_in_one_line(damage, finished_search, tiny_dataset,
                                                                                 tmp_path, capsys):
    # Before: load_state_dict's RuntimeError traceback.
    checkpoint = load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"))
    state_dict = checkpoint["state_dict"]
    if damage == "no alpha":
        del state_dict["alpha"]
    else:
        name = next(key for key in state_dict if key != "alpha")
        state_dict[name] = torch.zeros(1)
    error = refused_resume(checkpoint, tiny_dataset, tmp_path, capsys)
    expected = "missing: alpha" if damage == "no alpha" else "wrong shape: "
    assert "does not fit these settings" in error and expected in error, error


def test_a_table_of_the_same_name_with_other_costs_is_not_taken_for_the_searchs_own(finished_search, tiny_dataset,
                                                                                     tmp_path, capsys):
    # Before: the search went on with the other costs, its arch.json labelled with the old table's name.
    table = json.loads(Path(latency_predictor.DEFAULT_LUT).read_text())
    for entry in table["entries"].values():
        entry["value"] *= 1.01
    same_name = tmp_path / "elsewhere" / os.path.basename(latency_predictor.DEFAULT_LUT)
    same_name.parent.mkdir()
    same_name.write_text(json.dumps(table))
    error = refused_resume(os.path.join(finished_search, "checkpoint.pth.tar"), tiny_dataset, tmp_path, capsys,
                           "--lut", str(same_name))
    assert "has the same name but other costs" in error, error


@pytest.mark.parametrize("checkpoint_name, option, value", [
    ("checkpoint.pth.tar", "--learning_rate", "0.5"),  # shaped the weights: never
    ("warmup.pth.tar", "--learning_rate", "0.5"),
    ("checkpoint.pth.tar", "--arch_learning_rate", "0.3"),  # drives alpha: not once alpha has moved
    ("checkpoint.pth.tar", "--latch", "hold"),
])
def test_a_resume_with_other_settings_is_refused_by_name(checkpoint_name, option, value, finished_search,
                                                         tiny_dataset, tmp_path, capsys):
    # Before: the search went on with the new value and recorded it in arch.json as if it had run throughout.
    error = refused_resume(os.path.join(finished_search, checkpoint_name), tiny_dataset, tmp_path, capsys,
                           option, value)
    assert f"used {option} " in error and "use the same settings to continue" in error, error


def test_a_saved_setting_of_the_wrong_kind_is_called_damage_not_another_setting(finished_search, tiny_dataset,
                                                                                 tmp_path, capsys):
    # Sweep 7: args.epochs "3" (text) was "used --epochs 3, this run 3; use the same settings to continue".
    checkpoint = load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"))
    checkpoint["args"]["epochs"] = str(checkpoint["args"]["epochs"])
    error = refused_resume(checkpoint, tiny_dataset, tmp_path, capsys)
    assert f"is damaged (its --epochs is '{checkpoint['args']['epochs']}', not a value of that option)" in error, error


def test_a_resume_asked_to_stop_before_its_checkpoint_is_refused(finished_search, tiny_dataset, tmp_path, capsys):
    # Before: the search ran on past the asked epoch (to its end) without a word.
    error = refused_resume(os.path.join(finished_search, "warmup.pth.tar"), tiny_dataset, tmp_path, capsys,
                           "--stop_after_epoch", "1")
    assert "is already after epoch 1" in error, error


def test_resume_from_another_target_is_refused(finished_search, tiny_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_search(["--save", str(tmp_path / "other"), "--target_latency", "22", "--dataset", tiny_dataset,
                    "--num_classes", "3", "--resume", finished_search] + TINY_SCHEDULE)
    assert "start from its warmup.pth.tar" in capsys.readouterr().err


def test_fixed_penalty_baseline_needs_no_lambda_and_cannot_switch_on_resume(finished_search, tiny_dataset, tmp_path,
                                                                          capsys):
    save = str(tmp_path / "fixed")
    options = ["--dataset", tiny_dataset, "--num_classes", "3", "--arch_learning_rate", "0.5"] + TINY_SCHEDULE
    # The fixed penalty has no lambda and no latch: their settings would be refused.
    fixed_options = utils.drop_options(search_imagenet.get_args_parser(), options,
                                       search_imagenet.LAGRANGE_ONLY_SETTINGS)
    assert "--latch_epochs" not in fixed_options and "--tradeoff_learning_rate" not in fixed_options
    run_search(["--save", save, "--target_latency", "24", "--penalty", "fixed", "--penalty_weight", "50",
                "--resume", os.path.join(finished_search, "warmup.pth.tar")] + fixed_options)
    rows = read_metrics(save)
    assert all(row["tradeoff"] == 0.0 and not row["latched"] for row in rows)
    with open(os.path.join(save, "arch.json")) as file:
        result = json.load(file)
    assert result["search"]["penalty"] == "fixed" and result["search"]["penalty_weight"] == 50
    # A heavy fixed penalty only makes the network cheaper: the argmax and the
    # expected cost under alpha's op probabilities both fall.
    predictor = latency_predictor.load_predictor(None)
    warmup_row = read_metrics(finished_search)[0]
    expected_cost = [float(predictor.expected_cost(torch.tensor(row["probabilities"])))
                     for row in (warmup_row, rows[-1])]
    assert result["predicted"] < warmup_row["cost"] - 1.0
    assert expected_cost[1] < expected_cost[0] - 2.0, expected_cost
    with pytest.raises(SystemExit):
        run_search(["--save", save, "--target_latency", "24", "--resume", save] + fixed_options)
    assert "fixed penalty); a search for another target, predictor or penalty from it needs a new --save" in (
        capsys.readouterr().err)


def test_existing_search_is_not_overwritten(finished_search, tiny_dataset, capsys):
    with pytest.raises(SystemExit):
        run_search(["--save", finished_search, "--dataset", tiny_dataset, "--num_classes", "3"] + TINY_SCHEDULE)
    assert "already holds a search" in capsys.readouterr().err


def test_a_training_folder_given_to_the_search_is_named_as_one(finished_search, tiny_dataset, tmp_path, capsys):
    assert utils.checkpoint_kind(load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"))) == "search"
    training = tmp_path / "train-run"
    training.mkdir()
    torch.save({"state_dict": {}, "optimizer": {}, "scheduler": {}, "epoch": 3}, training / "checkpoint.pth.tar")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoint.pth.tar").write_bytes(b"not a checkpoint")
    cases = [
        (["--save", str(training)], f"--save {training} holds a training run (train_imagenet.py), not a search: "
                                    "choose another --save"),
        (["--save", str(foreign)], f"--save {foreign} holds a checkpoint.pth.tar this project did not write, not a "
                                   "search"),
        (["--save", str(tmp_path / "new"), "--resume", str(training / "checkpoint.pth.tar")],
         "(it is a training run's: continue it with train_imagenet.py --resume)"),
    ]
    for options, message in cases:
        with pytest.raises(SystemExit):
            run_search(["--dataset", tiny_dataset, "--num_classes", "3"] + TINY_SCHEDULE + options)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (options, lines)


def _search_and_save_replica(args):
    """Runs in each spawned process: the script's own search, then every
    rank (not just rank 0) saves what it ended with, for the test to compare."""
    context = utils.init_distributed(args.device_type)
    try:
        searcher = search_imagenet.run(args, context)
        torch.save({"alpha": searcher.model.alpha.detach(), "tradeoff": searcher.state.tradeoff,
                    "parameters": dict(searcher.model.named_parameters())},
                   Path(args.save) / f"replica-{context.rank}.pt")
    finally:
        utils.cleanup_distributed()


@pytest.mark.parametrize("split", [[], ["--arch_split_from_train", "0.5"]])
def test_alpha_sees_images_framed_as_the_weights_saw_theirs(split, tiny_dataset):
    """--augment flip trains the weights on whole images, so alpha's images
    are not zoomed either; the release's augmentation keeps the authors'
    val framing (resize to 1/0.875, centre crop)."""
    for augment, resized in (("flip", 32), ("release", round(32 / data.EVAL_CROP_RATIO))):
        args = search_imagenet.get_args_parser().parse_args(
            ["--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3", "--augment", augment,
             *split] + TINY_SCHEDULE)
        search_imagenet.resolve_schedule(args)
        _, arch_set, _ = search_imagenet.build_datasets(args)
        images = arch_set.dataset if split else arch_set
        resize, crop = images.transform.transforms[:2]
        assert (resize.size, crop.size) == (resized, (32, 32)), augment


@pytest.mark.slow
def test_two_processes_keep_alpha_lambda_and_weights_identical(tiny_dataset, tmp_path):
    save = tmp_path / "two-processes"
    args = search_imagenet.get_args_parser().parse_args(
        ["--save", str(save), "--device", "cpu", "--gpus", "2", "--target_latency", "24", "--dataset", tiny_dataset,
         "--num_classes", "3"] + TINY_SCHEDULE)
    search_imagenet.resolve_schedule(args)
    search_imagenet.validate_settings(args)
    args.device_type = "cpu"
    save.mkdir()
    utils.launch(_search_and_save_replica, args, 2)

    replicas = [torch.load(save / f"replica-{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert torch.equal(replicas[0]["alpha"], replicas[1]["alpha"])
    assert replicas[0]["tradeoff"] == replicas[1]["tradeoff"]
    assert all(torch.equal(replicas[0]["parameters"][name], replicas[1]["parameters"][name])
               for name in replicas[0]["parameters"])
    rows = read_metrics(save)
    # The script's own check: every epoch each rank reports (lambda, sha256
    # of its alpha), and the last report is what each rank ended with.
    for row in rows:
        assert len(row["process_states"]) == 2
        assert row["process_states"][0] == row["process_states"][1]
    for replica in replicas:
        digest = hashlib.sha256(replica["alpha"].contiguous().numpy().tobytes()).hexdigest()
        assert rows[-1]["process_states"][0] == [replica["tradeoff"], digest]
    checkpoint = torch.load(save / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["alpha"], replicas[0]["alpha"])
    assert len({row["process_states"][0][1] for row in rows}) == len(rows)  # alpha moved every epoch
    assert "2 process(es)" in (save / "log.txt").read_text()


@pytest.mark.parametrize("options, target, band", [
    (["--land_within", "1"], 15.0, (14.85, 15.15)),
    (["--strict"], 15.0, (-float("inf"), 15.0)),
    (["--land_within", "2", "--strict"], 33.0, (32.34, 33.0)),
    (["--skip_majority"], 30.0, (29.7, 30.3)),  # the tiny search's skips are all minorities: none is kept
])
def test_land_within_and_strict_project_the_final_alpha_into_the_band(finished_search, tiny_dataset, tmp_path,
                                                                       options, target, band):
    save = tmp_path / "projected"
    run_search(["--save", str(save), "--dataset", tiny_dataset, "--num_classes", "3", "--target_latency", str(target),
                "--resume", os.path.join(finished_search, "warmup.pth.tar")] + TINY_SCHEDULE + options)
    result = json.loads((save / "arch.json").read_text())
    predictor = latency_predictor.load_predictor()
    low, high = band
    assert low <= predictor.cost(result["arch_config"]) <= high
    assert result["predicted"] == pytest.approx(predictor.cost(result["arch_config"]))
    raw = result["raw_argmax"]["arch_config"]
    alpha = load_checkpoint(str(save / "checkpoint.pth.tar"), what="test")["state_dict"]["alpha"].double()
    assert raw == operations.indices_to_arch(alpha.argmax(dim=-1).tolist())  # the raw argmax is the search's own
    assert result["raw_argmax"]["predicted"] == pytest.approx(predictor.cost(raw))
    assert result["changed_layers"] == [layer for layer, (a, b) in enumerate(zip(raw, result["arch_config"]))
                                        if a != b]
    assert result["changed_layers"]  # the tiny search's argmax is nowhere near these targets
    log_p = torch.log_softmax(alpha, dim=-1)
    given_up = sum(float(log_p[layer - 1, operations.SEARCHABLE_OPS.index(raw[layer])]
                         - log_p[layer - 1, operations.SEARCHABLE_OPS.index(result["arch_config"][layer])])
                   for layer in result["changed_layers"])
    assert result["log_probability_given_up"] == pytest.approx(given_up) and given_up > 0
    if "--skip_majority" in options:
        assert operations.SKIP not in result["arch_config"]
        assert result["minority_skips_kept_out"] == [layer for layer, op in enumerate(raw) if op == operations.SKIP]


def test_pick_among_takes_the_supernets_best_of_k_candidates_in_the_band(finished_search, tiny_dataset, tmp_path):
    save = tmp_path / "picked"
    run_search(["--save", str(save), "--dataset", tiny_dataset, "--num_classes", "3", "--target_latency", "24",
                "--resume", os.path.join(finished_search, "checkpoint.pth.tar"), "--pick_among", "5"] + TINY_SCHEDULE)
    result = json.loads((save / "arch.json").read_text())
    pick, predictor = result["pick"], latency_predictor.load_predictor()
    assert pick["band"] == pytest.approx([23.76, 24.24])
    candidates = pick["candidates"]
    assert len(candidates) == 5 and len({tuple(c["arch_config"]) for c in candidates}) == 5
    alpha = load_checkpoint(os.path.join(finished_search, "checkpoint.pth.tar"), what="test")["state_dict"]["alpha"]
    log_p = torch.log_softmax(alpha.double(), dim=-1).numpy()
    indices = [operations.arch_to_indices(c["arch_config"]) for c in candidates]
    assert indices[0] == constraint.project_to_band(log_p, predictor, 23.76, 24.24)  # alpha's own choice first
    for candidate, ops in zip(candidates, indices):
        assert 23.76 <= candidate["predicted"] <= 24.24
        assert candidate["predicted"] == pytest.approx(predictor.cost(candidate["arch_config"]))
        assert candidate["log_probability"] == pytest.approx(float(log_p[range(21), ops].sum()))
        assert 0 <= candidate["supernet_top1"] <= 100
    drawn = [c["log_probability"] for c in candidates[1:]]
    assert drawn == sorted(drawn, reverse=True) and max(drawn) <= candidates[0]["log_probability"]
    best = max(c["supernet_top1"] for c in candidates)
    assert candidates[pick["chosen"]]["supernet_top1"] == best
    assert pick["chosen"] == min(i for i, c in enumerate(candidates) if c["supernet_top1"] == best)  # ties: probable
    assert result["arch_config"] == candidates[pick["chosen"]]["arch_config"]
    assert result["raw_argmax"]["arch_config"] == operations.indices_to_arch(alpha.argmax(dim=-1).tolist())
    assert "--pick_among" in (save / "log.txt").read_text()


def latch_run(tiny_dataset, finished_search, save, options):
    """The two search epochs from the tiny warm-up with `options`; the metrics
    rows and the resolved settings."""
    arguments = (["--save", str(save), "--dataset", tiny_dataset, "--num_classes", "3", "--target_latency", "24",
                  "--resume", os.path.join(finished_search, "warmup.pth.tar")] + TINY_SCHEDULE
                 + ["--latch_epochs", "2", "--arch_learning_rate", "0.5"] + options)
    run_search(arguments)
    settings = search_imagenet.get_args_parser().parse_args(arguments)
    search_imagenet.resolve_schedule(settings)
    return [row for row in read_metrics(save) if row["steps"]["argmax_cost"]], settings


def test_scale_latch_engages_and_scales_alpha_lr_by_the_relative_miss(finished_search, tiny_dataset, tmp_path):
    rows, settings = latch_run(tiny_dataset, finished_search, tmp_path / "scale",
                               ["--latch", "scale", "--latch_tolerance", "30%"])
    checked = 0
    for row in rows:
        steps = row["steps"]
        scheduled = search_imagenet.scheduled_arch_lr(row["epoch"] - 1, settings)
        for index in range(1, len(steps["argmax_cost"])):
            if steps["latched"][index]:  # the lr of a step follows the argmax before it
                assert steps["arch_lr"][index] == pytest.approx(
                    scheduled * abs(steps["argmax_cost"][index - 1] / 24 - 1))
                checked += 1
            else:
                assert steps["arch_lr"][index] == pytest.approx(scheduled)
    assert checked > 0  # the latch engaged


def test_hold_latch_keeps_the_argmax_in_the_band_with_lambda_held_at_zero(finished_search, tiny_dataset, tmp_path):
    rows, settings = latch_run(tiny_dataset, finished_search, tmp_path / "hold",
                               ["--latch", "hold", "--latch_tolerance", "30%"])
    steps = {name: sum((row["steps"][name] for row in rows), []) for name in rows[0]["steps"]}
    latched = [index for index, on in enumerate(steps["latched"]) if on]
    assert latched, "the latch never engaged"
    for index in latched:
        assert abs(steps["argmax_cost"][index] / 24 - 1) < 0.30
        assert steps["tradeoff"][index] == 0.0
    assert latched == list(range(latched[0], len(steps["latched"])))  # once latched, always latched


def test_a_held_step_that_leaves_the_band_is_undone_in_the_layers_it_flipped(finished_search, tiny_dataset, tmp_path,
                                                                             monkeypatch):
    # Force the undo: every held step counts as one that left the band, so
    # every layer a held step flips must be put back and the argmax frozen.
    monkeypatch.setattr(constraint.Latch, "must_undo", lambda latch, state, new_cost: latch.holding(state))
    restored = []
    real_restore = constraint.restore_flipped_layers

    def counting_restore(*arguments):
        flipped = real_restore(*arguments)
        restored.append(int(flipped.sum()))
        return flipped

    monkeypatch.setattr(constraint, "restore_flipped_layers", counting_restore)
    rows, _ = latch_run(tiny_dataset, finished_search, tmp_path / "undo", ["--latch", "hold", "--latch_tolerance", "30%"])
    steps = {name: sum((row["steps"][name] for row in rows), []) for name in rows[0]["steps"]}
    latched = [index for index, on in enumerate(steps["latched"]) if on]
    assert latched and all(steps["undone"][index] for index in latched)
    assert not any(undone for undone, on in zip(steps["undone"], steps["latched"]) if not on)
    assert len(restored) == len(latched) and sum(restored) > 0  # some held steps did flip a layer
    held = [row["arch_config"] for row in rows if all(row["steps"]["latched"])]
    assert held and all(arch == held[0] for arch in held)  # every flip put back: the argmax never moved


def test_hold_with_lambda_kept_goes_on_following_the_multiplier_rule(finished_search, tiny_dataset, tmp_path):
    rows, settings = latch_run(tiny_dataset, finished_search, tmp_path / "hold-keep",
                               ["--latch", "hold", "--latch_tolerance", "30%", "--hold_lambda", "keep"])
    steps = {name: sum((row["steps"][name] for row in rows), []) for name in rows[0]["steps"]}
    assert any(steps["latched"]), "the latch never engaged"
    before = 0.0  # a search from the warm-up starts with lambda 0
    for cost, after in zip(steps["argmax_cost"], steps["tradeoff"]):
        assert after == pytest.approx(update_lagrange_multiplier(before, cost, 24, settings.tradeoff_learning_rate))
        before = after
    assert any(value != 0.0 for value, on in zip(steps["tradeoff"], steps["latched"]) if on)


def test_lambda_follows_the_sign_of_the_miss_over_a_run(finished_search, tiny_dataset, tmp_path):
    rows, _ = latch_run(tiny_dataset, finished_search, tmp_path / "lambda", ["--latch_tolerance", "0"])
    costs = sum((row["steps"]["argmax_cost"] for row in rows), [])
    tradeoffs = [0.0] + sum((row["steps"]["tradeoff"] for row in rows), [])
    assert len(costs) == 6
    for cost, before, after in zip(costs, tradeoffs, tradeoffs[1:]):
        miss = cost / 24 - 1
        assert after * miss >= 0  # a too-slow argmax never has a negative lambda, a too-fast one no positive
        if before * miss >= 0:  # no reset: one ascent step of exactly step * miss
            assert after - before == pytest.approx(0.05 * miss)


def test_a_search_stops_on_an_overflowed_batchnorm_statistic_though_its_losses_are_finite(tmp_path):
    searcher = SimpleNamespace(model=SuperNet(3, shortcuts=True), state=SearchState(tradeoff=0.0),
                               context=utils.init_distributed("cpu"), num_classes=3)
    args = SimpleNamespace(save=str(tmp_path))
    search_imagenet.stop_if_diverged(2, 2.3, 2.3, searcher, args)  # all finite: goes on
    # Before: a finite loss of 400 (25 uniform guesses' loss is 27.5 here) went on to write an architecture.
    with pytest.raises(utils.UserError, match=re.escape("the search diverged in epoch 3: the weights' loss is 400")):
        search_imagenet.stop_if_diverged(2, 400.0, 2.3, searcher, args)
    with pytest.raises(utils.UserError, match=re.escape("alpha's loss is 400")):
        search_imagenet.stop_if_diverged(2, 2.3, 400.0, searcher, args)
    searcher.model.first_conv[1].running_var[0] = float("inf")
    with pytest.raises(utils.UserError, match=re.escape("the search diverged in epoch 3: not finite: "
                                                        "first_conv.1.running_var; check --learning_rate")):
        search_imagenet.stop_if_diverged(2, 2.3, 2.3, searcher, args)


def test_a_search_that_diverges_stops_with_one_line_and_no_architecture(tiny_dataset, tmp_path, capsys):
    # The largest steps the options allow, unclipped: the loss reaches 1e5 in the first epoch.
    save = tmp_path / "diverged"
    what = "the weights' loss is"
    with pytest.raises(SystemExit) as stop:
        run_search(["--save", str(save), "--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3",
                    "--learning_rate", "10", "--grad_clip", "1e30", "--eta", "100"] + TINY_SCHEDULE)
    assert stop.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not the bars
    assert len(error) == 1 and "the search diverged in epoch" in error[0] and what in error[0], error
    assert "No architecture was written" in error[0]
    assert not (save / "arch.json").exists()
    if (save / search_imagenet.CHECKPOINT_NAME).exists():  # only finite states were checkpointed
        checkpoint = load_checkpoint(str(save / search_imagenet.CHECKPOINT_NAME))
        assert torch.isfinite(checkpoint["state_dict"]["alpha"]).all() and checkpoint["epoch"] >= 1
        assert f"(epoch {checkpoint['epoch']}) is in" in error[0]


def test_a_checkpoint_with_a_nan_alpha_is_refused_on_resume(finished_search, tiny_dataset, tmp_path, capsys):
    checkpoint = load_checkpoint(os.path.join(finished_search, search_imagenet.WARMUP_CHECKPOINT_NAME))
    checkpoint["state_dict"]["alpha"][3, 2] = float("nan")
    damaged = tmp_path / "nan.pth.tar"
    torch.save(checkpoint, damaged)
    with pytest.raises(SystemExit) as stop:
        run_search(["--save", str(tmp_path / "resumed"), "--target_latency", "24", "--dataset", tiny_dataset,
                    "--num_classes", "3", "--resume", str(damaged)] + TINY_SCHEDULE)
    assert stop.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "alpha holds a value that is not finite" in error[0] and "cannot be resumed" in error[0]
    assert not (tmp_path / "resumed" / "arch.json").exists()


@pytest.mark.parametrize("field, value, expected", [
    ("epoch", -1, "records epoch -1"),
    ("epoch", 0, "records epoch 0"),  # sweep 8: the warm-up and every epoch redone on a trained supernet
    ("epoch", 1.5, "records epoch 1.5"),
    ("epoch", 10**9, "records epoch 1000000000"),  # before: the search skipped every epoch and wrote its result
    ("latched", "yes", "is damaged (its latch or lambda"),  # before: the string was taken as True
    ("tradeoff", float("nan"), "is damaged (its latch or lambda"),
    # Sweep 12: resumed, the search diverged and advised a smaller --tradeoff_learning_rate.
    ("tradeoff", 1e308, "is damaged: its lambda is 1e+308, beyond 1e+12, which no search reaches"),
])
def test_a_checkpoint_with_a_damaged_counter_or_state_is_refused(field, value, expected, finished_search,
                                                                  tiny_dataset, tmp_path, capsys):
    checkpoint = load_checkpoint(os.path.join(finished_search, search_imagenet.WARMUP_CHECKPOINT_NAME))
    checkpoint[field] = value
    damaged = tmp_path / "damaged.pth.tar"
    torch.save(checkpoint, damaged)
    error = resume_refusal(["--save", str(tmp_path / "resumed"), "--target_latency", "24", "--dataset",
                            tiny_dataset, "--num_classes", "3", "--resume", str(damaged)], capsys)
    assert expected in error
    assert not (tmp_path / "resumed" / "arch.json").exists()


def set_momentum_buffers(optimizer_state, value):
    for entry in optimizer_state["state"].values():
        entry["momentum_buffer"] = value


@pytest.mark.parametrize("damage, path", [
    (lambda state: state["weight_optimizer"]["param_groups"][0].update(momentum="0.9"),
     "weight_optimizer.param_groups.0.momentum"),
    (lambda state: set_momentum_buffers(state["weight_optimizer"], torch.zeros(3)),
     "weight_optimizer.state.0.momentum_buffer"),
    (lambda state: state["arch_optimizer"]["param_groups"][0].update(lr=None), "arch_optimizer.param_groups.0.lr"),
    (lambda state: state["weight_scheduler"].update(base_lrs="0.1"), "weight_scheduler.base_lrs"),
    # Sweep 9: a NaN lr was "the search diverged ...; the last finite state is in <this very checkpoint>".
    (lambda state: state["weight_optimizer"]["param_groups"][0].update(lr=float("nan")),
     "weight_optimizer.param_groups.0.lr"),
])
def test_a_checkpoint_whose_optimizer_or_schedule_was_edited_is_refused(damage, path, finished_search, tiny_dataset,
                                                                       tmp_path, capsys):
    # Sweep 9 (the training's; the search loads the same kinds of state). Before: torch took any of these and
    # failed at the first step with a TypeError or RuntimeError traceback.
    checkpoint = load_checkpoint(os.path.join(finished_search, search_imagenet.WARMUP_CHECKPOINT_NAME))
    damage(checkpoint)
    damaged = tmp_path / "damaged.pth.tar"
    torch.save(checkpoint, damaged)
    error = resume_refusal(["--save", str(tmp_path / "resumed"), "--target_latency", "24", "--dataset",
                            tiny_dataset, "--num_classes", "3", "--resume", str(damaged)], capsys)
    assert f"the checkpoint's optimizers or schedule are damaged or of another version (wrong kind or shape: {path}" \
        in error, error


def resume_refusal(arguments, capsys):
    """The one error line of a refused search, after checking it exits 2."""
    with pytest.raises(SystemExit) as stop:
        run_search(arguments + TINY_SCHEDULE)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("change, expected", [
    ("more images", "the weights' images, 12 images then, 15 now"),
    ("other files", "the weights' images, the same number of images, but other files"),
])
def test_resume_on_another_dataset_is_refused_and_writes_nothing(change, expected, finished_search, tiny_dataset,
                                                                 tmp_path, capsys):
    other = tmp_path / "other"
    if change == "more images":
        data.write_synthetic_dataset(other, num_classes=3, train_per_class=5, val_per_class=4, image_size=32, seed=0)
    else:
        data.write_synthetic_dataset(other, num_classes=3, train_per_class=4, val_per_class=4, image_size=32, seed=0)
        first = sorted((other / "train").rglob("*.png"))[0]
        first.rename(first.with_name("renamed.png"))
    save = tmp_path / "branch"
    error = resume_refusal(["--save", str(save), "--target_latency", "26", "--dataset", str(other),
                            "--num_classes", "3", "--resume", os.path.join(finished_search, "warmup.pth.tar")], capsys)
    assert "searched on another dataset" in error and expected in error, error
    assert not save.exists()  # nothing written: not even args.json or an empty log


def test_resume_without_the_dataset_it_searched_is_refused(finished_search, tiny_dataset, tmp_path, capsys):
    # Sweep 6. Before: left out, --dataset meant the synthetic demo set, refused only as "3 classes, this
    # dataset 10".
    save = tmp_path / "branch"
    error = resume_refusal(["--save", str(save), "--resume", os.path.join(finished_search, "warmup.pth.tar")],
                           capsys)
    assert f"searched on --dataset {tiny_dataset}; resume with --dataset {tiny_dataset}" in error, error
    assert not save.exists()


def test_a_search_resumed_without_save_continues_in_its_own_folder(tiny_dataset, tmp_path, monkeypatch):
    # Sweep 7. Before: --save defaulted to search-demo/, so `--resume FOLDER` (as the stop message says)
    # finished the search there, and FOLDER never got its arch.json.
    save = tmp_path / "stopped"
    common = ["--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3"] + TINY_SCHEDULE
    run_search(["--save", str(save), "--stop_after_epoch", "1"] + common)
    monkeypatch.chdir(tmp_path)
    run_search(["--resume", str(save)] + common)
    assert json.loads((save / "arch.json").read_text())["target"] == 24
    assert not (tmp_path / "search-demo").exists()


def test_a_search_cannot_continue_in_its_own_folder_for_another_target(tiny_dataset, tmp_path, capsys):
    save = tmp_path / "search-24ms"
    run_search(["--save", str(save), "--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3",
                "--stop_after_epoch", "1"] + TINY_SCHEDULE)  # stopped at the end of its warm-up
    before = {path.name: path.read_bytes() for path in save.iterdir()}
    error = resume_refusal(["--save", str(save), "--target_latency", "22", "--dataset", tiny_dataset,
                            "--num_classes", "3", "--resume", str(save)], capsys)
    assert "needs a new --save" in error, error
    assert {path.name: path.read_bytes() for path in save.iterdir()} == before  # args.json still says 24 ms
    assert json.loads((save / "args.json").read_text())["target_latency"] == 24
    # the same checkpoint branches into a new folder
    run_search(["--save", str(tmp_path / "search-22ms"), "--target_latency", "22", "--dataset", tiny_dataset,
                "--num_classes", "3", "--resume", str(save / "checkpoint.pth.tar")] + TINY_SCHEDULE)
    assert json.loads((tmp_path / "search-22ms" / "arch.json").read_text())["target"] == 22
    # Sweep 17 #236: the same table under another name (a hard link; here a copy) was "another predictor", and
    # the search in its own folder was told to start anew in another.
    renamed_table = tmp_path / "the-same-costs.json"
    shutil.copy(latency_predictor.DEFAULT_LUT, renamed_table)
    run_search(["--save", str(save), "--target_latency", "24", "--dataset", tiny_dataset, "--num_classes", "3",
                "--lut", str(renamed_table), "--resume", str(save), "--stop_after_epoch", "2"] + TINY_SCHEDULE)
    assert [row["epoch"] for row in read_metrics(str(save))] == [1, 2]
