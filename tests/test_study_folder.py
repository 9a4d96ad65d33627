"""The study folder has one owner (connectorlab/study/folder.py): its file names and the evaluation-name grammar are
spelled nowhere else, and an evaluation's name reads back as the key that made it."""
import ast
from pathlib import Path

import pytest

from connectorlab.study.folder import EvalKey

PACKAGE = Path(__file__).resolve().parents[1] / "connectorlab"


@pytest.mark.parametrize("key", [EvalKey("mmbench"), EvalKey("mme", blind=True), EvalKey("probe", reduction="random-9")],
                         ids=["plain", "blind", "reduced"])
def test_an_evaluation_name_reads_back_as_its_key(key):
    assert EvalKey.parse(str(key)) == key
    assert key.plain == (not key.blind and key.reduction is None)


def test_the_names_the_runner_gives_are_the_keys_grammar():
    assert str(EvalKey("probe", blind=True)) == "probe_blind" and str(EvalKey("probe", reduction="pool-4")) == "probe@pool-4"


@pytest.mark.parametrize("literal", ["study.json", "step_timing.json", "cell.json", "_blind", "@", "pretrain/"])
def test_the_study_folders_literals_have_one_owner(literal):
    """As a whole string constant (messages that mention a file are prose, not layout)."""
    owners = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == literal:
                owners.add(path.relative_to(PACKAGE).as_posix())
    assert owners <= {"study/folder.py"}, owners
