"""The documentation holds up: every relative link in README.md and docs/
points at a file that exists (and, with #anchor, at one of its headings),
and every command README.md shows parses with its script's own options."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
README_MAX_LINES = 250


def heading_anchors(page):
    """The anchors GitHub gives the headings of a Markdown page."""
    text = FENCE.sub("", page.read_text())  # a '# comment' in a code block is no heading
    anchors = set()
    for title in re.findall(r"^#+ (.+)$", text, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
    return anchors


def relative_links(page):
    text = FENCE.sub("", page.read_text())
    return [target for target in LINK.findall(text) if not target.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and anchor not in heading_anchors(destination):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_is_short_and_links_every_page_of_the_docs():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = {Path(target.partition("#")[0]).name for target in relative_links(REPO_ROOT / "README.md")}
    assert {page.name for page in PAGES[1:]} <= linked


def shell_commands(markdown):
    """Each command of the bash blocks: continuation lines joined, `a && b`
    split, comments dropped, as lists of words."""
    commands = []
    for language, block in FENCE.findall(markdown):
        if language != "bash":
            continue
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("&&"):
                words = shlex.split(command, comments=True)
                if words:
                    commands.append(words)
    return commands


def script_and_arguments(words):
    """(script path, its arguments) for `[VAR=value ...] python3 script.py
    ...` or `torchrun [options] script.py ...`; None for other commands."""
    while words and re.fullmatch(r"\w+=\S*", words[0]):
        words = words[1:]
    if words[:1] not in (["python3"], ["torchrun"]) or words[1:3] == ["-m", "pytest"]:
        return None
    script_at = next(index for index, word in enumerate(words) if word.endswith(".py"))
    return words[script_at], words[script_at + 1:]


README_COMMANDS = [found for found in map(script_and_arguments, shell_commands((REPO_ROOT / "README.md").read_text()))
                   if found is not None]


def test_the_readme_shows_the_scripts_users_run():
    scripts = {script for script, _ in README_COMMANDS}
    assert {"search_imagenet.py", "train_imagenet.py", "evaluate.py", "latency_build.py"} <= scripts


@pytest.mark.parametrize("script, arguments", README_COMMANDS, ids=lambda value: value if isinstance(value, str)
                         else None)
def test_every_readme_command_parses_with_its_scripts_options(script, arguments, capsys):
    assert (REPO_ROOT / script).is_file(), script
    parser = importlib.import_module(Path(script).stem).get_args_parser()
    try:
        parser.parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{script} {' '.join(arguments)}: {capsys.readouterr().err.strip()}")


def test_the_readme_commands_are_found_as_written():
    """The parser of this test sees the commands a reader copies (a check of
    the check: the first command of the README, and a continued line)."""
    assert ("search_imagenet.py", ["--save", "search-demo", "--target_latency", "24"]) in README_COMMANDS
    continued = [arguments for script, arguments in README_COMMANDS
                 if script == "evaluate.py" and "--batch_size" in arguments]
    assert continued and "--model" in continued[0]
