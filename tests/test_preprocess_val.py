"""Tests for preprocess_val_dataset.sh and the tool that generates it.

The script is run on folders of 50,000 empty files named like the real ImageNet
validation images, so the tests need the label list but not the dataset itself.
"""

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = REPO_ROOT.parent / "shared" / "data" / "imagenet_val_labels.tsv"
SCRIPT = REPO_ROOT / "preprocess_val_dataset.sh"
GENERATOR = REPO_ROOT / "tools" / "build_preprocess_script.py"

SHM = Path("/dev/shm")
SCRATCH_INODES = 120_000  # two 50,000-file trees with room to spare

pytestmark = pytest.mark.skipif(not LABELS.is_file(), reason=f"label list not found at {LABELS}")


def shm_usable():
    return (SHM.is_dir() and os.access(SHM, os.W_OK)
            and os.statvfs(SHM).f_favail >= SCRATCH_INODES)


@pytest.fixture
def scratch(tmp_path):
    """An empty folder, in memory where possible: on a busy disk, creating and
    moving 50,000 files takes several times longer than the script's own work."""
    if not shm_usable():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=SHM, prefix="test_preprocess_val.") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def labels():
    """{image name: wnid} from the public label list."""
    pairs = (line.split("\t") for line in LABELS.read_text().splitlines())
    return {name: wnid for name, wnid in pairs}


def make_val_folder(folder, paths):
    """Create empty files at the given relative paths, plus a copy of the script, as users do."""
    folder.mkdir()
    for parent in {Path(path).parent for path in paths}:
        (folder / parent).mkdir(exist_ok=True)
    for path in paths:
        (folder / path).touch()
    shutil.copy(SCRIPT, folder / SCRIPT.name)


def run_script(cwd, *args, script=SCRIPT.name):
    return subprocess.run(["bash", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def tree(folder):
    return {
        str(Path(root, name).relative_to(folder))
        for root, dirs, files in os.walk(folder)
        for name in dirs + files
    }


def top_level_images(folder):
    return [p.name for p in folder.glob("ILSVRC2012_val_*.JPEG")]


def assert_sorted(folder, labels, names):
    for name in names:
        assert (folder / labels[name] / name).is_file(), name


def test_sorts_all_images_and_rerun_changes_nothing(scratch, labels):
    val = scratch / "val"
    make_val_folder(val, list(labels))

    first = run_script(val)
    assert first.returncode == 0, first.stderr
    assert "moved 50000 images into 1000 class folders; 0 already in place" in first.stdout
    assert len([p for p in val.iterdir() if p.is_dir()]) == 1000
    assert top_level_images(val) == []
    assert_sorted(val, labels, random.Random(0).sample(sorted(labels), 300))

    before = tree(val)
    second = run_script(val)
    assert second.returncode == 0, second.stderr
    assert "moved 0 images into 1000 class folders; 50000 already in place" in second.stdout
    assert tree(val) == before


def test_reports_missing_images_and_sorts_the_rest(scratch, labels):
    # A half-sorted folder (as after an interrupted run) with a few images lost;
    # most images start in their class folder, which also keeps this test quick.
    rng = random.Random(1)
    gone = set(rng.sample(sorted(labels), 5))
    present = sorted(set(labels) - gone)
    at_top = set(rng.sample(present, 500))
    val = scratch / "val"
    make_val_folder(val, [name if name in at_top else f"{labels[name]}/{name}" for name in present])

    # Run from elsewhere with the folder as argument, to cover that calling form too.
    result = run_script(scratch, "val", script=val / SCRIPT.name)
    assert result.returncode == 1
    assert "moved 500 images into 1000 class folders; 49495 already in place" in result.stdout
    assert "5 expected images" in result.stderr
    for name in gone:
        assert name in result.stderr
    assert top_level_images(val) == []
    assert len([path for path in tree(val) if path.endswith(".JPEG")]) == len(present)
    assert_sorted(val, labels, at_top)


def test_empty_folder_is_refused_without_changes(scratch):
    val = scratch / "val"
    make_val_folder(val, [])

    result = run_script(val)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "none of the ILSVRC2012 validation images" in result.stderr
    assert tree(val) == {SCRIPT.name}


def test_a_file_where_a_class_folder_goes_is_refused_without_changes(scratch, labels):
    # Before: mkdir's own message, exit 1, and the other 999 class folders left behind empty.
    val = scratch / "val"
    make_val_folder(val, sorted(labels)[:3] + ["n01751748"])
    before = tree(val)
    result = run_script(val)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "taken by files" in result.stderr and "n01751748" in result.stderr
    assert tree(val) == before


def test_a_folder_named_like_an_image_is_not_moved_as_one(scratch, labels):
    # Before: counted and moved as an image ("moved 2 images").
    first, second = sorted(labels)[:2]
    val = scratch / "val"
    make_val_folder(val, [second])
    (val / first).mkdir()
    result = run_script(val)
    assert "moved 1 images" in result.stdout
    assert (val / first).is_dir() and (val / labels[second] / second).is_file()


def test_an_unwritable_folder_is_refused_in_one_line(scratch, labels):
    # Before: 1000 lines of mkdir's "Permission denied" (or "Read-only file system").
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if as_nobody and not shutil.which("setpriv"):
        pytest.skip("root ignores permission bits, and setpriv is missing to run as another user")
    val = scratch / "val"
    make_val_folder(val, sorted(labels)[:3])
    before = tree(val)
    val.chmod(0o555)
    try:
        result = subprocess.run([*as_nobody, "bash", SCRIPT.name], cwd=val, capture_output=True, text=True,
                                timeout=120)
    finally:
        val.chmod(0o755)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not writable" in result.stderr
    assert tree(val) == before


def test_committed_script_is_up_to_date(tmp_path):
    fresh = tmp_path / SCRIPT.name
    subprocess.run([sys.executable, str(GENERATOR), "--labels", str(LABELS), "--out", str(fresh)],
                   check=True, capture_output=True, timeout=60)
    assert fresh.read_bytes() == SCRIPT.read_bytes(), \
        "preprocess_val_dataset.sh is stale; rerun tools/build_preprocess_script.py"


def test_generator_rejects_incomplete_labels(tmp_path):
    truncated = tmp_path / "labels.tsv"
    truncated.write_text("".join(LABELS.read_text().splitlines(keepends=True)[:-1]))
    out = tmp_path / "out.sh"

    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--labels", str(truncated), "--out", str(out)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    expected = f"error: {truncated} lists 49999 images, expected 50000"
    assert result.stderr.strip().splitlines() == [expected]
    assert not out.exists()
