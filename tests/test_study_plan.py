"""Study plans: typed and validated, expanded into cells with stable identities, sized on the meta device."""
import copy
import json
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT

from connectorlab.study.plan import StudyPlan, expand
from connectorlab.study.sizes import describe_cells
from connectorlab.utils.validation import ConfigError

PAPER_PLANS = sorted((ROOT / "configs/studies").glob("paper_7b_*.yaml"))


@pytest.mark.parametrize("path", PAPER_PLANS, ids=lambda p: p.name)
def test_paper_grid_expands_without_weights(path):
    plan = StudyPlan.from_file(path)
    assert not (ROOT / plan.model["vision"]).exists()  # nothing on disk: widths come from the plan's shape
    cells = expand(plan)
    rows = {r.cell: r for r in describe_cells(plan, cells)}
    assert len(cells) == 24  # linear, mlp at 3 resolutions + 3 compressing x 3 resolutions x 2 budgets
    assert [rows[f"linear-{s}px-s0"].visual_tokens for s in (224, 336, 448)] == [256, 576, 1024]
    assert {rows[f"{c}-{q}t-{s}px-s0"].visual_tokens for c in ("avgpool", "qformer", "c_abstractor")
            for q in (64, 144) for s in (224, 336, 448)} == {64, 144}
    assert rows["mlp-336px-s0"].parameters == 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # connectors.md: 20.98 M
    assert all(r.flops > 0 for r in rows.values())
    assert all(c.config.pretrain.global_batch == 256 and c.config.finetune.global_batch == 128 for c in cells)
    assert plan.execution.processes == 8 and plan.execution.engine in ("accelerate", "slurm")


def test_the_cpu_example_plan_expands_on_the_readme_presets(toy, tmp_path):
    """configs/studies/probe_cpu.yaml with runs/toy made as its header says (here: the tests' toy probe and presets)."""
    text = (ROOT / "configs/studies/probe_cpu.yaml").read_text()
    path = tmp_path / "probe_cpu.yaml"
    path.write_text(text.replace("runs/toy/models", str(toy / "models")).replace("runs/toy", str(toy / "probe")))
    plan = StudyPlan.from_file(path)
    rows = {r.cell: r for r in describe_cells(plan, expand(plan))}
    assert sorted(rows) == ["avgpool-16t-64px-s0", "avgpool-4t-32px-s0", "avgpool-4t-64px-s0", "c_abstractor-16t-64px-s0",
                            "c_abstractor-4t-32px-s0", "c_abstractor-4t-64px-s0", "mlp-32px-s0", "mlp-64px-s0"]
    assert rows["mlp-64px-s0"].visual_tokens == 64 and rows["avgpool-16t-64px-s0"].visual_tokens == 16


@pytest.mark.slow
def test_a_missing_checkpoint_folder_is_named_with_its_key(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model": {"vision": str(tmp_path / "nothing"), "llm": str(tmp_path / "nothing")},
                                    "grid": {"connectors": ["mlp"]}}))
    res = subprocess.run([sys.executable, "-m", "connectorlab", "study", "plan", str(path)], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 2 and f"model.vision = '{tmp_path / 'nothing'}': no such file or folder" in res.stderr


@pytest.mark.slow
def test_study_plan_cli_prints_the_grid():
    res = subprocess.run([sys.executable, "-m", "connectorlab", "study", "plan", str(PAPER_PLANS[0]), "--json",
                          "--no-check-paths"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 24
    res = subprocess.run([sys.executable, "-m", "connectorlab", "study", "plan", str(PAPER_PLANS[0]), "--no-check-paths"],
                         cwd=ROOT,
                         capture_output=True, text=True)
    assert "24 cells, 24 distinct stage-1 runs, 3 benchmark(s)" in res.stdout
    assert "the token axis does not apply to linear, mlp" in res.stdout


@pytest.fixture()
def tiny_plan(tiny_dir):
    return {
        "name": "tiny", "output_dir": "runs/tiny-study",
        "model": {"vision": str(tiny_dir / "clip"), "llm": str(tiny_dir / "llm"), "select_layer": -1},
        "pretrain": {"data": "p.json", "global_batch": 8, "micro_batch": 4},
        "finetune": {"data": "f.json", "global_batch": 8, "micro_batch": 4},
        "training": {"cache_features": True},
        "grid": {"connectors": ["mlp", {"name": "avgpool"}, {"name": "perceiver", "options": {"layers": 1}}],
                 "resolutions": [32, 48], "tokens": [4, 9], "seeds": [0, 1]},
        "benchmarks": [{"name": "probe", "data": "test.tsv", "blind": True}],
    }


def test_axes_multiply_budgets_apply_only_where_they_exist_and_rules_filter(tiny_plan):
    cells = expand(StudyPlan.from_dict(tiny_plan))
    assert len(cells) == 2 * 2 * (1 + 2 + 2)  # seeds x resolutions x (mlp once, two budgets each for the others)
    assert {c.tokens for c in cells if c.connector == "mlp"} == {None}
    assert {c.config.model.connector_options["num_tokens"] for c in cells if c.connector == "avgpool"} == {4, 9}
    assert all(c.config.model.connector_options["layers"] == 1 for c in cells if c.connector == "perceiver")
    plan = copy.deepcopy(tiny_plan)
    plan["grid"]["exclude"] = [{"connector": "avgpool", "resolution": 48}, {"seed": 1}]
    plan["grid"]["include"] = [{"connector": "linear", "resolution": 48, "seed": 1}]
    cells = expand(StudyPlan.from_dict(plan))
    labels = [c.label for c in cells]
    assert "avgpool-4t-48px-s0" not in labels and "avgpool-4t-32px-s0" in labels
    assert not [x for x in labels if x.endswith("s1") and not x.startswith("linear")]
    assert "linear-48px-s1" in labels and len(cells) == 2 + 2 + 4 + 1  # mlp, avgpool at 32 only, perceiver, include


def test_reduce_axis_applies_every_method_at_every_budget_to_preserving_cells_only(tiny_plan):
    tiny_plan["grid"]["reduce"] = {"method": ["random", "avgpool", "cls_attention"], "tokens": [4, 9]}
    plan = StudyPlan.from_dict(tiny_plan)
    cells = expand(plan)
    mlp = next(c for c in cells if c.label == "mlp-32px-s0")
    assert [r.label for r in mlp.reductions] == ["random-4", "random-9", "avgpool-4", "avgpool-9", "cls_attention-4",
                                                 "cls_attention-9"]
    assert all(not c.reductions for c in cells if c.connector != "mlp")
    without = {c.label: c.cell_id for c in expand(StudyPlan.from_dict({**tiny_plan, "grid": {**tiny_plan["grid"],
                                                                                        "reduce": None}}))}
    assert without == {c.label: c.cell_id for c in cells}  # evaluation only: the trained cells stay the same


def test_a_compression_axis_keeps_the_same_ratio_of_every_resolutions_patch_grid(tiny_plan):
    """4x of the 4x4 grid at 32 px is 4 tokens, of the 6x6 grid at 48 px 9 (as the paper's 144 of 576); 9x of 6x6 is 4.
    A ratio is one setting across resolutions, so the labels carry the ratio and the cell its token count."""
    tiny_plan["grid"].update(tokens=[None], compression=[4, 9], seeds=[0],
                             reduce={"method": ["random", "avgpool"], "compression": 4})
    plan = StudyPlan.from_dict(tiny_plan)
    cells = {c.label: c for c in expand(plan)}
    kept = {label: c.config.model.connector_options["num_tokens"] for label, c in cells.items() if c.connector == "avgpool"}
    assert kept == {"avgpool-4x-32px-s0": 4, "avgpool-9x-32px-s0": 1, "avgpool-4x-48px-s0": 9, "avgpool-9x-48px-s0": 4}
    assert cells["avgpool-4x-48px-s0"].tokens == 9 and cells["avgpool-4x-48px-s0"].compression == 4
    assert cells["mlp-48px-s0"].compression is None and cells["mlp-48px-s0"].tokens is None
    assert [r.label for r in cells["mlp-32px-s0"].reductions] == ["random-4", "avgpool-4"]
    assert [r.label for r in cells["mlp-48px-s0"].reductions] == ["random-9", "avgpool-9"]
    rows = {r.cell: r for r in describe_cells(plan, list(cells.values()))}
    assert rows["avgpool-4x-48px-s0"].visual_tokens == 9 and rows["avgpool-4x-48px-s0"].compression == 4
    tiny_plan["grid"]["include"] = [{"connector": "avgpool", "resolution": 48, "compression": 36}]
    assert expand(StudyPlan.from_dict(tiny_plan))[-1].config.model.connector_options["num_tokens"] == 1


def test_token_budgets_expand_without_the_towers_config_and_ratios_name_why_they_need_it(tiny_plan):
    """Only a ratio needs the patch grid; a 7B plan with token counts still expands on a machine without checkpoints."""
    tiny_plan["model"]["vision"] = "/nonexistent/tower"
    tiny_plan["grid"]["reduce"] = {"method": "random", "tokens": 4}
    assert [r.label for r in next(c for c in expand(StudyPlan.from_dict(tiny_plan)) if c.connector == "mlp").reductions] \
        == ["random-4"]
    tiny_plan["grid"].update(tokens=[None], compression=[4])
    with pytest.raises(ConfigError, match="the tower's patch grid, needed for a compression ratio"):
        expand(StudyPlan.from_dict(tiny_plan))


def test_cell_identity_follows_the_resolved_configuration(tiny_plan):
    base = {c.label: c for c in expand(StudyPlan.from_dict(tiny_plan))}
    assert base == {c.label: c for c in expand(StudyPlan.from_dict(copy.deepcopy(tiny_plan)))}
    changed = copy.deepcopy(tiny_plan)
    changed["finetune"]["lr"] = 1e-4
    after = {c.label: c for c in expand(StudyPlan.from_dict(changed))}
    for label, cell in base.items():  # a fine-tuning change makes a new cell that shares the old stage 1
        assert after[label].cell_id != cell.cell_id and after[label].pretrain_key == cell.pretrain_key
    changed["pretrain"]["lr"] = 1e-4
    assert all(c.pretrain_key != base[c.label].pretrain_key for c in expand(StudyPlan.from_dict(changed)))
    one = base["mlp-32px-s0"]
    assert one.config.output_dir.endswith(f"cells/mlp-32px-s0-{one.cell_id[:8]}")


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["grid"]["connectors"].append("mlpp"), r"grid.connectors\[3\]: unknown connector 'mlpp'; valid: linear, mlp"),
    (lambda p: p["grid"].update(resolutions=[32, -1]), r"grid.resolutions\[1\] = -1: must be an integer >= 1"),
    (lambda p: p["grid"].update(tokens=[5]), r"plan.yaml: cell avgpool-5t-32px-s0: avgpool: num_tokens must be"),
    (lambda p: p["grid"].update(exclude=[{"size": 32}]), r"grid.exclude\[0\]: unknown field\(s\) size; valid: connector"),
    (lambda p: p["grid"].update(exclude=[{"seed": 0}, {"seed": 1}]), r"grid: every cell is excluded"),
    (lambda p: p["model"].update(connector="mlp"), r"model.connector: set by the grid"),
    (lambda p: p["training"].update(cache=True), r"training: unknown key\(s\) cache; valid: allow_nonfinite, bf16"),
    (lambda p: p["finetune"].update(micro_batch=3), r"finetune.global_batch = 8 must be a multiple of finetune.micro_batch"),
    (lambda p: p.update(execution={"engine": "kubernetes"}), r"execution.engine = .kubernetes.: must be one of local"),
    (lambda p: p.update(execution={"workers": 0}), r"execution.workers = 0: must be 'auto' or an integer >= 1"),
    (lambda p: p.update(execution={"workers": "many"}), r"execution.workers = 'many': must be 'auto' or an integer"),
    (lambda p: p.update(execution={"engine": "accelerate", "workers": 2}), r"execution.workers = 2 applies to the local"),
    (lambda p: p.update(execution={"threads": 0}), r"execution.threads = 0: must be"),
    (lambda p: p.update(benchmarks=[{"name": "mmvet", "data": "x"}]), r"name = 'mmvet': must be one of mmbench, mme, seedbench"),
    (lambda p: p.update(reference_connector="qformer"), r"reference_connector = 'qformer': not among grid.connectors"),
    (lambda p: p["grid"].update(reduce={"method": "topk", "tokens": 4}), r"grid.reduce.method: 'topk' must be one of random"),
    (lambda p: p["grid"].update(reduce={"method": "random"}), r"grid.reduce = .*needs 'method' and one of 'tokens' or"),
    (lambda p: p["grid"].update(compression=[4]), r"grid.tokens and grid.compression: give the budget axis one way"),
    (lambda p: p["grid"].update(tokens=[None], compression=[0.5]), r"grid.compression\[0\] = 0.5: must be a number >= 1"),
    (lambda p: p["grid"].update(reduce={"method": "avgpool", "tokens": 5}),
     r"cell mlp-32px-s0: avgpool reduction to 5 tokens: must be a square number"),
], ids=["connector", "resolution", "budget", "exclude-field", "all-excluded", "model-connector", "training-key",
        "stage-sizes", "engine", "workers-zero", "workers-word", "workers-engine", "threads",
        "benchmark", "reference", "reduce-method", "reduce-keys", "both-budgets", "ratio-below-one", "reduce-square"])
def test_plan_errors_name_the_file_and_key(tiny_plan, tmp_path, edit, message):
    edit(tiny_plan)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(tiny_plan))
    with pytest.raises(ConfigError, match=message) as err:
        plan = StudyPlan.from_file(path)
        describe_cells(plan, expand(plan))
    assert str(path) in str(err.value) or "cell" in str(err.value)
