"""The data side of LightNAS: ImageNet transforms, checked image folders, the
seeded loaders, synthetic data.

Shared by search_imagenet.py, train_imagenet.py and evaluate.py:

* `build_train_transform` / `build_eval_transform`: the paper's ImageNet preprocessing;
  `eval_crop_ratio`: evaluation framed as a training augmentation framed its images.
* `image_folder`: a torchvision ImageFolder for `root/split` that reports a wrong
  `--dataset` or an undecodable image as a one-line `UserError`.
* `seeded_loader`: the training loader of the search and the retraining, whose
  shuffling and augmentation depend on (seed, epoch, image) only, never on the
  number of loading processes or on an interruption.
* `split_for_architecture`: a per-class split of `train/`, so that alpha can be
  trained on images that no evaluation uses.
* `write_synthetic_dataset` / `synthetic_dataset`: a small, learnable image set drawn
  with numpy and Pillow, for demos and tests where ImageNet is not at hand (nothing
  can be downloaded), of two kinds: "patterns", ten classes that differ in shape,
  orientation, texture and colour; "composite", twenty classes, each of five shapes
  filled in one of four ways (solid, horizontal or vertical lines, checks), in any
  colour, so that a network must see both the fine fill and the whole outline. Each
  image has its own position, scale, colours, background and noise.

Example::

    root = synthetic_dataset()   # generated on first use, cached in ~/.cache/lightnas
    train_set = image_folder(root, "train", build_train_transform(64, hue=0.1))
    val_set = image_folder(root, "val", build_eval_transform(64))
"""

import colorsys
import hashlib
import json
import os
import shutil
import stat
import tempfile
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from utils import UserError, non_folder_kind, refuse_link_loop, refuse_link_to_nothing, refuse_running_a_library

# Per-channel statistics of the ImageNet training images, the normalisation the
# paper and every ImageNet-trained mobile network use.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation resizes the short side so that the centre crop keeps 87.5% of it:
# the standard ImageNet protocol, 224 out of 256.
EVAL_CROP_RATIO = 0.875

DATASET_HINT = ("--dataset must point at a folder holding train/ and val/, each with one "
                "sub-folder of images per class (see docs/training.md, Preprocessing ImageNet)")
# Greyscale images with 16 bits per pixel: Pillow's convert("RGB") clips
# every value above 255 to white, so these are scaled to 8 bits first.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Formats whose 16-bit greyscale Pillow opens as "I" (32-bit integers) all the same.
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
SIXTEEN_BIT_SCALE = 257  # 65535 / 255
CLASS_NAMES_SHOWN = 5  # class folders named in a train/ vs val/ mismatch


def build_train_transform(image_size=224, color_jitter=(0.4, 0.4, 0.4), hue=0.0):
    """Training augmentation: random-resized crop, flip, colour jitter, normalise.
    `color_jitter` is (brightness, contrast, saturation); the search uses hue=0.1,
    the retraining hue=0."""
    brightness, contrast, saturation = color_jitter
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness, contrast, saturation, hue),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def build_flip_transform(image_size):
    """Light training augmentation for small images: resize, horizontal flip,
    normalise. Random-resized crops of 32 px images of small objects often
    cut the object out, which keeps short runs near chance."""
    return transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def build_eval_transform(image_size=224, crop_ratio=EVAL_CROP_RATIO):
    """Evaluation preprocessing: resize the short side (to 256 for 224 with
    the recipe's crop ratio), centre crop, normalise. A network trained with
    `build_flip_transform` never saw that zoom: evaluate it with crop_ratio 1."""
    return transforms.Compose([
        transforms.Resize(round(image_size / crop_ratio)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_crop_ratio(augment):
    """The crop ratio that frames evaluation images as the training
    augmentation `augment` framed its own: 1 (the whole image) after "flip",
    which keeps it (the recipe's zoom cost the short CPU retraining 2-4
    points at 32 px); the recipe's EVAL_CROP_RATIO otherwise."""
    return 1.0 if augment == "flip" else EVAL_CROP_RATIO


def image_folder(root, split, transform=None):
    """The ImageFolder at `root/split` (class = sub-folder, labels in sorted folder
    order), after checking its layout so that a wrong path is a UserError."""
    folder = Path(root) / split
    check_image_folder(folder)
    return ImageFolderOnce(str(folder), transform=transform, loader=load_rgb_image)


def walk_once(folder):
    """(folder, file names) for `folder` and every folder below it, following
    symlinked folders as ImageFolder does but entering each real folder once,
    so that a link cycle (`loop -> .`) ends instead of repeating the same
    files until the path is too long. Sub-folders are visited in sorted order."""
    def unreadable(error):  # os.walk would skip the folder in silence: its class would look empty
        raise UserError(f"cannot read dataset folder {error.filename} ({error.strerror}); make it readable") from None

    seen = set()
    for path, folder_names, file_names in os.walk(folder, followlinks=True, onerror=unreadable):
        real = os.path.realpath(path)
        if real in seen:
            folder_names[:] = []
            continue
        seen.add(real)
        folder_names.sort()
        yield path, file_names


class ImageFolderOnce(datasets.ImageFolder):
    """ImageFolder whose scan follows no symlink cycle and lists each real
    image file once (two links to one file are one sample). One file reached
    from two class folders (a link to `..` inside a class) would carry two
    labels: a UserError. The samples and their order are ImageFolder's
    otherwise."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples, first_seen = [], {}
        for class_name in sorted(class_to_idx):
            for path, file_names in sorted(walk_once(os.path.join(directory, class_name))):
                for name in sorted(file_names):
                    file_path = os.path.join(path, name)
                    if not name.lower().endswith(IMG_EXTENSIONS):
                        continue
                    real = os.path.realpath(file_path)
                    if real not in first_seen:
                        first_seen[real] = (class_name, file_path)
                        samples.append((file_path, class_to_idx[class_name]))
                    elif first_seen[real][0] != class_name:
                        raise UserError(f"image {file_path} is also {first_seen[real][1]}: one file in two class "
                                        "folders (through a link) would carry two labels; remove the link")
        return samples


def links_to_nothing(folder):
    """The sorted names of the entries of `folder` that are links to nothing.
    A link to a class folder that is gone (a moved ImageNet, as
    tools/make_imagenet100.py links it) would drop its class without a word."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_symlink() and not os.path.exists(entry.path))


def check_image_folder(folder):
    """Raise UserError unless `folder` holds class sub-folders that each hold an image."""
    for path in (folder.parent, folder):
        refuse_link_loop(path, "dataset folder")
        refuse_link_to_nothing(path, "dataset folder")
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a file, not a folder: {DATASET_HINT}")
    if not folder.is_dir():
        raise UserError(f"dataset folder {folder} not found: {DATASET_HINT}")
    try:
        # Same rule as ImageFolder: every sub-folder, hidden or not, is a class.
        class_folders = sorted(entry for entry in folder.iterdir() if entry.is_dir())
        broken = links_to_nothing(folder)
    except OSError as error:
        raise UserError(f"cannot read dataset folder {folder} ({error})") from error
    if broken:
        raise UserError(f"dataset folder {folder} holds links to nothing: {name_class_folders(broken)}; point them "
                        "at their class folders again (was the dataset they link to moved?) or remove them")
    if not class_folders:
        raise UserError(f"dataset folder {folder} has no class sub-folders: {DATASET_HINT}")
    # ImageFolder takes every sub-folder as a class, hidden ones too: a notebook's .ipynb_checkpoints in
    # train/ and val/ would become class 0 and shift every label (or push a real class out of --num_classes).
    hidden = [entry.name for entry in class_folders if entry.name.startswith(".")]
    if hidden:
        raise UserError(f"dataset folder {folder} holds hidden folders ImageFolder would take as classes: "
                        f"{name_class_folders(hidden)}; move them out of the dataset")
    for class_folder in class_folders:
        if not holds_an_image(class_folder):
            raise UserError(f"class folder {class_folder} holds no image file "
                            f"({', '.join(IMG_EXTENSIONS)}): add its images or remove it")


def check_dataset_layout(root, option="--dataset"):
    """train/ and val/ of `root` each hold class folders with images, the
    same classes in both: what a run checks before its first epoch, for
    tools that only hand the dataset on to their runs (without listing
    every image)."""
    classes = {}
    for split in ("train", "val"):
        folder = Path(root) / split
        check_image_folder(folder)
        classes[split] = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    check_same_classes(root, classes["train"], classes["val"], option=option)


def check_same_classes(root, train_classes, val_classes, option="--dataset"):
    """Raise UserError, naming the folders, unless train/ and val/ hold the
    same class folders; a class that is a file, a pipe or a link to nothing
    in one split (a folder in the other) is named for what it is."""
    if train_classes == val_classes:
        return
    only_in = {"train": sorted(set(train_classes) - set(val_classes)),
               "val": sorted(set(val_classes) - set(train_classes))}
    for split, other in (("train", "val"), ("val", "train")):
        for name in only_in[other]:
            path = os.path.join(root, split, name)
            if os.path.lexists(path):  # there, but not as a folder
                kind = non_folder_kind(path) if os.path.exists(path) else "a link to nothing"
                raise UserError(f"{option} {root}: {path} is {kind}, not a class folder as in {other}/; put the "
                                "class's images in a folder of that name")
    val_by_composed_form = {unicodedata.normalize("NFC", name): name for name in only_in["val"]}
    for name in only_in["train"]:
        in_val = val_by_composed_form.get(unicodedata.normalize("NFC", name))
        if in_val is not None:  # the two print alike, so the list below would give no clue
            raise UserError(f"{option} {root}: class folder {name} is spelt with other Unicode characters in "
                            f"train/ ({ascii(name)}) than in val/ ({ascii(in_val)}): accents composed in one, "
                            "decomposed in the other, as copies from macOS leave them; rename one so that the two "
                            "match")
    differences = [f"only in {split}/: {name_class_folders(names)}" for split, names in only_in.items() if names]
    raise UserError(f"{option} {root}: train/ and val/ hold different class folders ({'; '.join(differences)}); "
                    "both need the same ones (a hidden folder counts as a class too: remove it)")


def name_class_folders(names):
    """The first CLASS_NAMES_SHOWN names, hidden ones marked, and how many more."""
    shown = [f"{name} (hidden)" if name.startswith(".") else name for name in names[:CLASS_NAMES_SHOWN]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def holds_an_image(folder):
    """Whether `folder` or any folder below it holds a file ImageFolder would load."""
    for _, file_names in walk_once(folder):
        if any(name.lower().endswith(IMG_EXTENSIONS) for name in file_names):
            return True
    return False


def load_rgb_image(path):
    """Open an image as RGB with 8 bits per channel; a file Pillow cannot
    decode, or will not (over its pixel limit), is a UserError naming it."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a pipe would wait for a writer forever
            raise UserError(f"cannot read image {path}: it is not a regular file (a pipe, device or socket); "
                            "remove it from the dataset")
        with open(path, "rb") as file, warnings.catch_warnings():
            # Between Pillow's pixel limit and twice it an image loads with a two-line warning; above, the
            # error below names it. Neither ImageNet nor a resized set comes near.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # A camera's damaged EXIF block does not touch the pixels; Pillow's warning names no file.
            warnings.filterwarnings("ignore", message="Corrupt EXIF data")
            return to_rgb(Image.open(file), path)
    except Image.DecompressionBombError as error:
        raise UserError(f"cannot read image {path}: {error.args[0] if error.args else error} (Pillow refuses images "
                        "over twice Image.MAX_IMAGE_PIXELS): downscale it or delete it") from error
    except UnidentifiedImageError as error:  # its message names Python's file object, not the file
        raise UserError(f"cannot read image {path} (not an image format Pillow knows): replace or delete the "
                        "file") from error
    # Pillow's errors for unreadable or corrupt files (ValueError: text chunks decompressing past its limit).
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot read image {path} ({error}): replace or delete the file") from error


def to_rgb(image, path):
    """`image` as 8-bit RGB. 16-bit greyscale keeps its range (scaled by
    1/257); 32-bit integer or float pixels, which have no fixed range, are
    refused."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format in SIXTEEN_BIT_I_FORMATS):
        pixels = np.asarray(image, dtype=np.float64) / SIXTEEN_BIT_SCALE
        return Image.fromarray(np.round(pixels).clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integers" if image.mode == "I" else "floats"
        raise UserError(f"cannot read image {path}: its pixels are {kind} with no fixed range; save it with 8 or 16 "
                        "bits per channel")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the same colours; converting to RGB directly warns about the transparency
    return image.convert("RGB")


def dataset_fingerprint(dataset):
    """What identifies the images of an ImageFolder (or a Subset of one):
    its classes, its image count and a SHA-256 of its files' paths relative
    to the folder, in order. Moving the folder keeps it; adding, removing or
    renaming an image changes it."""
    indices = None
    if isinstance(dataset, torch.utils.data.Subset):
        dataset, indices = dataset.dataset, dataset.indices
    samples = dataset.samples if indices is None else [dataset.samples[index] for index in indices]
    digest = hashlib.sha256()
    for path, label in samples:
        # fsencode: a file name of bytes that are not UTF-8 hashes as those bytes (encode() would fail)
        digest.update(os.fsencode(os.path.relpath(path, dataset.root)) + f"\t{label}\n".encode())
    return {"classes": list(dataset.classes), "images": len(samples), "files_sha256": digest.hexdigest()}


def first_renamed_class(then, now):
    """(a class name now that was not there then, one then that is not there
    now) for two equally long lists of class names, or None when they are the
    same. Compared as names, not by position: a renamed class sorts elsewhere
    ('Class_01' before 'class_00'), and pairing by position would name an
    unchanged class."""
    added = [name for name in now if name not in then]
    gone = [name for name in then if name not in now]
    return (added[0], gone[0]) if added and gone else None


def describe_image_change(before, now):
    """How the images of fingerprint `now` differ from those of `before`
    (dataset_fingerprint's), or None when they are the same."""
    if len(before["classes"]) != len(now["classes"]):
        return f"its classes differ ({len(before['classes'])} then, {len(now['classes'])} now)"
    renamed = first_renamed_class(before["classes"], now["classes"])
    if renamed:
        return f"other classes ({renamed[0]!r} where it had {renamed[1]!r})"
    if before["images"] != now["images"]:
        return f"{before['images']} images then, {now['images']} now"
    if before["files_sha256"] != now["files_sha256"]:
        return "the same number of images, but other files"
    return None


def keep_first_classes(dataset, num_classes, path):
    """Restrict an ImageFolder to its first `num_classes` classes (sorted
    folder names); None keeps them all."""
    if num_classes is None:
        return dataset
    if len(dataset.classes) < num_classes:
        raise UserError(f"--num_classes {num_classes}: {path} has only {len(dataset.classes)} classes")
    dataset.samples = [sample for sample in dataset.samples if sample[1] < num_classes]
    dataset.targets = [target for _, target in dataset.samples]
    dataset.imgs = dataset.samples
    dataset.classes = dataset.classes[:num_classes]
    dataset.class_to_idx = {name: index for name, index in dataset.class_to_idx.items() if index < num_classes}
    return dataset


def split_for_architecture(targets, fraction, seed):
    """Split image indices into (weights, architecture) parts: in every class
    the same `fraction` goes to the architecture part (at least one image
    each side), drawn by `seed` alone."""
    generator = np.random.default_rng([seed, 0x5EA4C4])
    by_class = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    weight_part, arch_part = [], []
    for target in sorted(by_class):
        indices = np.array(by_class[target])
        if len(indices) < 2:
            raise UserError(f"--arch_split_from_train: class {target} of train/ has {len(indices)} image; "
                            "each class needs at least 2 to split")
        shuffled = generator.permutation(indices)
        count = min(len(indices) - 1, max(1, round(fraction * len(indices))))
        arch_part += sorted(shuffled[:count].tolist())
        weight_part += sorted(shuffled[count:].tolist())
    return weight_part, arch_part


# ---------------------------------------------------------------------------
# Seeded loading


def sample_seed(seed, epoch, index):
    """A well-mixed 63-bit seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]) >> 1


class EpochSeededDataset(torch.utils.data.Dataset):
    """Draws each sample's augmentation from a generator seeded by (seed,
    epoch, index) alone, so the images do not depend on the number of
    loading processes and a resumed run sees exactly the images an
    uninterrupted one would. Indexed by (epoch, index) pairs, which
    EpochSampler yields: persistent workers never see `set_epoch`."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        # torchvision's random transforms draw from the global CPU generator;
        # fork it so the caller's stream (dropout) is untouched, and seed only
        # it: torch.manual_seed would also reseed every CUDA generator (which
        # fork_rng(devices=[]) does not restore) and, before CUDA starts,
        # record a stack trace per call (most of a 32 px epoch's loading time).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler whose items carry the epoch: (epoch, index)."""

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


def loader_options(workers, device, seed, prefetch_factor=2):
    """Keep the model fed: parallel decoding, page-locked memory for
    asynchronous copies to the GPU, workers kept alive between epochs and
    batches prepared ahead."""
    options = dict(num_workers=workers, pin_memory=device.type == "cuda",
                   # own generator: creating an iterator must not draw from the
                   # global one, or a resumed run would diverge
                   generator=torch.Generator().manual_seed(seed))
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return options


def seeded_loader(dataset, batch_size, seed, context, workers, prefetch_factor=2, what="train/"):
    """A shuffled loader over this process's shard of `dataset` (batches of
    `batch_size`, the last incomplete one dropped: a one-image batch would
    break BatchNorm). Call `loader.sampler.set_epoch(epoch)` every epoch."""
    sampler = EpochSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed)
    loader = torch.utils.data.DataLoader(EpochSeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler,
                                         drop_last=True,
                                         **loader_options(workers, context.device, seed, prefetch_factor))
    if len(loader) == 0:
        raise UserError(f"{what} has {len(dataset)} images: fewer than one batch of {batch_size} per process; "
                        "lower the batch size")
    return loader


# ---------------------------------------------------------------------------
# Synthetic dataset

# Bump when the drawing changes, so cached datasets of an older format are regenerated.
SYNTHETIC_FORMAT_VERSION = 1
SYNTHETIC_META_FILE = "synthetic.json"
SPLIT_SEED_IDS = {"train": 0, "val": 1}

# Sized for CPU demos: 64 px leaves a 2x2 map after the networks' 32x downsampling
# and keeps stripes, checks and dots several pixels wide after the random-resized
# crop; 10 x 150 training images keep an epoch at a few CPU seconds for a small net
# yet give the search two halves to alternate between; 50 validation images per
# class measure accuracy to about +-2 points. Generation takes a few seconds.
# num_classes None: every class of the kind.
DEFAULT_SYNTHETIC = dict(kind="patterns", num_classes=None, train_per_class=150, val_per_class=50,
                         image_size=64, seed=0)

# Below this period (in pixels) stripes, checks and dots blur into flat colour.
MIN_TEXTURE_PERIOD_PX = 4.0
# Stripes identify their class by orientation, so they only tilt a little.
STRIPE_MAX_TILT = np.radians(15)


def coverage(distance):
    """How much of each pixel lies inside a shape, from its signed distance (in
    pixels) to the edge: a one-pixel ramp antialiases without supersampling."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def local_frame(image_size, center, angle):
    """Pixel-centre coordinates relative to `center`, rotated by `angle` radians."""
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    x, y = x - center[0], y - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * x + sin * y, -sin * x + cos * y


def random_center(rng, image_size):
    # Kept in the middle so that the evaluation centre crop does not cut the pattern.
    return rng.uniform(0.3, 0.7, size=2) * image_size


def random_shape_frame(rng, image_size, radius=(0.15, 0.28)):
    """The frame of a shape at a random position and rotation, and its radius
    (a random fraction in `radius` of the image size)."""
    u, v = local_frame(image_size, random_center(rng, image_size), rng.uniform(-np.pi, np.pi))
    return u, v, rng.uniform(*radius) * image_size


# Signed distances (pixels, negative inside) to the edge of each shape, in the
# shape's frame; `stroke` is the range of a ring's or a cross's half width as
# a fraction of the radius (drawn from `rng`), unused by the solid shapes.
def disc_distance(u, v, radius, rng, stroke):
    return np.hypot(u, v) - radius


def square_distance(u, v, radius, rng, stroke):
    return np.maximum(np.abs(u), np.abs(v)) - 0.85 * radius


def triangle_distance(u, v, radius, rng, stroke):
    # Equilateral: inside all three edges, whose inradius is half the circumradius.
    normals = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    edges = [np.cos(a) * u + np.sin(a) * v for a in normals]
    return np.maximum.reduce(edges) - radius / 2


def ring_distance(u, v, radius, rng, stroke):
    half_width = rng.uniform(*stroke) * radius
    return np.abs(np.hypot(u, v) - radius) - half_width


def cross_distance(u, v, radius, rng, stroke):
    half_width = rng.uniform(*stroke) * radius
    bar = np.maximum(np.abs(u) - radius, np.abs(v) - half_width)
    upright = np.maximum(np.abs(u) - half_width, np.abs(v) - radius)
    return np.minimum(bar, upright)


SHAPE_DISTANCES = (("disc", disc_distance), ("square", square_distance), ("triangle", triangle_distance),
                   ("ring", ring_distance), ("cross", cross_distance))


def shape_drawer(distance, stroke=None):
    """A class of the patterns set: the shape `distance` draws, alone."""
    def draw(rng, image_size):
        u, v, radius = random_shape_frame(rng, image_size)
        return coverage(distance(u, v, radius, rng, stroke))
    return draw


def texture_period(rng, image_size, low, high):
    return max(rng.uniform(low, high) * image_size, MIN_TEXTURE_PERIOD_PX)


def stripes(rng, image_size, across):
    """Bands of half a period each, varying along the coordinate `across`."""
    period = texture_period(rng, image_size, 0.1, 0.16)
    wave = np.sin(2 * np.pi * across / period + rng.uniform(0, 2 * np.pi))
    return coverage(-wave * period / (2 * np.pi))


def checkerboard(rng, image_size, u, v):
    period = texture_period(rng, image_size, 0.12, 0.2)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    wave = np.sin(2 * np.pi * u / period + phases[0]) * np.sin(2 * np.pi * v / period + phases[1])
    return coverage(-wave * period / (2 * np.pi))


def dots(rng, image_size, u, v):
    period = texture_period(rng, image_size, 0.15, 0.22) + 1
    radius = rng.uniform(0.22, 0.32) * period
    offsets = rng.uniform(0, 1, size=2)
    cell_u = (u / period + offsets[0]) % 1 - 0.5
    cell_v = (v / period + offsets[1]) % 1 - 0.5
    return coverage(np.hypot(cell_u, cell_v) * period - radius)


def grain(rng, image_size, u, v):
    return (rng.random((image_size, image_size)) < rng.uniform(0.3, 0.5)).astype(np.float64)


def textured_patch(rng, image_size, texture, max_angle=np.pi):
    """`texture(rng, image_size, u, v)` seen through an axis-aligned rectangle of
    random position and size, the texture rotated by up to `max_angle`."""
    center = random_center(rng, image_size)
    half_width, half_height = rng.uniform(0.2, 0.34, size=2) * image_size
    x, y = local_frame(image_size, center, 0.0)
    inside = coverage(np.maximum(np.abs(x) - half_width, np.abs(y) - half_height))
    u, v = local_frame(image_size, center, rng.uniform(-max_angle, max_angle))
    return inside * texture(rng, image_size, u, v)


def draw_horizontal_stripes(rng, image_size):
    # Horizontal and vertical (not diagonal) so that a horizontal flip keeps the class.
    return textured_patch(rng, image_size, lambda rng, size, u, v: stripes(rng, size, v),
                          STRIPE_MAX_TILT)


def draw_vertical_stripes(rng, image_size):
    return textured_patch(rng, image_size, lambda rng, size, u, v: stripes(rng, size, u),
                          STRIPE_MAX_TILT)


def draw_checkerboard(rng, image_size):
    return textured_patch(rng, image_size, checkerboard)


def draw_dots(rng, image_size):
    return textured_patch(rng, image_size, dots)


def draw_grain(rng, image_size):
    return textured_patch(rng, image_size, grain)


# (name, function drawing the class's coverage mask in [0, 1]); the order is the label.
SYNTHETIC_CLASSES = (
    ("disc", shape_drawer(disc_distance)),
    ("square", shape_drawer(square_distance)),
    ("triangle", shape_drawer(triangle_distance)),
    ("ring", shape_drawer(ring_distance, stroke=(0.15, 0.25))),
    ("cross", shape_drawer(cross_distance, stroke=(0.22, 0.32))),
    ("hstripes", draw_horizontal_stripes),
    ("vstripes", draw_vertical_stripes),
    ("checkerboard", draw_checkerboard),
    ("dots", draw_dots),
    ("grain", draw_grain),
)


# The composite set: every shape filled with every fill. A fill's lines are a
# few pixels apart, so that they survive the stem's downsampling but not the
# next one, while the outline needs the later layers' larger view: how and
# where a network downsamples decides what it can tell apart. Larger shapes
# than the patterns' (and broader rings and crosses) leave room for the fill.
COMPOSITE_RADIUS = (0.25, 0.4)
COMPOSITE_STROKE = (0.3, 0.4)


def solid_fill(rng, image_size, u, v):
    return 1.0


def horizontal_lines(rng, image_size, u, v):
    return stripes(rng, image_size, v)


def vertical_lines(rng, image_size, u, v):
    return stripes(rng, image_size, u)


# (name, texture(rng, image_size, u, v), how far the texture may turn); lines
# barely turn, so that a horizontal flip keeps the class.
FILLS = (("solid", solid_fill, 0.0), ("hlines", horizontal_lines, STRIPE_MAX_TILT),
         ("vlines", vertical_lines, STRIPE_MAX_TILT), ("checks", checkerboard, np.pi))


def composite_drawer(distance, texture, max_angle):
    """A class of the composite set: a shape drawn by `distance`, filled with `texture`."""
    def draw(rng, image_size):
        u, v, radius = random_shape_frame(rng, image_size, COMPOSITE_RADIUS)
        shape = coverage(distance(u, v, radius, rng, COMPOSITE_STROKE))
        middle = (image_size / 2, image_size / 2)
        return shape * texture(rng, image_size, *local_frame(image_size, middle, rng.uniform(-max_angle, max_angle)))
    return draw


COMPOSITE_CLASSES = tuple((f"{shape}-{fill}", composite_drawer(distance, texture, max_angle))
                          for shape, distance in SHAPE_DISTANCES for fill, texture, max_angle in FILLS)

# The synthetic sets by kind: "patterns", ten classes of shapes or textures whose
# colour leans towards the class; "composite", twenty shape-and-fill classes in
# any colour, harder (a pilot in docs/results.md: networks spread wider on it, and
# so do a network's seeds).
SYNTHETIC_KINDS = {"patterns": SYNTHETIC_CLASSES, "composite": COMPOSITE_CLASSES}
COLOUR_HINT_KINDS = ("patterns",)


def synthetic_class_folder(kind, label):
    """`class_03_ring`: the two-digit label first, so sorted order is label order."""
    return f"class_{label:02d}_{SYNTHETIC_KINDS[kind][label][0]}"


def hsv_colour(hue, saturation, value):
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def foreground_colour(rng, label, dark_background, hint):
    # With a hint, each class leans towards its own hue, but the ranges
    # overlap: colour is a hint, never the answer. Without, any hue.
    hue = label / len(SYNTHETIC_CLASSES) + rng.uniform(-0.2, 0.2) if hint else rng.uniform(0, 1)
    value = rng.uniform(0.65, 1.0) if dark_background else rng.uniform(0.15, 0.45)
    return hsv_colour(hue, rng.uniform(0.5, 1.0), value)


def gradient_background(rng, image_size, dark_background):
    """A linear gradient between two random colours, in a random direction."""
    low, high = (0.05, 0.35) if dark_background else (0.7, 1.0)
    colours = [hsv_colour(rng.uniform(0, 1), rng.uniform(0, 0.5), rng.uniform(low, high))
               for _ in range(2)]
    x, _ = local_frame(image_size, (image_size / 2, image_size / 2), rng.uniform(-np.pi, np.pi))
    weight = np.clip(x / image_size + 0.5, 0, 1)[..., None]
    return colours[0] * (1 - weight) + colours[1] * weight


def render_synthetic_image(kind, label, image_size, rng):
    """One RGB uint8 image of class `label` of the `kind` set: its pattern in a
    jittered colour over a gradient background (contrast assured: one dark, the
    other light), plus noise."""
    mask = SYNTHETIC_KINDS[kind][label][1](rng, image_size)[..., None]
    dark_background = rng.random() < 0.5
    background = gradient_background(rng, image_size, dark_background)  # first: the draws' order makes the image
    colour = foreground_colour(rng, label, dark_background, hint=kind in COLOUR_HINT_KINDS)
    image = background * (1 - mask) + colour * mask
    image += rng.normal(0.0, rng.uniform(0.01, 0.08), size=image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def synthetic_image_rng(seed, split, label, index):
    # Seeded per image, so an image does not depend on the order of generation.
    return np.random.default_rng([seed, SPLIT_SEED_IDS[split], label, index])


def synthetic_metadata(**params):
    """The synthetic.json content for these parameters (DEFAULT_SYNTHETIC's
    names; those not given keep its values), after checking them."""
    unknown = set(params) - set(DEFAULT_SYNTHETIC)
    if unknown:
        raise TypeError(f"synthetic dataset: unknown parameters {sorted(unknown)}")
    return checked_synthetic_metadata(**dict(DEFAULT_SYNTHETIC, **params))


def checked_synthetic_metadata(kind, num_classes, train_per_class, val_per_class, image_size, seed):
    if kind not in SYNTHETIC_KINDS:
        raise UserError(f"synthetic dataset: kind must be one of {', '.join(SYNTHETIC_KINDS)}, got {kind!r}")
    if num_classes is None:
        num_classes = len(SYNTHETIC_KINDS[kind])
    params = dict(num_classes=num_classes, train_per_class=train_per_class,
                  val_per_class=val_per_class, image_size=image_size, seed=seed)
    for name, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"synthetic dataset: {name} must be an integer, got {value!r}")
    if not 2 <= num_classes <= len(SYNTHETIC_KINDS[kind]):
        raise UserError(f"synthetic dataset: num_classes must be 2 to {len(SYNTHETIC_KINDS[kind])} for the {kind} "
                        f"set, got {num_classes}")
    if min(train_per_class, val_per_class) < 1:
        raise UserError("synthetic dataset: train_per_class and val_per_class must be at least 1")
    if image_size < 16:
        raise UserError(f"synthetic dataset: image_size must be at least 16 px, got {image_size}")
    if seed < 0:
        raise UserError(f"synthetic dataset: seed must be non-negative, got {seed}")
    classes = [synthetic_class_folder(kind, label) for label in range(num_classes)]
    return dict(format_version=SYNTHETIC_FORMAT_VERSION, kind=kind, **params, classes=classes)


def synthetic_class_count(**params):
    """How many classes the synthetic set of these parameters (data.synthetic_dataset's) has."""
    return synthetic_metadata(**params)["num_classes"]


def write_synthetic_dataset(root, **params):
    """Write `root/{train,val}/class_XX_name/NNNNN.png` and `root/synthetic.json`
    for the parameters of DEFAULT_SYNTHETIC (those not given keep its values).

    The same arguments give byte-identical files. The tree is built in a temporary
    sibling folder and moved into place at the end, so an interrupted run never
    leaves a half-written dataset; an existing synthetic dataset at `root` is
    replaced, any other existing folder is refused."""
    meta = synthetic_metadata(**params)
    root = Path(root)
    if root.exists() and not (root / SYNTHETIC_META_FILE).is_file():
        raise UserError(f"{root} exists and is not a synthetic dataset "
                        f"(no {SYNTHETIC_META_FILE}): choose another folder or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's private 0700 would make a shared cache unreadable
        for split in ("train", "val"):
            write_synthetic_split(staging / split, split, meta, meta[f"{split}_per_class"])
        (staging / SYNTHETIC_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        move_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def write_synthetic_split(folder, split, meta, per_class):
    for label, class_name in enumerate(meta["classes"]):
        class_folder = folder / class_name
        class_folder.mkdir(parents=True)
        for index in range(per_class):
            rng = synthetic_image_rng(meta["seed"], split, label, index)
            pixels = render_synthetic_image(meta["kind"], label, meta["image_size"], rng)
            Image.fromarray(pixels).save(class_folder / f"{index:05d}.png")


def move_into_place(staging, root):
    """Rename the finished `staging` folder to `root`, replacing an old `root`."""
    if root.exists():
        # os.replace cannot overwrite a non-empty folder, but can an empty one:
        # park the old dataset there, then delete it once the new one is in place.
        parked = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, parked)
        os.replace(staging, root)
        shutil.rmtree(parked)
    else:
        os.replace(staging, root)


def is_synthetic_dataset(root):
    """Whether `root` names a synthetic set's folder (as synthetic_dataset
    names them), whether or not it is still there."""
    return os.path.basename(os.path.normpath(root)).startswith("synthetic-v")


def read_synthetic_metadata(root):
    """The parsed synthetic.json of `root`, or None if it is missing or unreadable."""
    try:
        return json.loads((Path(root) / SYNTHETIC_META_FILE).read_text())
    except (OSError, ValueError):
        return None


def default_data_dir():
    """Where generated datasets are cached: $LIGHTNAS_DATA, else ~/.cache/lightnas."""
    return Path(os.environ.get("LIGHTNAS_DATA") or Path.home() / ".cache" / "lightnas").expanduser()


def synthetic_dataset_once(context, **params):
    """`synthetic_dataset(**params)` under several processes: generated by
    one process per machine while the others wait (they would otherwise
    write the same folder at once)."""
    if context.local_rank != 0:
        barrier(context)
    root = synthetic_dataset(**params)
    if context.local_rank == 0:
        barrier(context)
    return root


def barrier(context):
    if context.distributed:
        torch.distributed.barrier()


def synthetic_folder_name(**params):
    """The name of the folder synthetic_dataset(**params) generates the set
    into: its parameters spelled out."""
    meta = synthetic_metadata(**params)
    return (f"synthetic-v{SYNTHETIC_FORMAT_VERSION}-{meta['kind']}-{meta['num_classes']}classes-"
            f"{meta['train_per_class']}train-{meta['val_per_class']}val-{meta['image_size']}px-seed{meta['seed']}")


def synthetic_dataset(root=None, **params):
    """The path of a ready synthetic dataset with these parameters (those of
    DEFAULT_SYNTHETIC; the ones not given keep its values), generated on first
    use into a folder named after them under `root` (default:
    `default_data_dir()`), regenerated if its synthetic.json does not match.
    With several processes (distributed training), call it in one first."""
    meta = synthetic_metadata(**params)
    base = Path(root if root is not None else default_data_dir())
    # What names the folder: a script's --data_root where it has one, else the variable.
    setting = "--data_root" if root is not None else "LIGHTNAS_DATA"
    refuse_link_to_nothing(str(base), setting)  # else "cannot write ... (File exists)"
    if base.exists() and not base.is_dir():
        raise UserError(f"the synthetic dataset's folder {base} is a file; give a folder ({setting})")
    folder = base / synthetic_folder_name(**params)
    if read_synthetic_metadata(folder) != meta:
        try:
            write_synthetic_dataset(folder, **{key: meta[key] for key in DEFAULT_SYNTHETIC})
        except OSError as error:
            raise UserError(f"cannot write the synthetic dataset into {base} ({error.strerror or error}); set "
                            f"{setting} to a writable folder") from None
    return str(folder)  # a plain string: it ends up in saved arguments


if __name__ == "__main__":
    refuse_running_a_library("data.py", "the scripts load their data through it; its synthetic set: "
                             "docs/training.md, Synthetic data for demos and tests")
