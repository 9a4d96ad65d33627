"""`study run` on the local engine, its status and report, and the paired statistics behind the report."""
import json
import random
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT

from connectorlab.evaluation.paired import holm, mcnemar_exact
from connectorlab.study.folder import StudyFolder, study_states
from connectorlab.study.plan import StudyPlan
from connectorlab.study.report import write_report
from connectorlab.study.runner import run_study


@pytest.fixture(scope="module")
def study(toy, tmp_path_factory):
    """A 2 x 2 grid (mlp, avgpool x 32, 48 px) plus two fine-tuning variants of mlp at 32 px, one of them broken."""
    out = tmp_path_factory.mktemp("study")
    (out / "none.json").write_text("not JSON")  # the broken variant's data: there, but unreadable at run time
    probe = toy / "probe"
    data = {
        "name": "tiny", "output_dir": str(out),
        "model": {"vision": str(toy / "models/vision"), "llm": str(toy / "models/llm"), "select_layer": -1,
                  "template": "plain_v1", "max_length": 512},
        "pretrain": {"data": str(probe / "pretrain.json"), "global_batch": 8, "micro_batch": 4, "lr": 1e-3},
        "finetune": {"data": str(probe / "finetune.json"), "global_batch": 8, "micro_batch": 4, "lr": 1e-3,
                     "max_steps": 3},
        "training": {"checkpoint_every": 2},
        "grid": {"connectors": ["mlp", "avgpool"], "resolutions": [32, 48], "tokens": [4],
                 "finetune": [{"name": "a"}, {"name": "b", "lr": 5e-4}, {"name": "broken", "data": str(out / "none.json")}],
                 "exclude": [{"variant": "b"}, {"variant": "broken"}],
                 "include": [{"connector": "mlp", "resolution": 32, "variant": "b"},
                             {"connector": "mlp", "resolution": 32, "variant": "broken"}]},
        "benchmarks": [{"name": "probe", "data": str(probe / "test.tsv"), "blind": True, "max_new_tokens": 4}],
        "reference_connector": "mlp",
        "reference_results": str(ROOT / "configs/studies/reference/paper_seedbench_released.csv"),
        "timing": {"rounds": 2, "steps": 1},
        "unreliable_extraction": 1.0,  # three steps of training answer in no format yet; the report's mechanics are tested
    }
    plan = StudyPlan.from_dict(data)
    result = run_study(plan, show_progress=False)
    return plan, out, result, data


def test_every_cell_runs_and_a_failing_one_stops_no_other(study):
    _, out, result, _ = study
    states = result.states
    assert len(states) == 6 and result.failed == ["mlp-32px-s0-broken"]
    assert "none.json" in states["mlp-32px-s0-broken"].error and "Traceback" in states["mlp-32px-s0-broken"].traceback
    assert all(s.status == "done" for label, s in states.items() if label != "mlp-32px-s0-broken")
    assert set(states["avgpool-4t-48px-s0-a"].evaluations) == {"probe", "probe_blind"}


def test_cells_with_the_same_pretraining_share_one_stage_1_run(study):
    _, out, result, _ = study
    runs = sorted(p.parent.parent.name for p in (out / "pretrain").glob("*/pretrain/summary.json"))
    assert len(runs) == 4  # 2 connectors x 2 resolutions; variants a, b and broken of mlp at 32 px share one
    folders = {result.states[x].pretrain_folder for x in ("mlp-32px-s0-a", "mlp-32px-s0-b", "mlp-32px-s0-broken")}
    assert len(folders) == 1


def test_a_rerun_skips_finished_cells_and_retries_failed_ones_on_request(study):
    plan, out, result, _ = study
    model = out / "cells" / next(p.name for p in (out / "cells").iterdir() if p.name.startswith("mlp-48px-s0-a"))
    stamp = (model / "finetune/summary.json").stat().st_mtime_ns
    timed = (out / "step_timing.json").stat().st_mtime_ns
    again = run_study(plan, show_progress=False)
    assert again.failed == ["mlp-32px-s0-broken"] and again.states["mlp-32px-s0-broken"].error == \
        result.states["mlp-32px-s0-broken"].error
    assert (model / "finetune/summary.json").stat().st_mtime_ns == stamp
    assert (out / "step_timing.json").stat().st_mtime_ns == timed  # every group was timed: nothing to redo
    retried = run_study(plan, show_progress=False, retry_failed=True)
    assert retried.failed == ["mlp-32px-s0-broken"]  # ran again, and failed again: its data is still missing
    assert [s.status if s else "pending" for _, s in study_states(out)].count("done") == 5


def test_a_changed_plan_entry_is_refused_by_name(study):
    import copy

    _, _, _, data = study
    changed = copy.deepcopy(data)
    changed["finetune"]["max_steps"] = 2
    with pytest.raises(ValueError, match=r"mlp-32px-s0-a \(finetune.max_steps: 3 -> 2\)"):
        run_study(StudyPlan.from_dict(changed), show_progress=False)


def test_report_tables_results_and_paired_comparisons(study):
    _, out, _, _ = study
    report = write_report(out)
    df = pd.read_csv(out / "results.csv")
    assert set(df.cell) == {"mlp-32px-s0-a", "mlp-48px-s0-a", "avgpool-4t-32px-s0-a", "avgpool-4t-48px-s0-a",
                            "mlp-32px-s0-b"}
    tt = df[(df.level == "task_type") & (df.benchmark == "probe")]
    assert len(tt) == 5 * 3 and (tt.ci_low <= tt.accuracy).all() and (tt.accuracy <= tt.ci_high).all()
    assert set(df[df.cell == "avgpool-4t-32px-s0-a"].visual_tokens) == {4}
    assert set(df[df.cell == "mlp-48px-s0-a"].visual_tokens) == {36}
    assert (df.pretrain_s > 0).all() and (df.level == "subtask").any()
    comps = report.comparisons
    assert {(c["cell"], c["reference"]) for c in comps} == {("avgpool-4t-32px-s0-a", "mlp-32px-s0-a"),
                                                            ("avgpool-4t-48px-s0-a", "mlp-48px-s0-a")}
    assert {c["task_type"] for c in comps} == {"coarse", "fine", "reasoning"} and all(0 <= c["p_holm"] <= 1 for c in comps)
    text = (out / "report.md").read_text()
    assert "Holm over" in text and all(c["cell"] in text for c in comps)
    assert (out / "task_type_accuracy.png").stat().st_size > 1000 and (out / "subtasks.png").stat().st_size > 1000
    assert "## Resolution effect" in text and "preserving, fine, 32 -> 48 px" in text
    assert "avgpool-4t-32px-s0-a vs mlp-32px-s0-a: pre-training" in text
    # Paired step timing: every cell with a partner at its resolution, seed and variant, each stage, each round
    timing = json.loads((out / "step_timing.json").read_text())
    paired = {"mlp-32px-s0-a", "avgpool-4t-32px-s0-a", "mlp-48px-s0-a", "avgpool-4t-48px-s0-a"}
    assert set(timing["cells"]) == paired and (timing["rounds"], timing["steps"]) == (2, 1)
    assert all(len(e[s]) == 2 and min(e[s]) > 0 for e in timing["cells"].values() for s in ("pretrain", "finetune"))
    steps = df.drop_duplicates("cell").set_index("cell")
    assert steps.loc[sorted(paired), ["pretrain_step_ms", "finetune_step_ms"]].gt(0).all().all()
    assert steps.loc["mlp-32px-s0-b", ["pretrain_step_ms", "finetune_step_ms"]].isna().all()  # no partner: not timed
    assert "time per step measured side by side" in text and "(time per step, measured side by side)" in text
    # The authors' released SEED numbers, regrouped: paper.md gives mlp2-336 fine micro 64.6, reasoning micro 73.8.
    row = next(line for line in text.splitlines() if line.startswith("| paper:llava-mlp2-336 |"))
    assert row.startswith("| paper:llava-mlp2-336 | 576 | 336 | 74.4 [") and "| 64.6 [" in row and "| 73.8 [" in row
    assert "## Recommendation" in text and report.recommendation["benchmark"] == "probe"


def test_a_failing_timing_group_is_reported_and_leaves_the_others(study, monkeypatch, tmp_path):
    from connectorlab.study import timing
    from connectorlab.study.plan import expand
    from connectorlab.utils.progress import progress_bar

    plan, out, _, _ = study
    cells = [c for c in expand(plan, out) if c.variant == "a"]
    real = timing.time_group

    def flaky(group, folder, settings):
        if group[0].resolution == 48:
            raise RuntimeError("out of memory")
        return real(group, folder, settings)

    monkeypatch.setattr(timing, "time_group", flaky)
    StudyFolder(out).timing_path.rename(tmp_path / "kept.json")  # the study's own timing, put back below
    try:
        with progress_bar(False) as bar:
            failed = timing.time_cells(plan, cells, out, 1, None, bar)
        saved = timing.read_timing(out)
    finally:
        (tmp_path / "kept.json").replace(StudyFolder(out).timing_path)
    assert len(failed) == 1 and "mlp-48px-s0-a" in failed[0] and "out of memory" in failed[0]
    assert set(saved) == {"mlp-32px-s0-a", "avgpool-4t-32px-s0-a"}


def test_every_timing_round_runs_the_same_batch_for_every_cell(study, monkeypatch):
    from connectorlab.study import timing
    from connectorlab.study.plan import StepTiming, expand

    plan, out, _, _ = study
    group = [c for c in expand(plan, out) if c.variant == "a" and c.resolution == 32]
    seen = []  # (cell's model, the ids of the micro-batch's first sample)
    real = timing.micro_step
    monkeypatch.setattr(timing, "micro_step", lambda run, idx, *a: seen.append((id(run.model), run.data.samples[idx[0]].id))
                        or real(run, idx, *a))
    found = timing.time_group(group, out, StepTiming(rounds=3, steps=1))
    assert all(len(found[c.label]["finetune"]) == 3 for c in group)
    finetune = seen[len(seen) // 2:]  # the second stage: a warm-up call and 3 rounds of one step per cell, 2 micro-batches each
    per_call = [finetune[k:k + 2] for k in range(0, len(finetune), 2)]
    rounds = per_call[len(group):]  # after the warm-ups
    assert len(rounds) == 3 * len(group) and len({tuple(s for _, s in call) for call in rounds}) == 1  # one batch
    assert rounds[0][0][0] != rounds[1][0][0]  # the two calls of a round are two cells


def test_timing_takes_the_batches_of_median_padded_length():
    from connectorlab.study.timing import typical_batches

    lengths = [5, 9, 3, 7, 7, 1, 8]  # per sample
    batches = [([0, 1], "b0"), ([2], "b1"), ([3], "b2"), ([4, 5], "b3"), ([6], "b4")]  # padded 9, 3, 7, 7, 8
    picked = lambda count: [m for _, m in typical_batches(batches, lengths, count)]  # noqa: E731
    assert picked(1) == ["b3"]  # by length: b1 b2 b3 b4 b0, the middle one (equal lengths in drawn order)
    assert picked(2) == ["b2", "b3"]
    assert picked(3) == ["b2", "b3", "b4"]  # in drawn order
    assert picked(9) == ["b0", "b1", "b2", "b3", "b4"]  # more than drawn: all of them


def test_timing_runs_after_the_cells_in_one_fresh_process_one_group_at_a_time(study, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from connectorlab.study import executors, timing
    from connectorlab.study.plan import expand

    plan, out, _, _ = study
    cells = [c for c in expand(plan, tmp_path) if c.variant == "a"]  # a folder with no timing yet: every group pending
    bar = SimpleNamespace(add_task=lambda *a, **k: 0, advance=lambda *a: None)
    pools = []

    def fake_pool(jobs, workers, threads, on_result, on_error, folder=None):  # every job fails; the pool's follow-ups kept
        jobs = list(jobs)
        pools.append((workers, jobs, [on_result(jobs[0][0], jobs[0][1], {})]
                      + [on_error(job, args, RuntimeError("not run")) for job, args in jobs]))

    monkeypatch.setattr(executors, "run_pool", fake_pool)
    states = []
    executors.Pool(executors.CellWork(plan, tmp_path), 2, 1).run([[c] for c in cells], states.append)
    (workers, jobs, follow_ups), = pools
    assert workers == 2 and {job for job, _ in jobs} == {executors.run_cells_in_worker}
    assert not any(follow_ups) and len(states) == len(cells)  # no timing in the workers that trained the cells
    monkeypatch.setattr(timing, "run_pool", fake_pool)
    failed = timing.time_cells(plan, cells, tmp_path, 2, 1, bar)
    workers, jobs, _ = pools[-1]
    assert workers == 1  # one process of its own, the groups one after another
    assert [job for job, _ in jobs] == [timing.time_group] * 2 and len(failed) == 2
    assert [{c.resolution for c in args[0]} for _, args in jobs] == [{32}, {48}]


def test_worker_processes_take_the_costliest_cells_first(study):
    from connectorlab.study.plan import expand
    from connectorlab.study.runner import longest_first, pretrain_groups
    from connectorlab.study.sizes import describe_cells

    plan, out, _, _ = study
    cells = expand(plan, out)
    sizes = {c.label: s for c, s in zip(cells, describe_cells(plan, cells), strict=True)}
    order = [[c.label for c in g] for g in longest_first(plan, pretrain_groups(cells), sizes)]
    assert order[0] == ["mlp-32px-s0-a", "mlp-32px-s0-b", "mlp-32px-s0-broken"]  # three cells' evaluations
    assert order[1] == ["mlp-48px-s0-a"]  # 36 visual tokens; each avgpool cell has 4
    assert sorted(order[2:]) == [["avgpool-4t-32px-s0-a"], ["avgpool-4t-48px-s0-a"]]


def test_status_lists_every_cell(study, capsys, monkeypatch):
    from helpers import main_in_process as cli

    _, out, _, _ = study
    code, stdout, _ = cli(capsys, monkeypatch, "study", "status", out)
    assert code == 0 and "5 done, 1 failed" in stdout and "none.json" in stdout


def test_status_eta_shares_the_unfinished_cells_among_the_worker_processes(tmp_path, capsys, monkeypatch):
    import json

    from helpers import main_in_process as cli

    from connectorlab.study.folder import CellState

    cells = {}
    for i in range(6):
        folder = tmp_path / "cells" / f"c{i}"
        cells[f"c{i}"] = {"cell_id": str(i), "folder": str(folder)}
        if i < 2:  # two finished cells of 60 s each, four pending
            CellState(f"c{i}", str(i), "done", pretrain_s=10.0, finetune_s=20.0, eval_s=30.0).write(folder)
    (tmp_path / "study.json").write_text(json.dumps({"cells": cells, "workers": 2}))
    from connectorlab.utils.io import exclusive

    with exclusive(tmp_path, "study run"):  # a run is under way
        code, stdout, _ = cli(capsys, monkeypatch, "study", "status", tmp_path)
    assert code == 0 and "ETA about 2.0 min for 4 unfinished cell(s)" in stdout and "over 2 worker processes" in stdout


# ---- the statistics ------------------------------------------------------------------------------

def test_a_reduce_axis_added_later_evaluates_finished_cells_without_training_them_again(study, tmp_path):
    import copy

    plan, out, _, data = study
    folder = next(p for p in (out / "cells").iterdir() if p.name.startswith("mlp-48px-s0-a"))
    stamp = (folder / "finetune/summary.json").stat().st_mtime_ns
    changed = copy.deepcopy(data)
    changed["grid"]["reduce"] = {"method": ["random", "avgpool"], "tokens": 4}
    again = run_study(StudyPlan.from_dict(changed), show_progress=False)
    state = again.states["mlp-48px-s0-a"]
    assert state.status == "done" and (folder / "finetune/summary.json").stat().st_mtime_ns == stamp
    assert set(state.evaluations) == {"probe", "probe_blind", "probe@random-4", "probe@avgpool-4"}
    assert json.loads((folder / "eval/probe@random-4/run.json").read_text())["reduction"] == "random-4"
    assert set(again.states["avgpool-4t-48px-s0-a"].evaluations) == {"probe", "probe_blind"}
    write_report(out)
    df = pd.read_csv(out / "results.csv")
    free = df[(df.family == "training-free") & (df.level == "task_type") & (df.benchmark == "probe")]
    assert set(free.cell) == {f"mlp+{m}-4t-{r}px-s0-a" for m in ("random", "avgpool") for r in (32, 48)} | \
        {f"mlp+{m}-4t-32px-s0-b" for m in ("random", "avgpool")}
    assert (free.visual_tokens == 4).all()
    times = (out / "report.md").read_text().split("## Training time against")[1].split("\n## ")[0]
    assert "avgpool-4t-32px-s0-a vs mlp-32px-s0-a" in times and "mlp+random" not in times  # a reduction trains nothing


def test_mcnemar_finds_a_real_difference_and_not_a_null_one():
    rng = random.Random(0)
    keys = [str(i) for i in range(400)]
    truth = {k: rng.random() < 0.6 for k in keys}
    better = {k: v or rng.random() < 0.3 for k, v in truth.items()}  # fixes ~30% of the errors, breaks nothing
    real = mcnemar_exact(better, truth)
    assert real.b_only == 0 and real.a_only > 20 and real.p_value < 1e-6
    shuffled = {k: rng.random() < 0.6 for k in keys}  # same accuracy, independent errors
    flip = {k: (not v) if int(k) % 2 else v for k, v in shuffled.items()}
    null = mcnemar_exact(shuffled, {k: shuffled[k] if int(k) % 4 else flip[k] for k in keys})
    assert null.p_value > 0.05
    assert mcnemar_exact(truth, truth).p_value == 1.0


def test_holm_matches_its_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.5]
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])  # 4 x 0.01, max(3 x 0.03, 0.04), 2 x 0.04 -> 0.09 kept
    raw_significant = [x < 0.05 for x in p]
    assert raw_significant[1] and holm(p)[1] >= 0.05  # significant alone, not after correction


def test_report_of_a_folder_that_is_not_a_study(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study.json"):
        write_report(tmp_path)


def _fake_cell(label, tokens, fine_right, coarse_right, n=200, coarse_from_end=False):
    coarse = [(i >= n - coarse_right) if coarse_from_end else (i < coarse_right) for i in range(n)]
    units = [[f"f{i}", "fine_sub", i < fine_right] for i in range(n)] + \
            [[f"c{i}", "coarse_sub", ok] for i, ok in enumerate(coarse)]
    scores = {"units": units, "task_types": {"fine": {"subtasks": ["fine_sub"]}, "coarse": {"subtasks": ["coarse_sub"]},
                                             "reasoning": {"subtasks": []}}}

    from connectorlab.study.folder import CellEntry, CellSize, CellState
    from connectorlab.study.results import CellResult

    size = CellSize(label, "", "mlp", "preserving", 336, None, None, 0, None, tokens, 0, None, "")
    state = CellState(label, "", "done", pretrain_s=10.0, finetune_s=20.0)
    return CellResult(CellEntry(label, Path("."), size), state, {"b": scores})


def test_recommendation_picks_the_best_within_budget_and_says_when_the_margin_is_noise():
    from connectorlab.study.recommend import Recommendation, recommend, sentence

    # coarse: 150 vs 148 right of 200, mostly on different questions (52 and 50 discordant): a null difference
    cells = [_fake_cell("preserve", 576, 160, 150), _fake_cell("compress", 64, 100, 148, coarse_from_end=True)]
    fine_first = recommend(cells, Recommendation("b", {"fine": 1.0}))
    assert fine_first["best"] == "preserve" and fine_first["clear"] and fine_first["margin"] == pytest.approx(0.3)
    assert "a clear margin" in sentence(fine_first)
    coarse = recommend(cells, Recommendation("b", {"coarse": 1.0}))
    assert coarse["best"] == "preserve" and not coarse["clear"]
    assert coarse["margin_ci"][0] < 0 < coarse["margin_ci"][1] and "within noise" in sentence(coarse)
    budget = recommend(cells, Recommendation("b", {"fine": 1.0}, max_visual_tokens=144))
    assert budget["best"] == "compress" and "runner_up" not in budget
    assert recommend(cells, Recommendation("b", max_visual_tokens=10)) is None
    with pytest.raises(ValueError, match="recommend.weights"):
        Recommendation("b", {"detail": 1.0})


def test_spread_over_seeds():
    from connectorlab.study.report import seeds_section

    tt = pd.DataFrame([{"benchmark": "b", "connector": "mlp", "tokens": None, "resolution": 336, "variant": None,
                        "name": "fine", "seed": s, "accuracy": a} for s, a in ((0, 0.60), (1, 0.64), (2, 0.62))])
    (line,) = [x for x in seeds_section(tt) if x.startswith("- ")]
    assert line == "- b, mlp-336px, fine: 62.0 +- 2.0 over 3 seeds (min 60.0, max 64.0)"
    assert seeds_section(tt[tt.seed == 0]) == []


def test_cells_with_one_frozen_tower_and_resolution_share_a_feature_cache(toy, tmp_path, monkeypatch):
    from connectorlab.training.feature_cache import FeatureCache

    computed = []
    original = FeatureCache.add

    def counting(self, paths, progress=None):
        computed.append(len(set(paths) - set(self.store)))
        return original(self, paths, progress)

    monkeypatch.setattr(FeatureCache, "add", counting)
    probe = toy / "probe"
    plan = StudyPlan.from_dict({
        "output_dir": str(tmp_path / "s"),
        "model": {"vision": str(toy / "models/vision"), "llm": str(toy / "models/llm"), "select_layer": -1,
                  "template": "plain_v1", "max_length": 512},
        "pretrain": {"data": str(probe / "pretrain.json"), "global_batch": 8, "micro_batch": 8},
        "finetune": {"data": str(probe / "finetune.json"), "global_batch": 8, "micro_batch": 8, "max_steps": 1},
        "training": {"cache_features": True},
        "grid": {"connectors": ["mlp", "avgpool"], "tokens": [4], "resolutions": [32]},
    })
    result = run_study(plan, show_progress=False)
    assert all(s.status == "done" for s in result.states.values())
    images = len({r["image"] for r in json.loads((probe / "pretrain.json").read_text())})
    assert sum(computed) == images  # the second connector, and stage 2, reuse the first one's tower features
