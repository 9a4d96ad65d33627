"""The public facade: `from connectorlab import ...` reaches train, evaluation, the study and interop without the
CLI; importing the package, or `connectorlab --version`, loads none of the heavy libraries."""
import subprocess
import sys

import pytest
from helpers import ROOT

import connectorlab

HEAVY = ("torch", "transformers", "accelerate", "pandas", "matplotlib")


@pytest.mark.slow
@pytest.mark.parametrize("code", [
    "import connectorlab",
    "from connectorlab.cli import main\nsys.argv = ['connectorlab', '--version']\ntry:\n    main()\nexcept SystemExit:\n    pass",
], ids=["import", "version"])
def test_nothing_heavy_is_imported_for_the_package_or_the_version(code):
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_every_public_name_resolves_to_its_home():
    for name in connectorlab.__all__:
        value = getattr(connectorlab, name)
        assert value is not None and name in dir(connectorlab)
    assert connectorlab.load.__module__ == "connectorlab.api" and connectorlab.train.__module__.endswith("trainer")
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        connectorlab.trian  # noqa: B018


def test_plan_study_expands_a_plan_without_running_it():
    plan, cells = connectorlab.plan_study(ROOT / "configs/studies/paper_7b_accelerate.yaml")
    assert plan.name == "paper-grid-7b" and len(cells) == 2 * 3 + 3 * 3 * 2  # linear, mlp; 3 compressing x 2 budgets


def test_export_refuses_an_unknown_format(tmp_path):
    from connectorlab.errors import InputError

    with pytest.raises(InputError, match="one of llava-hf, hf-remote-code"):
        connectorlab.export(tmp_path, tmp_path / "out", format="gguf")
