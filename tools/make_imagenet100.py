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
classes. The subset is built in a temporary folder and renamed at the end:
an interrupted run leaves no half-built subset.
"""

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import UserError, run_cli  # noqa: E402

SPLITS = ("train", "val")
NUM_CLASSES = 100
RULES = ("first", "spread")


def class_folders(root, split):
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise UserError(f"--imagenet: {path} is not a folder; expected train/ and val/ with one folder per class "
                        "(see preprocess_val_dataset.sh for val/)")
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


def choose_classes(classes, rule, count=NUM_CLASSES):
    """The classes a rule picks from the sorted class list."""
    if len(classes) < count:
        raise UserError(f"--imagenet has {len(classes)} classes; a {count}-class subset needs at least {count}")
    if rule == "first":
        return classes[:count]
    stride = len(classes) // count
    return classes[::stride][:count]


def build_subset(imagenet, out, classes):
    """Write out/{train,val}/<class> symlinks and out/classes.txt, atomically."""
    partial = out.rstrip(os.sep) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    for split in SPLITS:
        os.makedirs(os.path.join(partial, split))
        for name in classes:
            os.symlink(os.path.abspath(os.path.join(imagenet, split, name)), os.path.join(partial, split, name))
    with open(os.path.join(partial, "classes.txt"), "w") as file:
        file.write("\n".join(classes) + "\n")
    os.rename(partial, out)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imagenet", required=True, help="full ImageNet: a folder holding train/ and val/")
    parser.add_argument("--out", required=True, help="the subset folder to create (must not exist)")
    parser.add_argument("--rule", choices=RULES, default="first",
                        help="first: the first 100 sorted classes, as the paper's search (default); "
                             "spread: every 10th sorted class")
    return parser


def main(args):
    train_classes, val_classes = (class_folders(args.imagenet, split) for split in SPLITS)
    if train_classes != val_classes:
        missing = sorted(set(train_classes) ^ set(val_classes))
        raise UserError(f"--imagenet: train/ and val/ hold different classes (e.g. {', '.join(missing[:3])}); "
                        "prepare val/ with preprocess_val_dataset.sh first")
    if os.path.exists(args.out):
        raise UserError(f"--out {args.out} already exists; remove it or choose another folder")
    classes = choose_classes(train_classes, args.rule)
    build_subset(args.imagenet, args.out, classes)
    print(f"{args.out}: {len(classes)} classes ({args.rule} rule: {classes[0]} ... {classes[-1]}) linked from "
          f"{args.imagenet}; search with --dataset {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
