"""evaluate.py on released-format and project checkpoints."""

import re

import pytest
import torch

import data
import evaluate
from model_train import LIGHTNETS, LightNet
from utils import accuracy, correct_counts, run_cli, save_checkpoint

IMAGE_SIZE = 32
NUM_CLASSES = 8  # more than 5, so that top-5 can miss


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "set"
    data.write_synthetic_dataset(root, num_classes=NUM_CLASSES, train_per_class=2, val_per_class=9,
                                 image_size=IMAGE_SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    network = LightNet(LIGHTNETS["LightNet-20ms"], num_classes=NUM_CLASSES)
    # Random BN statistics make the untrained network's predictions differ
    # from image to image, so top-1 is an informative number to compare.
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return network.eval()


def rank_of_target(logits, target):
    """How many classes score strictly higher than the target: 0 is a top-1 hit."""
    return sum(1 for value in logits if value > logits[target])


def independent_counts(logits, targets):
    """(images, top-1 hits, top-5 hits) counted one row at a time, without
    torch's topk, to check the project's counting against."""
    ranks = [rank_of_target(row.tolist(), int(target)) for row, target in zip(logits, targets)]
    return len(ranks), sum(rank < 1 for rank in ranks), sum(rank < 5 for rank in ranks)


def direct_counts(model, root):
    """The counts of `model` on val/, from its logits computed here in one pass."""
    dataset = data.image_folder(root, "val", data.build_eval_transform(IMAGE_SIZE))
    images, targets = zip(*(dataset[index] for index in range(len(dataset))))
    with torch.no_grad():
        logits = model(torch.stack(images))
    return independent_counts(logits, torch.tensor(targets))


def test_top1_and_top5_counts_match_hand_made_logits():
    # 7 classes; the target's rank in each row is written out: 0, 1, 4, 5, 6, 2.
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],  # target 0, the largest: top-1
        [1.0, 9, 8, 2, 3, 4, 5],  # target 1, second: top-5 only
        [7.0, 6, 5, 4, 3, 2, 1],  # target 4, fifth: top-5 only
        [7.0, 6, 5, 4, 3, 2, 1],  # target 5, sixth: neither
        [0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7],  # target 1, last: neither
        [3.0, 1, 2, 5, 4, 0, -1],  # target 0, third: top-5 only
    ])
    targets = torch.tensor([0, 2, 4, 5, 1, 0])
    assert [rank_of_target(row.tolist(), int(target)) for row, target in zip(logits, targets)] == [0, 1, 4, 5, 6, 2]
    assert correct_counts(logits, targets, topk=(1, 5)) == [1, 4]
    assert correct_counts(logits, targets, topk=(1, 2, 3, 7)) == [1, 2, 3, 6]
    assert accuracy(logits, targets, topk=(1, 5)) == pytest.approx([100 / 6, 400 / 6])
    assert evaluate.evaluate_counts(IdentityModel(), [(logits, targets)], torch.device("cpu"), progress=False) == \
        (6, 1, 4)


class IdentityModel(torch.nn.Module):
    """A "network" whose logits are its input, to feed evaluate_counts hand-made logits."""

    def forward(self, logits):
        return logits


def run_evaluate(arguments, capsys):
    run_cli(evaluate.main, evaluate.get_args_parser(), arguments)
    output = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"Total: (\d+)  Top1-Acc: ([\d.]+)  Top5-Acc: ([\d.]+)", output)
    assert match, output
    return int(match[1]), float(match[2]), float(match[3])


def test_released_format_checkpoint_matches_direct_evaluation(model, dataset_root, tmp_path, capsys):
    released = {"state_dict": {"module." + key: value for key, value in model.state_dict().items()}}
    path = tmp_path / "LightNet-20ms.pth.tar"
    torch.save(released, path)
    total, top1, top5 = run_evaluate(["--model", "LightNet-20ms", "--weights", str(path), "--dataset",
                                      str(dataset_root), "--image_size", str(IMAGE_SIZE), "--workers", "0",
                                      "--batch_size", "4", "--device", "cpu"], capsys)
    images, top1_hits, top5_hits = direct_counts(model, dataset_root)
    assert total == images == NUM_CLASSES * 9
    assert top1 == pytest.approx(100.0 * top1_hits / images, abs=1e-3)
    assert top5 == pytest.approx(100.0 * top5_hits / images, abs=1e-3)
    assert 0 < top1_hits < top5_hits < images  # with 8 classes both counts are informative here


def test_project_checkpoint_needs_no_architecture_option(model, dataset_root, tmp_path, capsys):
    path = tmp_path / "best.pth.tar"
    save_checkpoint({"state_dict": model.state_dict(), "arch_config": LIGHTNETS["LightNet-20ms"], "epoch": 3}, path)
    total, top1, _ = run_evaluate(["--weights", str(path), "--dataset", str(dataset_root),
                                   "--image_size", str(IMAGE_SIZE), "--workers", "0"], capsys)
    images, top1_hits, _ = direct_counts(model, dataset_root)
    assert total == images and top1 == pytest.approx(100.0 * top1_hits / images, abs=1e-3)


def test_project_checkpoint_is_evaluated_at_the_size_it_was_trained_at(model, dataset_root, tmp_path, capsys,
                                                                       monkeypatch):
    """best.pth.tar records its training size: without --image_size that is
    the size evaluated; --image_size still wins; a released checkpoint
    (no size recorded) is evaluated at 224."""
    sizes = []
    build = data.build_eval_transform
    monkeypatch.setattr(evaluate.data, "build_eval_transform",
                        lambda size, crop_ratio=data.EVAL_CROP_RATIO: sizes.append(size) or build(size, crop_ratio))
    path = tmp_path / "best.pth.tar"
    save_checkpoint({"state_dict": model.state_dict(), "arch_config": LIGHTNETS["LightNet-20ms"],
                     "image_size": IMAGE_SIZE}, path)
    _, top1, _ = run_evaluate(["--weights", str(path), "--dataset", str(dataset_root), "--workers", "0"], capsys)
    assert sizes == [IMAGE_SIZE]
    images, top1_hits, _ = direct_counts(model, dataset_root)  # at IMAGE_SIZE too
    assert top1 == pytest.approx(100.0 * top1_hits / images, abs=1e-3)
    run_evaluate(["--weights", str(path), "--dataset", str(dataset_root), "--workers", "0", "--image_size", "48"],
                 capsys)
    released = tmp_path / "released.pth.tar"
    torch.save({"state_dict": model.state_dict()}, released)
    run_evaluate(["--model", "LightNet-20ms", "--weights", str(released), "--dataset", str(dataset_root),
                  "--workers", "0"], capsys)
    assert sizes == [IMAGE_SIZE, IMAGE_SIZE, 48, 224]


@pytest.mark.parametrize("case", ["wrong architecture", "missing file", "no state_dict", "class mismatch",
                                  "diverged"])
def test_bad_weights_give_one_line(case, model, dataset_root, tmp_path, capsys):
    path = tmp_path / "weights.pth.tar"
    model_name = "LightNet-20ms"
    if case == "wrong architecture":
        torch.save({"state_dict": model.state_dict()}, path)
        model_name, expected = "LightNet-30ms", "does not fit this architecture"
    elif case == "missing file":
        path, expected = tmp_path / "absent.pth.tar", "not found"
    elif case == "no state_dict":
        torch.save({"epoch": 1}, path)
        expected = "holds no model state_dict"
    elif case == "diverged":
        torch.save({"state_dict": {key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
                                   for key, value in model.state_dict().items()}}, path)
        expected = "holds NaN or infinite values"
    else:
        other = LightNet(LIGHTNETS["LightNet-20ms"], num_classes=7)
        torch.save({"state_dict": other.state_dict()}, path)
        expected = f"val/ has {NUM_CLASSES} classes but the weights predict 7"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, evaluate.get_args_parser(),
                ["--model", model_name, "--weights", str(path), "--dataset", str(dataset_root), "--workers", "0"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and expected in error, error
