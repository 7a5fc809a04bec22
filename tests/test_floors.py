"""The declared floors: every source file parses with the grammar of the
lowest Python the project supports (a newer construct such as `except*`
or a `type` statement fails here), and requirements.txt gives every
package a floor that tools/test_floors.sh can pin."""

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_FLOOR = (3, 10)  # `X | None` annotations are evaluated at definition time: 3.10+
SOURCES = sorted(path for path in REPO_ROOT.rglob("*.py") if not any(part.startswith(".") for part in path.parts))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_source_parses_with_the_python_floor_grammar(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=PYTHON_FLOOR)


def test_every_requirement_has_a_pinnable_floor():
    lines = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9][0-9A-Za-z.]*", line) for line in requirements)
    assert "Python 3.10+" in lines[0]  # the floor PYTHON_FLOOR checks
