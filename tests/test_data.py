"""Tests for data.py: the synthetic dataset, the image-folder checks and the transforms."""

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from torch import nn
from torchvision import transforms

import data
import utils
from utils import UserError

SMALL = dict(num_classes=3, train_per_class=4, val_per_class=2, image_size=24, seed=0)


def files_and_bytes(root):
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(Path(root).rglob("*")) if path.is_file()}


def write_png(path, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)


# --- synthetic dataset -------------------------------------------------------

def test_synthetic_dataset_is_byte_identical_for_the_same_seed(tmp_path):
    first = files_and_bytes(data.write_synthetic_dataset(tmp_path / "a", **SMALL))
    second = files_and_bytes(data.write_synthetic_dataset(tmp_path / "b", **SMALL))
    assert first == second


def test_another_seed_gives_other_images(tmp_path):
    first = files_and_bytes(data.write_synthetic_dataset(tmp_path / "a", **SMALL))
    second = files_and_bytes(data.write_synthetic_dataset(tmp_path / "b", **{**SMALL, "seed": 1}))
    assert first.keys() == second.keys()
    images = [name for name in first if name.endswith(".png")]
    assert all(first[name] != second[name] for name in images)


def test_synthetic_dataset_has_the_requested_layout(tmp_path):
    root = data.write_synthetic_dataset(tmp_path / "synthetic", num_classes=4, train_per_class=3,
                                        val_per_class=2, image_size=20, seed=5)
    expected_classes = ["class_00_disc", "class_01_square", "class_02_triangle", "class_03_ring"]
    for split, per_class in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == expected_classes
        for class_name in expected_classes:
            images = sorted((root / split / class_name).iterdir())
            assert [p.name for p in images] == [f"{i:05d}.png" for i in range(per_class)]
            with Image.open(images[0]) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (20, 20))
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta == dict(format_version=data.SYNTHETIC_FORMAT_VERSION, kind="patterns", num_classes=4,
                        train_per_class=3, val_per_class=2, image_size=20, seed=5,
                        classes=expected_classes)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no staging folder left


def test_the_composite_set_fills_every_shape_with_every_fill(tmp_path):
    root = data.write_synthetic_dataset(tmp_path / "composite", kind="composite", train_per_class=1,
                                        val_per_class=1, image_size=32)
    names = sorted(p.name for p in (root / "train").iterdir())
    shapes = [name for name, _ in data.SHAPE_DISTANCES]
    fills = [name for name, _, _ in data.FILLS]
    assert names == [f"class_{index:02d}_{shape}-{fill}"
                     for index, (shape, fill) in enumerate((s, f) for s in shapes for f in fills)]
    assert len(names) == 20 == data.synthetic_class_count(kind="composite")
    assert data.read_synthetic_metadata(root)["kind"] == "composite"


def test_a_filled_shape_differs_from_the_solid_one_inside_only(tmp_path):
    # Same seed, same draws up to the fill: the lined disc is the solid disc with
    # background showing between its lines, and nothing drawn outside the disc.
    solid_label, lined_label = 0, 1  # disc-solid, disc-hlines
    size = 32
    solid = data.COMPOSITE_CLASSES[solid_label][1](data.synthetic_image_rng(0, "train", 0, 0), size)
    lined = data.COMPOSITE_CLASSES[lined_label][1](data.synthetic_image_rng(0, "train", 0, 0), size)
    assert (lined <= solid + 1e-9).all()
    inside = solid > 0.99
    assert 0.25 < lined[inside].mean() < 0.75  # lines and gaps alike
    assert solid.mean() > 0.1


def test_synthetic_folders_load_with_labels_in_folder_order(tmp_path):
    root = data.write_synthetic_dataset(tmp_path / "synthetic", **SMALL)
    dataset = data.image_folder(root, "val", transforms.ToTensor())
    assert dataset.classes == ["class_00_disc", "class_01_square", "class_02_triangle"]
    assert dataset.targets == [0, 0, 1, 1, 2, 2]
    image, label = dataset[5]
    assert image.shape == (3, 24, 24) and label == 2


@pytest.mark.parametrize("bad", [dict(num_classes=1), dict(num_classes=11), dict(train_per_class=0),
                                 dict(image_size=8), dict(seed=-1), dict(image_size=32.0), dict(kind="faces"),
                                 dict(kind="composite", num_classes=21)])
def test_bad_synthetic_parameters_are_user_errors(tmp_path, bad):
    with pytest.raises(UserError, match="synthetic dataset"):
        data.write_synthetic_dataset(tmp_path / "synthetic", **{**SMALL, **bad})


def test_a_folder_that_is_not_synthetic_is_never_overwritten(tmp_path):
    precious = tmp_path / "photos"
    write_png(precious / "holiday.png")
    message = f"{precious} exists and is not a synthetic dataset"
    with pytest.raises(UserError, match=re.escape(message)):
        data.write_synthetic_dataset(precious, **SMALL)
    assert [p.name for p in precious.iterdir()] == ["holiday.png"]


def test_interrupted_generation_leaves_the_old_dataset_and_no_partial_one(tmp_path, monkeypatch):
    root = data.write_synthetic_dataset(tmp_path / "synthetic", **SMALL)
    before = files_and_bytes(root)
    calls = []

    def render_then_fail(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_render(*args)

    real_render = data.render_synthetic_image
    monkeypatch.setattr(data, "render_synthetic_image", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        data.write_synthetic_dataset(root, **{**SMALL, "seed": 1})
    assert files_and_bytes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


def test_synthetic_dataset_reuses_a_matching_cache_and_regenerates_a_stale_one(tmp_path,
                                                                               monkeypatch):
    writes = []
    real_write = data.write_synthetic_dataset

    def counting_write(*args, **kwargs):
        writes.append(args)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(data, "write_synthetic_dataset", counting_write)
    root = Path(data.synthetic_dataset(tmp_path, **SMALL))
    image = root / "train" / "class_00_disc" / "00000.png"
    stamp = image.stat().st_mtime_ns
    assert data.synthetic_dataset(tmp_path, **SMALL) == str(root)
    assert len(writes) == 1 and image.stat().st_mtime_ns == stamp

    meta_file = root / "synthetic.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "seed": 7}))
    assert data.synthetic_dataset(tmp_path, **SMALL) == str(root)
    assert len(writes) == 2
    assert json.loads(meta_file.read_text())["seed"] == SMALL["seed"]

    meta_file.write_text("{truncated")
    data.synthetic_dataset(tmp_path, **SMALL)
    assert len(writes) == 3 and data.read_synthetic_metadata(root)["seed"] == SMALL["seed"]


def test_synthetic_dataset_names_its_folder_after_the_parameters(tmp_path):
    first = Path(data.synthetic_dataset(tmp_path, **SMALL))
    second = Path(data.synthetic_dataset(tmp_path, **{**SMALL, "seed": 3}))
    assert first != second and first.parent == second.parent == tmp_path


def test_synthetic_dataset_caches_under_lightnas_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNAS_DATA", str(tmp_path / "cache"))
    assert Path(data.synthetic_dataset(**SMALL)).parent == tmp_path / "cache"


def tiny_cnn(num_classes):
    def conv(inputs, outputs):
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(outputs), nn.ReLU())
    return nn.Sequential(conv(3, 16), conv(16, 32), conv(32, 64), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, num_classes))


def as_tensors(dataset):
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, torch.tensor(dataset.targets)


def test_a_tiny_cnn_learns_the_synthetic_dataset_well_above_chance(tmp_path):
    num_classes = 10
    root = data.write_synthetic_dataset(tmp_path / "synthetic", num_classes=num_classes,
                                        train_per_class=30, val_per_class=20, image_size=32)
    to_tensor = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    train_x, train_y = as_tensors(data.image_folder(root, "train", to_tensor))
    val_x, val_y = as_tensors(data.image_folder(root, "val", to_tensor))

    torch.manual_seed(0)
    model = tiny_cnn(num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        model.train()
        for batch in torch.randperm(len(train_y)).split(32):
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
    assert accuracy > 2 / num_classes


# --- image folders -----------------------------------------------------------

def test_missing_split_folder_is_a_user_error_naming_it(tmp_path):
    message = re.escape(f"dataset folder {tmp_path / 'train'} not found") + ".*--dataset"
    with pytest.raises(UserError, match=message):
        data.image_folder(tmp_path, "train", None)


def test_a_dataset_that_is_a_link_to_nothing_is_named_so(tmp_path):
    # Sweep 20 #99. Before: "dataset folder .../moved/val not found", as if only val/ were missing.
    (tmp_path / "moved").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=re.escape(f"dataset folder {tmp_path / 'moved'} is a link to nothing")):
        data.image_folder(tmp_path / "moved", "val", None)
    # Sweep 20 #142: LIGHTNAS_DATA too (before: "cannot write the synthetic dataset into ... (File exists)").
    with pytest.raises(UserError, match=re.escape(f"--data_root {tmp_path / 'moved'} is a link to nothing")):
        data.synthetic_dataset(root=str(tmp_path / "moved"), **SMALL)
    # Sweep 20 #104: every folder option says so (before: screen.py's "holds no finished search (no arch.json)").
    with pytest.raises(UserError, match=re.escape(f"--folders: {tmp_path / 'moved'} is a link to nothing")):
        utils.refuse_non_folder(str(tmp_path / "moved"), "--folders:")


def test_split_folder_without_class_folders_is_a_user_error(tmp_path):
    write_png(tmp_path / "val" / "stray.png")  # images directly in val/, not in class folders
    message = f"dataset folder {tmp_path / 'val'} has no class sub-folders"
    with pytest.raises(UserError, match=re.escape(message)):
        data.image_folder(tmp_path, "val", None)


def test_empty_class_folder_is_a_user_error_naming_it(tmp_path):
    write_png(tmp_path / "train" / "n01" / "a.png")
    (tmp_path / "train" / "n02").mkdir()
    (tmp_path / "train" / "n02" / "notes.txt").write_text("not an image")
    message = f"class folder {tmp_path / 'train' / 'n02'} holds no image"
    with pytest.raises(UserError, match=re.escape(message)):
        data.image_folder(tmp_path, "train", None)


def test_images_in_nested_folders_count(tmp_path):
    write_png(tmp_path / "train" / "n01" / "batch1" / "a.png")
    assert len(data.image_folder(tmp_path, "train", None)) == 1


def truncated_png(path):
    write_png(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:60])


def not_an_image(path):
    path.write_bytes(b"this is not a png")


@pytest.mark.parametrize("corrupt", [truncated_png, not_an_image])
def test_undecodable_image_is_a_user_error_naming_the_file(tmp_path, corrupt):
    write_png(tmp_path / "train" / "n01" / "good.png")
    bad = tmp_path / "train" / "n01" / "bad.png"
    corrupt(bad)
    dataset = data.image_folder(tmp_path, "train", transforms.ToTensor())
    assert dataset.samples[0][0] == str(bad)
    with pytest.raises(UserError, match=re.escape(f"cannot read image {bad}")):
        dataset[0]
    assert dataset[1][0].shape == (3, 16, 20)


def test_images_load_as_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 4), 128).save(path)
    assert data.load_rgb_image(path).mode == "RGB"


@pytest.mark.parametrize("suffix", ["png", "pgm"])
def test_a_16_bit_greyscale_png_or_pgm_keeps_its_range(tmp_path, suffix):
    # Sweep 6: a 16-bit PGM opens as 32-bit integers too; it was refused as such.
    path = tmp_path / f"grey16.{suffix}"
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow reads it with 16 bits per pixel
    pixels = np.asarray(data.load_rgb_image(path))
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
    # Pillow's own convert("RGB") clips 99.6% of this ramp to white; the range is kept instead.
    assert (pixels == 255).mean() < 0.01
    expected = np.round(ramp / data.SIXTEEN_BIT_SCALE)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1


def test_an_image_whose_text_decompresses_past_pillows_limit_is_named(tmp_path):
    # Sweep 6. Before: Pillow's ValueError was a traceback, mid-epoch in a training.
    path = tmp_path / "text.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(UserError, match=re.escape(f"cannot read image {path} (Decompressed data too large")):
        data.load_rgb_image(path)


def test_a_file_name_of_bytes_that_are_not_utf8_is_fingerprinted(tmp_path):
    # Sweep 7. Before: a UnicodeEncodeError traceback at the start of every search and training on it.
    root = data.write_synthetic_dataset(tmp_path / "set", num_classes=2, train_per_class=2, val_per_class=1,
                                        image_size=32, seed=0)
    before = data.dataset_fingerprint(data.image_folder(root, "train", None))
    first = sorted((root / "train").rglob("*.png"))[0]
    os.rename(first, os.path.join(os.fsencode(first.parent), b"\xff.png"))
    after = data.dataset_fingerprint(data.image_folder(root, "train", None))
    assert after["images"] == before["images"] and after["files_sha256"] != before["files_sha256"]


def test_a_change_of_images_is_described():
    before = {"classes": ["cat", "dog"], "images": 10, "files_sha256": "a"}
    assert data.describe_image_change(before, dict(before)) is None
    assert data.describe_image_change(before, dict(before, classes=["cat"])) == "its classes differ (2 then, 1 now)"
    # Sweep 6: the same number of classes with other names was "its classes differ (3 then, 3 now)".
    assert data.describe_image_change(before, dict(before, classes=["cat", "fox"])) == \
        "other classes ('fox' where it had 'dog')"
    # Sweep 13: paired by position, a class renamed by case only ('Class_01' sorts first) named an unchanged one
    # ("Class_01 where it had class_00"), and a trailing space was invisible ("X where it had X").
    cases = {"class_00": "class_00", "class_01": "Class_01"}
    assert data.describe_image_change(dict(before, classes=sorted(cases)), dict(before, classes=sorted(
        cases.values()))) == "other classes ('Class_01' where it had 'class_01')"
    assert data.describe_image_change(before, dict(before, classes=["cat", "dog "])) == \
        "other classes ('dog ' where it had 'dog')"
    assert data.describe_image_change(before, dict(before, images=12)) == "10 images then, 12 now"
    assert data.describe_image_change(before, dict(before, files_sha256="b")) == \
        "the same number of images, but other files"


def test_an_image_with_float_pixels_is_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(UserError, match=re.escape(f"cannot read image {path}: its pixels are floats")):
        data.load_rgb_image(path)


def test_an_image_over_pillows_pixel_limit_is_named_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "large.png"
    write_png(path, size=(40, 30))  # 1,200 pixels, over twice a limit of 500
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(UserError, match=re.escape(f"cannot read image {path}: ") + ".*1200 pixels.*downscale it"):
        data.load_rgb_image(path)


def test_a_file_where_the_dataset_or_a_split_folder_should_be_is_named(tmp_path):
    (tmp_path / "dataset").write_text("not a folder")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'dataset'} is a file, not a folder")):
        data.image_folder(tmp_path / "dataset", "train", None)
    (tmp_path / "train").write_text("not a folder")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'train'} is a file, not a folder")):
        data.image_folder(tmp_path, "train", None)


def test_train_and_val_with_different_classes_name_the_folders_hidden_ones_marked():
    with pytest.raises(UserError, match=re.escape("(only in train/: .ipynb_checkpoints (hidden), n03; "
                                                  "only in val/: n04)")):
        data.check_same_classes("/data", [".ipynb_checkpoints", "n01", "n02", "n03"], ["n01", "n02", "n04"])
    many = [f"n{index:02d}" for index in range(8)]
    with pytest.raises(UserError, match=re.escape("only in val/: n00, n01, n02, n03, n04 and 3 more)")):
        data.check_same_classes("/data", [], many)
    data.check_same_classes("/data", many, list(many))  # the same classes: no error
    # Sweep 6: "only in train/: café; only in val/: café" -- one composed, one decomposed (a macOS copy).
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    with pytest.raises(UserError, match=re.escape("class folder café is spelt with other Unicode characters in "
                                                  "train/ ('caf\\xe9') than in val/ ('cafe\\u0301')")):
        data.check_same_classes("/data", ["n01", composed], ["n01", decomposed])


def test_a_class_that_is_no_folder_in_one_split_is_named_for_what_it_is(tmp_path):
    """Sweep 18 #134: train/class_02 a file (val/ has the folder) was "only in val/: class_02", though train/
    holds that name too."""
    for split in ("train", "val"):
        (tmp_path / split / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n02").write_text("not a folder")
    (tmp_path / "val" / "n02").mkdir()
    (tmp_path / "val" / "n03").symlink_to(tmp_path / "moved")
    (tmp_path / "train" / "n03").mkdir()
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'train' / 'n02'} is a file, not a class folder as "
                                                  "in val/")):
        data.check_same_classes(str(tmp_path), ["n01"], ["n01", "n02"])
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'val' / 'n03'} is a link to nothing, not a class "
                                                  "folder as in train/")):
        data.check_same_classes(str(tmp_path), ["n01", "n03"], ["n01"])


def test_a_hidden_folder_in_both_splits_is_refused_not_taken_as_class_0(tmp_path):
    # Sweep 5. Before: .ipynb_checkpoints in train/ and val/ passed the same-classes check, became class 0 and
    # pushed a real class out of --num_classes, without a word.
    for split in ("train", "val"):
        for name in (".ipynb_checkpoints", "n01", "n02"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "a.png")
    with pytest.raises(UserError, match=re.escape("holds hidden folders ImageFolder would take as classes: "
                                                  ".ipynb_checkpoints (hidden); move them out")):
        data.image_folder(tmp_path, "train", None)


def test_a_palette_image_with_transparency_loads_in_its_colours_without_a_warning(tmp_path, recwarn):
    # Sweep 5. Before: Pillow's two-line "Palette images with Transparency ..." warning for every such image.
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=b"\x00\x00\x00")  # alpha per palette entry, as bytes
    assert data.load_rgb_image(tmp_path / "p.png").getpixel((0, 0)) == (200, 100, 50)
    assert not [warning for warning in recwarn if "Transparency" in str(warning.message)]


def test_an_image_just_over_pillows_pixel_limit_loads_without_a_warning(tmp_path, monkeypatch, recwarn):
    # Sweep 5. Before: a DecompressionBombWarning of two lines; twice the limit stays a one-line refusal.
    Image.new("RGB", (20, 10)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)
    assert data.load_rgb_image(tmp_path / "big.png").size == (20, 10)
    assert not [warning for warning in recwarn if issubclass(warning.category, Image.DecompressionBombWarning)]


def test_a_class_folder_that_cannot_be_read_is_named_not_called_empty(tmp_path, monkeypatch):
    # Sweep 5. Before: os.walk skipped an unreadable folder in silence: "holds no image file: add its images".
    for name in ("n01", "n02"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "a.png")
    scandir = os.scandir

    def denied(path="."):
        if str(path).endswith("n02"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)  # what chmod 000 does to a user who is not root
    with pytest.raises(UserError, match=re.escape(f"cannot read dataset folder {tmp_path / 'train' / 'n02'} "
                                                  "(Permission denied); make it readable")):
        data.image_folder(tmp_path, "train", None)


# --- transforms --------------------------------------------------------------

@pytest.mark.parametrize("image_size", [32, 224])
def test_transforms_give_square_tensors(image_size):
    image = Image.new("RGB", (300, 200), (10, 200, 30))
    assert data.build_train_transform(image_size)(image).shape == (3, image_size, image_size)
    assert data.build_eval_transform(image_size)(image).shape == (3, image_size, image_size)


def test_eval_transform_normalises_the_imagenet_mean_to_zero():
    mean_colour = tuple(round(255 * m) for m in data.IMAGENET_MEAN)
    tensor = data.build_eval_transform(32)(Image.new("RGB", (40, 40), mean_colour))
    assert tensor.abs().max() < 0.01


def test_eval_transform_resizes_224_from_256():
    resize = data.build_eval_transform(224).transforms[0]
    assert isinstance(resize, transforms.Resize) and resize.size == 256
    assert data.build_eval_transform(64).transforms[0].size == 73


def test_train_transform_hue_is_the_callers_choice():
    def jitter(transform):
        return next(t for t in transform.transforms if isinstance(t, transforms.ColorJitter))
    assert jitter(data.build_train_transform(64)).hue is None
    assert jitter(data.build_train_transform(64, hue=0.1)).hue == pytest.approx((-0.1, 0.1))
    assert jitter(data.build_train_transform(64, color_jitter=(0.2, 0.3, 0.4))).brightness == \
        pytest.approx((0.8, 1.2))


def test_scanning_lists_what_imagefolder_lists_and_follows_no_symlink_cycle(tmp_path):
    from torchvision import datasets

    root = data.write_synthetic_dataset(tmp_path / "set", num_classes=3, train_per_class=4, val_per_class=2,
                                        image_size=16, seed=0)
    plain = datasets.ImageFolder(str(Path(root) / "train"))
    assert data.image_folder(root, "train").samples == plain.samples  # same samples, same order
    class_folder = Path(root) / "train" / plain.classes[0]
    (class_folder / "loop").symlink_to(".", target_is_directory=True)  # a cycle
    (class_folder / "again.png").symlink_to(sorted(class_folder.glob("*.png"))[0])  # a second name for one file
    outside = tmp_path / "more"
    outside.mkdir()
    Image.new("RGB", (16, 16)).save(outside / "extra.png")
    (class_folder / "more").symlink_to(outside, target_is_directory=True)  # a linked folder is still followed
    scanned = data.image_folder(root, "train")
    assert len(scanned) == len(plain) + 1
    assert sum(path.endswith("extra.png") for path, _ in scanned.samples) == 1
    assert data.holds_an_image(class_folder)


def test_a_synthetic_set_that_cannot_be_written_is_one_line():
    # Before: with a read-only HOME the demo search ended in write_synthetic_dataset's OSError traceback.
    with pytest.raises(UserError, match="cannot write the synthetic dataset into /proc/lightnas-data .* --data_root"):
        data.synthetic_dataset(root="/proc/lightnas-data", num_classes=2, train_per_class=1, val_per_class=1)


def test_a_jpeg_with_a_damaged_exif_block_loads_without_a_warning(tmp_path, recwarn):
    # Sweep 8. Before: Pillow's two-line "Corrupt EXIF data" warning, naming no file, for each such image.
    path = tmp_path / "camera.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff")
    warnings.simplefilter("always")
    assert data.load_rgb_image(path).size == (8, 8)
    assert [str(warning.message) for warning in recwarn] == []


def test_an_unwritable_data_folder_names_the_setting_that_chose_it(monkeypatch, tmp_path):
    # Sweep 13: the search, which has no --data_root, was told to "set LIGHTNAS_DATA (or --data_root)".
    monkeypatch.setenv("LIGHTNAS_DATA", "/proc/lightnas-data")  # no one can write there, root neither
    with pytest.raises(UserError, match=r"cannot write the synthetic dataset into /proc/lightnas-data \(.*\); set "
                                        "LIGHTNAS_DATA to a writable folder$"):
        data.synthetic_dataset(num_classes=2, train_per_class=2, val_per_class=1, image_size=16)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"is a file; give a folder \(--data_root\)$"):
        data.synthetic_dataset(str(tmp_path / "file"), num_classes=2, train_per_class=2, val_per_class=1, image_size=16)
