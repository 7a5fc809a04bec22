"""The LightNets timed beside torchvision's networks (peers.py) and the
closed loop build -> search -> measure (closed_loop.py), at tiny sizes."""

import csv
import os

import pytest

import closed_loop
import latency_build
import latency_predictor as lp
import model_train
import peers
from utils import UserError, run_cli

TINY_SEARCH = ["--epochs", "3", "--freeze_epochs", "1", "--latch_epochs", "1", "--arch_lr_step", "1",
               "--batch_size_train", "4", "--batch_size_val", "4", "--image_size", "32", "--workers", "0",
               "--tradeoff_learning_rate", "0.05", "--num_classes", "3"]


def test_peer_accuracy_is_torchvision_published_figure():
    # torchvision's documented ImageNet-1K acc@1 of the IMAGENET1K_V1 weights.
    assert peers.peer_top1("mobilenet_v2")[0] == pytest.approx(71.878)
    assert peers.peer_top1("efficientnet_b0")[0] == pytest.approx(77.692)
    assert peers.peer_top1("shufflenet_v2_x2_0")[0] == pytest.approx(76.23)


def test_peers_are_timed_and_written(tmp_path, capsys):
    run_cli(peers.main, peers.get_args_parser(), ["--out", str(tmp_path), "--rounds", "1", "--runtimes", "torch"])
    with open(tmp_path / "peers.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    names = [row["network"] for row in rows]
    assert names == list(model_train.README_ACCURACY) + list(peers.PEERS.values())
    assert all(float(row["torch_ms"]) > 0 for row in rows)
    lightnet = rows[names.index("LightNet-24ms")]
    assert float(lightnet["top1"]) == 75.5 and "LightNAS paper" in lightnet["top1_source"]
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"
    assert "EfficientNet-B0" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_fitted_table(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lut") / "fit.json")
    latency_build.main(latency_build.get_args_parser().parse_args(
        ["build", "--method", "fit", "--num_networks", str(latency_build.MIN_FIT_NETWORKS), "--repeats", "1",
         "--warmup_s", "0", "--out", path]))
    return path


def test_closed_loop_searches_on_the_table_and_measures_the_result(tiny_fitted_table, tmp_path, capsys,
                                                                   monkeypatch):
    import data
    monkeypatch.setattr(closed_loop, "LOOP_WARMUP_S", 0.1)
    dataset = data.write_synthetic_dataset(tmp_path / "data", num_classes=3, train_per_class=4, val_per_class=4,
                                           image_size=32, seed=0)
    target = round(lp.load_predictor(tiny_fitted_table).cost(model_train.LIGHTNETS["LightNet-24ms"]), 2)
    out = tmp_path / "loop"
    run_cli(closed_loop.main, closed_loop.get_args_parser(),
            ["--target_latency", str(target), "--lut", tiny_fitted_table, "--out", str(out), "--rounds", "2",
             "--fresh_processes", "1", "--", "--dataset", str(dataset)] + TINY_SEARCH)
    output = capsys.readouterr().out
    assert f"target {target:g} ms; the table predicts" in output
    assert "measured end to end now:" in output and "when the table was built" in output
    condition = latency_build.table_condition(lp.load_table(tiny_fitted_table)["metadata"])
    assert f"alone in fresh processes started with {condition}: " in output
    report = (out / "report.txt").read_text()
    assert "the same, at the machine's speed when the table was built" in report
    assert "architecture: ['MBK3E1'" in report
    assert os.path.isfile(out / "search" / "arch.json")


@pytest.mark.parametrize("arguments, message", [
    (["--target_latency", "0"], "positive number"),
    (["--target_latency", "20", "--", "--save", "x"], "--save is set by closed_loop.py"),
    (["--target_latency", "500", "--lut", lp.CPU_LUT], "outside what the table"),
    (["--target_latency", "20", "--rounds", "0"], "--rounds"),
    (["--target_latency", "24", "--lut", lp.DEFAULT_LUT], "measured on this machine's CPU or GPU"),
])
def test_closed_loop_refuses_bad_input_before_writing(arguments, message, tmp_path):
    out = tmp_path / "loop"
    with pytest.raises(UserError, match=message):
        closed_loop.main(closed_loop.get_args_parser().parse_args(["--out", str(out)] + arguments))
    assert not out.exists()
