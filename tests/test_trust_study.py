"""Trust at the edges of a study (issue 32): an evaluation belongs to its benchmark's content and settings, user
strings never become paths outside the study, and the plan is checked before anything runs."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import main_in_process as cli
from helpers import plan_data

from connectorlab.evaluation.registry import load_benchmark
from connectorlab.evaluation.runner import evaluate
from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM
from connectorlab.study.plan import StudyPlan
from connectorlab.study.report import write_report
from connectorlab.study.runner import run_study


def edit_answers(tsv: Path) -> None:
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[0, "question"] = df.loc[0, "question"] + " (edited)"
    df.to_csv(tsv, sep="\t", index=False)


@pytest.fixture
def study(toy, tmp_path):
    tsv = tmp_path / "test.tsv"
    shutil.copy(toy / "probe" / "test.tsv", tsv)
    out = tmp_path / "study"
    run_study(StudyPlan.from_dict(plan_data(toy, out, tsv)), show_progress=False)
    return toy, out, tsv


def results(out: Path) -> dict:
    return json.loads(next((out / "cells").glob("*/eval/probe/results.json")).read_text())


def test_a_changed_benchmark_is_evaluated_again_and_an_unchanged_one_is_kept(study, tmp_path, caplog):
    toy, out, tsv = study
    first = results(out)
    assert first["data_fingerprint"].startswith("sha256:")
    moved = tmp_path / "moved.tsv"  # the same content elsewhere: nothing to redo
    shutil.copy(tsv, moved)
    with caplog.at_level(logging.WARNING, "connectorlab.study"):
        run_study(StudyPlan.from_dict(plan_data(toy, out, moved)), show_progress=False)
    assert "re-evaluating" not in caplog.text and results(out)["eval_seconds"] == first["eval_seconds"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, "connectorlab.study"):
        run_study(StudyPlan.from_dict(plan_data(toy, out, tsv, max_new_tokens=3)), show_progress=False)
    assert "re-evaluating probe (max_new_tokens: 4 -> 3)" in caplog.text
    assert results(out)["max_new_tokens"] == 3 and results(out)["resumed_predictions"] == 0
    edit_answers(tsv)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "connectorlab.study"):
        run_study(StudyPlan.from_dict(plan_data(toy, out, tsv, max_new_tokens=3)), show_progress=False)
    assert "re-evaluating probe (data_fingerprint: sha256:" in caplog.text
    now = results(out)
    assert now["data_fingerprint"] != first["data_fingerprint"] and now["resumed_predictions"] == 0
    report = Path(write_report(out).report).read_text()
    assert "## Benchmark data" in report and now["data_fingerprint"] in report and str(tsv) in report


def test_eval_resume_compares_the_data_content_not_its_path(toy, tmp_path):
    model = MultimodalLM.build(ModelConfig(vision=str(toy / "models/vision"), llm=str(toy / "models/llm"),
                                           connector="avgpool", connector_options={"num_tokens": 4}, select_layer=-1,
                                           template="plain_v1"))
    model.save_pretrained(tmp_path / "model")
    model = MultimodalLM.from_pretrained(tmp_path / "model")
    tsv = tmp_path / "test.tsv"
    shutil.copy(toy / "probe" / "test.tsv", tsv)
    run = lambda path: evaluate(model, load_benchmark("mmbench", path), tmp_path / "ev", 4, 2, show_progress=False)  # noqa: E731
    first = run(tsv)
    moved = tmp_path / "same.tsv"
    shutil.copy(tsv, moved)
    assert run(moved).resumed_predictions == first.items  # same content at another path: reused
    edit_answers(tsv)
    with pytest.raises(ValueError, match="holds predictions of another run .*data_fingerprint: sha256:"):
        run(tsv)


@pytest.mark.parametrize(("where", "value"), [("variant", "../../../../X"), ("variant", "a/b"), ("variant", ".hidden"),
                                              ("name", "../up"), ("name", "two words")])
def test_user_strings_that_become_folder_names_are_checked(toy, tmp_path, where, value):
    from connectorlab.errors import ConfigError

    data = plan_data(toy, tmp_path / "study", toy / "probe" / "test.tsv")
    if where == "variant":
        data["grid"]["finetune"] = [{"name": value}]
    else:
        data["name"] = value
    with pytest.raises(ConfigError, match=r"it becomes part of a folder name, so it may hold only letters, digits"):
        StudyPlan.from_dict(data)
    assert not (tmp_path / "X").exists() and not (tmp_path.parent / "X").exists()


def test_every_cell_folder_lies_inside_the_study_folder(toy, tmp_path):
    from connectorlab.errors import ConfigError
    from connectorlab.study.plan import check_inside, expand

    plan = StudyPlan.from_dict(plan_data(toy, tmp_path / "study", toy / "probe" / "test.tsv"))
    for cell in expand(plan):
        assert (tmp_path / "study").resolve() in Path(cell.config.output_dir).resolve().parents
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "link").symlink_to(tmp_path)  # a folder name that resolves elsewhere
    with pytest.raises(ConfigError, match="would lie outside the study folder"):
        check_inside(tmp_path / "study" / "link" / "cell", tmp_path / "study", "cell x's folder")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended; only its exit status is left


def spawned_workers(parent: int) -> list[int]:
    import subprocess

    kids = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in kids if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_a_killed_parent_and_a_new_run_waits_for_live_ones(toy, tmp_path):
    import os
    import subprocess
    import sys
    import time

    import yaml
    from filelock import FileLock
    from helpers import ROOT

    data = plan_data(toy, tmp_path / "study", toy / "probe" / "test.tsv")
    data["grid"] = {"connectors": ["avgpool", "mlp"], "resolutions": [32], "tokens": [4]}
    data["pretrain"]["max_steps"] = 400  # long enough to be killed while both workers train
    data["execution"] = {"workers": 2, "threads": 1}
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "connectorlab", "study", "run", str(plan)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.2)
        workers = spawned_workers(proc.pid)
    assert len(workers) == 2, "the study did not start two worker processes"
    time.sleep(2)  # the workers are training now
    proc.kill()
    proc.wait()
    time.sleep(3)
    assert [pid for pid in workers if alive(pid)] == []
    from connectorlab.errors import BusyError

    held = FileLock(str(tmp_path / "study" / ".worker-4242.lock"))  # a worker of an earlier run, still alive
    with held:
        with pytest.raises(BusyError, match=r"a worker process of an earlier run \(pid 4242\) still runs"):
            run_study(StudyPlan.from_dict(data | {"execution": {}}), show_progress=False)


def test_status_of_a_killed_study_says_interrupted_not_running(tmp_path, capsys, monkeypatch):

    from connectorlab.study.folder import CellState
    from connectorlab.utils.io import exclusive

    cells = {}
    for i, status in enumerate(("done", "running", "pending")):
        folder = tmp_path / "cells" / f"c{i}"
        cells[f"c{i}"] = {"cell_id": str(i), "folder": str(folder)}
        if status != "pending":
            CellState(f"c{i}", str(i), status, pretrain_s=10.0, finetune_s=20.0, eval_s=30.0).write(folder)
    (tmp_path / "study.json").write_text(json.dumps({"cells": cells, "workers": 1}))
    code, out, _ = cli(capsys, monkeypatch, "study", "status", tmp_path)
    assert code == 0 and "interrupted (since" in out and "running" not in out.split("no `study run`")[0]
    assert "1 cell(s) interrupted, 1 pending" in out and "ETA" not in out
    with exclusive(tmp_path, "study run"):  # while a run holds the folder, its cell is running
        code, out, _ = cli(capsys, monkeypatch, "study", "status", tmp_path)
    assert "interrupted" not in out and "running" in out and "ETA about" in out


@pytest.fixture(scope="module")
def two_cells(toy, tmp_path_factory):
    """mlp (the reference) and avgpool at one resolution, finished."""
    root = tmp_path_factory.mktemp("two_cells")
    data = plan_data(toy, root / "study", toy / "probe" / "test.tsv")
    data["grid"] = {"connectors": ["mlp", "avgpool"], "resolutions": [32], "tokens": [4]}
    data["reference_connector"] = "mlp"
    run_study(StudyPlan.from_dict(data), show_progress=False)
    return root / "study"


def cell_file(study: Path, connector: str, name: str) -> Path:
    return next((study / "cells").glob(f"{connector}*/{name}"))


def test_a_failed_reference_cell_is_named_and_nothing_is_judged_against_it(two_cells, tmp_path):
    study = relocate(two_cells, tmp_path / "s")
    before = Path(write_report(study).report).read_text()
    assert "## The paper's findings" in before and "## Recommendation" in before
    mlp = cell_file(study, "mlp", "cell.json")
    state = json.loads(mlp.read_text())
    mlp.write_text(json.dumps({**state, "status": "failed", "error": "RuntimeError: out of memory\\nmore"}))
    result = write_report(study)
    report = Path(result.report).read_text()
    assert "## Failed cells (1)" in report and "- mlp-32px-s0: RuntimeError: out of memory" in report
    assert "cannot be compared with `mlp`" in report and "avgpool-4t-32px-s0" in report.split("## Failed cells")[1]
    assert "## The paper's findings" not in report and "## Recommendation" not in report
    assert result.recommendation is None and result.comparisons == []
    with pytest.raises(ValueError, match="--benchmark 'mme': the study has no such benchmark \\(it has probe\\)"):
        from connectorlab.study.recommend import Recommendation

        write_report(study, Recommendation("mme"))


def relocate(src: Path, dst: Path) -> Path:
    study = shutil.copytree(src, dst)
    index = json.loads((study / "study.json").read_text())
    for entry in index["cells"].values():
        entry["folder"] = str(study / "cells" / Path(entry["folder"]).name)
    (study / "study.json").write_text(json.dumps(index))
    for path in (study / "cells").glob("*/cell.json"):
        state = json.loads(path.read_text())
        state["evaluations"] = {k: str(study / Path(v).relative_to(src)) for k, v in state["evaluations"].items()}
        path.write_text(json.dumps(state))
    for path in (study / "cells").glob("*/eval/*/results.json"):  # one training step answers in no format yet:
        result = json.loads(path.read_text())  # every answer is taken as readable, so that the report judges them
        result["scores"]["extraction_failures"] = 0
        path.write_text(json.dumps(result))
    return study


def test_a_cell_whose_answers_name_no_option_is_unreliable_and_judged_nowhere(two_cells, tmp_path):
    study = relocate(two_cells, tmp_path / "s")
    path = cell_file(study, "mlp", "eval/probe/results.json")
    result = json.loads(path.read_text())
    result["scores"]["extraction_failures"] = result["scores"]["rows"]  # every answer an extraction failure
    path.write_text(json.dumps(result))
    out = write_report(study)
    report = Path(out.report).read_text()
    assert "| mlp-32px-s0 (unreliable) |" in report and "| 100.0 |" in report
    assert "- mlp-32px-s0 on probe: judged in no finding, comparison or recommendation" in report
    assert "## The paper's findings" not in report and out.comparisons == []
    assert out.recommendation is None or out.recommendation["best"] != "mlp-32px-s0"
    df = pd.read_csv(out.results)
    assert set(df[df.cell == "mlp-32px-s0"].extraction_failure_rate) == {1.0}


def test_every_missing_path_of_a_plan_is_named_at_once_before_anything_runs(toy, tmp_path, capsys, monkeypatch):
    import yaml

    from connectorlab.errors import ConfigError

    data = plan_data(toy, tmp_path / "study", tmp_path / "no-test.tsv")
    data["pretrain"]["data"] = str(tmp_path / "no-pretrain.json")
    data["finetune"]["image_folder"] = str(tmp_path / "no-images")
    data["model"]["llm"] = str(tmp_path / "no-llm")  # a local path, not a Hub id
    data["benchmarks"][0]["task_types"] = str(tmp_path / "no-types.yaml")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(data))
    code, _, err = cli(capsys, monkeypatch, "study", "plan", plan)
    flat = " ".join(err.split())
    assert code == 2 and "path(s) the plan names are missing" in flat, err
    for name in ("no-test.tsv", "no-pretrain.json", "no-images", "no-types.yaml"):
        assert name in flat
    data["model"]["llm"] = str(toy / "models/llm")
    with pytest.raises(ConfigError, match="4 path\\(s\\) the plan names are missing"):
        run_study(StudyPlan.from_dict(data), show_progress=False)
    assert not (tmp_path / "study" / "cells").exists()  # nothing ran
    data["benchmarks"][0]["data"] = "lmms-lab/MMBench"  # a Hub id is looked up when loaded, not here
    from connectorlab.study.plan import expand, missing_paths

    assert all("lmms-lab" not in m for m in missing_paths(StudyPlan.from_dict(data), expand(StudyPlan.from_dict(data))))


@pytest.mark.slow
def test_settings_that_change_no_number_are_not_a_cells_identity(two_cells, toy, tmp_path):
    from connectorlab.study.plan import expand

    data = plan_data(toy, two_cells, toy / "probe" / "test.tsv")
    data["grid"] = {"connectors": ["mlp", "avgpool"], "resolutions": [32], "tokens": [4]}
    data["reference_connector"] = "mlp"
    before = {c.label: c.cell_id for c in expand(StudyPlan.from_dict(data))}
    data["training"] = {"checkpoint_every": 7, "keep_checkpoints": 5, "log_every": 2}
    data["execution"] = {"workers": 2}
    data["pretrain"] = {**data["pretrain"], "image_workers": 1}
    plan = StudyPlan.from_dict(data)
    assert {c.label: c.cell_id for c in expand(plan)} == before
    states = {label: s.finetune_s for label, s in run_study(plan, show_progress=False).states.items()}
    again = json.loads(cell_file(two_cells, "mlp", "cell.json").read_text())
    assert again["status"] == "done" and states["mlp-32px-s0"] == again["finetune_s"]  # reused, not trained again


def test_cells_removed_from_the_plan_are_named_and_kept_out_unless_asked(two_cells, toy, tmp_path, capsys, monkeypatch):

    study = relocate(two_cells, tmp_path / "s")
    data = plan_data(toy, study, toy / "probe" / "test.tsv")
    data["grid"] = {"connectors": ["mlp"], "resolutions": [32], "tokens": [4]}  # avgpool removed
    run_study(StudyPlan.from_dict(data), show_progress=False)
    code, out, _ = cli(capsys, monkeypatch, "study", "status", study)
    flat = " ".join(out.split())
    assert code == 0 and "1 cell(s) outside the plan now (kept on disk, not counted above): avgpool-4t-32px-s0 (done)" in flat
    assert "1 done" in flat
    report = Path(write_report(study).report).read_text()
    assert "1 finished cell(s) are outside the plan now: avgpool-4t-32px-s0" in report
    assert "| avgpool-4t-32px-s0 |" not in report
    report = Path(write_report(study, include_orphans=True).report).read_text()
    assert "| avgpool-4t-32px-s0 |" in report
    data["grid"] = {"connectors": ["mlp", "avgpool"], "resolutions": [32], "tokens": [4]}  # back in the plan
    run_study(StudyPlan.from_dict(data), show_progress=False)
    assert "outside the plan" not in Path(write_report(study).report).read_text()


@pytest.mark.parametrize(("grid", "message"), [
    ({"connectors": ["mlp", "mlp"]}, "grid.connectors: mlp given more than once"),
    ({"connectors": ["mlp"], "seeds": [0, 0]}, "grid.seeds: 0 given more than once"),
    ({"connectors": ["mlp"], "resolutions": [32, 32]}, "grid.resolutions: 32 given more than once"),
    ({"connectors": ["mlp"], "include": [{"connector": "avgpool", "tokens": 4}] * 2}, "grid.include: .* given more than once"),
    ({"connectors": ["mlp"], "include": [{"connector": "mlp", "resolution": 32}]},
     "mlp-32px-s0 and mlp-32px-s0 resolve to the same configuration"),
    ({"connectors": ["avgpool"], "resolutions": [32], "compression": [100]},
     "compression ratio 100: a 4x4 patch grid gives at most 16x"),
], ids=["connector", "seed", "resolution", "include", "include-repeats-grid", "ratio"])
def test_duplicates_and_impossible_ratios_are_refused(toy, tmp_path, grid, message):
    from connectorlab.errors import ConfigError

    data = plan_data(toy, tmp_path / "study", toy / "probe" / "test.tsv")
    data["grid"] = {"resolutions": [32], **grid}
    with pytest.raises(ConfigError, match=message):
        StudyPlan.from_dict(data)
