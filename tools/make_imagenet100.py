"""Build a 100-class ImageNet subset ("ImageNet-100") out of symlinks.

The paper searches on 100 ImageNet classes. `search_imagenet.py --dataset
/path/to/imagenet` already restricts itself to the first 100 class folders
(`--num_classes 100`), so a subset folder is optional; it helps when the
search should read a smaller tree (copy it to a local disk, list it faster)
or when another tool needs the 100 classes on their own.

Class rule (`--rule`):
- `first` (default): the first 100 class folders in sorted order (n01440764
  ... n01855672), exactly the classes `--num_classes 100` picks from full
  ImageNet, as the authors' search does. They are all animals (fish, birds,
  amphibians, reptiles, arthropods).
- `spread`: every 10th class folder in sorted order (indices 0, 10, ..., 990),
  which covers the whole WordNet range of ImageNet (animals, objects,
  scenes, food). Not the paper's setting.

    python3 tools/make_imagenet100.py --imagenet /data/imagenet --out /data/imagenet100

Each class folder of the subset is a symlink to the full dataset's folder
(train/ and val/), so nothing is copied; classes.txt lists the chosen
classes.

Which classes the authors searched on is not known: their release searches
on whatever 100-class folder it is given and names no class list. `first`
is what `--num_classes 100` picks from full ImageNet, nothing more.

`--arch_split FRACTION` (beyond the paper) leaves ImageNet's val/ out of the
search altogether: train/ holds the weights' part of ImageNet's training
images, val/ the held-out part alpha is trained on (FRACTION of every class,
drawn by `--seed`; the same images as `search_imagenet.py
--arch_split_from_train FRACTION --seed SEED` on the unsplit subset), and
test/ links ImageNet's val/ classes for the final evaluation only. Every
search, ours or the authors' release, then runs unchanged on the folder
without seeing the images that report the accuracy. Those two folders link
single images (about 1,300 links per class). The subset is built in a temporary folder and renamed at the end:
an interrupted run leaves no half-built subset.
"""

import argparse
import errno
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import check_same_classes, links_to_nothing, split_for_architecture  # noqa: E402
from utils import (UserError, check_seed, path_error_reason, refuse_link_loop, refuse_non_folder,  # noqa: E402
                   refuse_save_inside_dataset, run_cli, write_remedy)

SPLITS = ("train", "val")
DEFAULT_SEED = 10  # the search's default --seed
NUM_CLASSES = 100
RULES = ("first", "spread")


def class_folders(root, split):
    """The class folders of root/split, sorted; a loop of links or a link to
    nothing among them refused by name."""
    path = os.path.join(root, split)
    refuse_non_folder(root, "--imagenet:")
    if not os.path.isdir(path):
        raise UserError(f"--imagenet: {path} is not a folder; expected train/ and val/ with one folder per class "
                        "(see preprocess_val_dataset.sh for val/)")
    folders = []
    for entry in os.scandir(path):
        refuse_link_loop(entry.path, "--imagenet:")
        if entry.is_dir():
            folders.append(entry.name)
    broken = links_to_nothing(path)
    if broken:
        raise UserError(f"--imagenet: {os.path.join(path, broken[0])} is a link to nothing (was the folder it names "
                        "moved?); point it at its class folder again or remove it")
    return sorted(folders)


def choose_classes(classes, rule, count=NUM_CLASSES):
    """The classes a rule picks from the sorted class list."""
    if len(classes) < count:
        raise UserError(f"--imagenet has {len(classes)} classes; a {count}-class subset needs at least {count}")
    if rule == "first":
        return classes[:count]
    stride = len(classes) // count
    if stride < 2:
        raise UserError(f"with {len(classes)} classes --rule spread would pick the first {count}, as --rule first "
                        f"does; it needs at least {2 * count} classes (ImageNet has 1000)")
    return classes[::stride][:count]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's


def build_subset(imagenet, out, classes, arch_split=None, seed=0):
    """Write the subset's symlinks and out/classes.txt, atomically."""
    partial = out.rstrip(os.sep) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        os.makedirs(partial)
        if arch_split is None:
            for split in SPLITS:
                link_class_folders(os.path.join(imagenet, split), os.path.join(partial, split), classes)
        else:
            link_train_split(os.path.join(imagenet, "train"), partial, classes, arch_split, seed)
            link_class_folders(os.path.join(imagenet, "val"), os.path.join(partial, "test"), classes)
        with open(os.path.join(partial, "classes.txt"), "w") as file:
            file.write("\n".join(classes) + "\n")
        os.rename(partial, out)
    except BaseException as error:  # a full or read-only disk, Ctrl-C: no half-built subset stays
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError):
            fix = "choose a shorter --out" if error.errno == errno.ENAMETOOLONG else write_remedy(error)
            raise UserError(f"--out {out}: cannot build the subset there ({path_error_reason(error)}); {fix}") from None
        raise


def link_class_folders(source, destination, classes):
    os.makedirs(destination)
    for name in classes:
        os.symlink(os.path.abspath(os.path.join(source, name)), os.path.join(destination, name))


def link_train_split(train, out, classes, fraction, seed):
    """out/train: the weights' images, out/val: alpha's, per image, in the
    order ImageFolder lists them (classes sorted, files sorted)."""
    images, targets = [], []
    for target, name in enumerate(classes):
        files = sorted(entry.name for entry in os.scandir(os.path.join(train, name))
                       if entry.name.lower().endswith(IMAGE_EXTENSIONS))
        images += [(name, file) for file in files]
        targets += [target] * len(files)
    weight_part, arch_part = split_for_architecture(targets, fraction, seed)
    for split, indices in (("train", weight_part), ("val", arch_part)):
        for name in classes:
            os.makedirs(os.path.join(out, split, name))
        for index in indices:
            name, file = images[index]
            os.symlink(os.path.abspath(os.path.join(train, name, file)), os.path.join(out, split, name, file))


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imagenet", required=True, help="full ImageNet: a folder holding train/ and val/")
    parser.add_argument("--out", required=True, help="the subset folder to create (must not exist)")
    parser.add_argument("--rule", choices=RULES, default="first",
                        help="first: the first 100 sorted classes, as the paper's search (default); "
                             "spread: every 10th sorted class")
    parser.add_argument("--arch_split", type=float, default=None, metavar="FRACTION",
                        help="beyond the paper: val/ = this fraction of each class's training images (for "
                             "alpha), train/ = the rest, test/ = ImageNet's val/ (see above)")
    parser.add_argument("--seed", type=int, default=None,
                        help="draws --arch_split's images (default: 10, the search's default --seed)")
    return parser


def main(args):
    train_classes, val_classes = (class_folders(args.imagenet, split) for split in SPLITS)
    if train_classes and not val_classes:
        raise UserError(f"--imagenet: {os.path.join(args.imagenet, 'val')} holds no class folders; sort its images "
                        "into them with preprocess_val_dataset.sh first")
    check_same_classes(args.imagenet, train_classes, val_classes, option="--imagenet")
    if args.arch_split is not None and not 0 < args.arch_split < 1:
        raise UserError(f"--arch_split must be a fraction in (0, 1), e.g. 0.2; got {args.arch_split}")
    if args.seed is not None and args.arch_split is None:
        raise UserError("--seed draws --arch_split's images, and there is no --arch_split; add it or drop --seed")
    args.seed = DEFAULT_SEED if args.seed is None else args.seed
    check_seed(args.seed)
    if os.path.lexists(args.out):  # a link to nowhere too: the subset would be renamed onto it
        raise UserError(f"--out {args.out} already exists; remove it or choose another folder")
    refuse_save_inside_dataset(args.out, args.imagenet, options=("--out", "--imagenet"))
    classes = choose_classes(train_classes, args.rule)
    build_subset(args.imagenet, args.out, classes, args.arch_split, args.seed)
    split = ("" if args.arch_split is None else
             f"; val/ = {args.arch_split:g} of train/ (seed {args.seed}) for alpha, test/ = ImageNet's val/")
    print(f"{args.out}: {len(classes)} classes ({args.rule} rule: {classes[0]} ... {classes[-1]}) linked from "
          f"{args.imagenet}{split}; search with --dataset {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
