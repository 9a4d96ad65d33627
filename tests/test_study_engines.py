"""The study's engines: `accelerate launch` with 2 CPU processes (training and sharded evaluation) matches the local
engine; submitit's local executor runs a 2 x 2 grid as one job per cell."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from connectorlab.evaluation.result import EvalResult
from connectorlab.study.plan import StudyPlan
from connectorlab.study.runner import run_study

pytestmark = pytest.mark.slow  # every test here starts a multi-process launch


def plan_file(toy, out, execution, grid, **extra):
    probe = toy / "probe"
    data = {
        "name": "engines", "output_dir": str(out),
        "model": {"vision": str(toy / "models/vision"), "llm": str(toy / "models/llm"), "select_layer": -1,
                  "template": "plain_v1", "max_length": 512},
        "pretrain": {"data": str(probe / "pretrain.json"), "global_batch": 8, "micro_batch": 2},
        "finetune": {"data": str(probe / "finetune.json"), "global_batch": 8, "micro_batch": 2, "max_steps": 3},
        "training": {"checkpoint_every": 2},
        "grid": grid,
        "benchmarks": [{"name": "probe", "data": str(probe / "test.tsv"), "max_new_tokens": 3}],
        "execution": execution, **extra,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return StudyPlan.from_file(path)


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]


def test_accelerate_engine_with_two_processes_matches_local(toy, tmp_path):
    grid = {"connectors": ["mlp"], "resolutions": [32], "reduce": {"method": "random", "tokens": 4}}
    local = run_study(plan_file(toy, tmp_path / "local", {"engine": "local"}, grid), show_progress=False)
    launched = run_study(plan_file(toy, tmp_path / "acc", {"engine": "accelerate", "processes": 2}, grid),
                         show_progress=False)
    (a,), (b,) = local.states.values(), launched.states.values()
    assert a.status == b.status == "done", (a.error, b.error)
    stages = [(Path(a.pretrain_folder), Path(b.pretrain_folder)), (Path(a.model).parent, Path(b.model).parent)]
    for x, y in stages:  # pre-training, then fine-tuning
        assert json.loads((y / "summary.json").read_text())["processes"] == 2
        torch.testing.assert_close(torch.tensor(losses(y)), torch.tensor(losses(x)),
                                   rtol=1e-5, atol=1e-6)  # only float summation order differs (two partial gradients)
    ra, rb = (EvalResult.read(s.evaluations["probe"]) for s in (a, b))
    assert (ra.processes, rb.processes) == (1, 2) and ra.items == rb.items == rb.answered_now
    reduced = [Path(s.evaluations["probe@random-4"]).parent for s in (a, b)]  # `eval --reduce` under the launch
    assert [json.loads((r / "run.json").read_text())["reduction"] for r in reduced] == ["random-4", "random-4"]
    assert [json.loads((r / "results.json").read_text())["items"] for r in reduced] == [ra.items] * 2
    wa, wb = (load_file(str(Path(s.model) / "connector.safetensors")) for s in (a, b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_two_local_worker_processes_give_the_results_of_one_process(toy, tmp_path, monkeypatch):
    from connectorlab.study import timing

    grid = {"connectors": ["mlp", "avgpool"], "resolutions": [32], "tokens": [4]}
    threads = torch.get_num_threads()
    left_after_cells = []  # timing groups still untimed when the cells are done

    def spy(plan, cells, out, *args):
        left_after_cells.append(len(timing.pending_groups(cells, out, plan.timing)))
        return real(plan, cells, out, *args)

    real = timing.time_cells
    monkeypatch.setattr(timing, "time_cells", spy)
    paired = {"timing": {"rounds": 2, "steps": 1}}
    one = run_study(plan_file(toy, tmp_path / "one", {"workers": 1, "threads": 1}, grid, **paired), show_progress=False)
    two = run_study(plan_file(toy, tmp_path / "two", {"workers": 2, "threads": 1}, grid, **paired), show_progress=False)
    assert left_after_cells == [1, 1]  # both time after their cells (two workers: in a fresh process of its own)
    for out in ("one", "two"):
        timed = json.loads((tmp_path / out / "step_timing.json").read_text())["cells"]
        assert set(timed) == {"mlp-32px-s0", "avgpool-4t-32px-s0"}
        assert all(len(e[s]) == 2 for e in timed.values() for s in ("pretrain", "finetune"))
    assert list(two.states) == list(one.states) == ["mlp-32px-s0", "avgpool-4t-32px-s0"]
    for a, b in zip(one.states.values(), two.states.values(), strict=True):
        assert a.status == b.status == "done", (a.error, b.error)
        for x, y in [(a.pretrain_folder, b.pretrain_folder), (Path(a.model).parent, Path(b.model).parent)]:
            assert losses(Path(y)) == losses(Path(x))  # the same thread count: the same floats
        ra, rb = (EvalResult.read(s.evaluations["probe"]) for s in (a, b))
        assert ra.items == rb.items and ra.scores == rb.scores
        pa, pb = (Path(s.evaluations["probe"]).with_name("predictions.jsonl").read_text() for s in (a, b))
        assert pa == pb
    assert torch.get_num_threads() == threads  # the one-process run set 1 thread for its cells, then restored this


def test_a_cell_whose_worker_process_died_is_recorded_as_failed_with_the_likely_causes(toy, tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    from connectorlab.study.cell import cell_folder
    from connectorlab.study.executors import worker_died
    from connectorlab.study.folder import CellState
    from connectorlab.study.plan import expand

    plan = plan_file(toy, tmp_path / "died", {"workers": 2}, {"connectors": ["mlp"], "resolutions": [32]})
    (cell,) = expand(plan, tmp_path / "died")
    state = worker_died(cell, BrokenProcessPool("a process in the pool was terminated abruptly"))
    assert state.status == "failed" and "out of memory" in state.error and "__main__" in state.error
    assert CellState.read(cell_folder(cell)).error == state.error  # written where `study status` reads it


def test_submitit_local_executor_runs_a_two_by_two_grid(toy, tmp_path):
    grid = {"connectors": ["mlp", "avgpool"], "resolutions": [32, 48], "tokens": [4]}
    plan = plan_file(toy, tmp_path / "slurm", {"engine": "slurm", "slurm": {"cluster": "local", "gpus_per_node": 0,
                                                                             "cpus_per_task": 1, "timeout_min": 20}}, grid)
    result = run_study(plan, show_progress=False)
    assert sorted(result.states) == ["avgpool-4t-32px-s0", "avgpool-4t-48px-s0", "mlp-32px-s0", "mlp-48px-s0"]
    assert all(s.status == "done" for s in result.states.values()), {k: s.error for k, s in result.states.items()}
    assert len(list((tmp_path / "slurm/submitit").glob("*_result.pkl"))) == 4  # one job per cell
    again = run_study(plan, show_progress=False)  # nothing left to submit
    assert all(s.status == "done" for s in again.states.values())


def test_a_study_killed_mid_training_and_mid_evaluation_resumes_to_the_same_results(toy, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    grid = {"connectors": ["mlp"], "resolutions": [32]}

    def make(name):
        plan = plan_file(toy, tmp_path / name, {"engine": "local"}, grid)
        data = yaml.safe_load(Path(plan.source).read_text())
        data["pretrain"].update(epochs=6, micro_batch=1)
        data["benchmarks"][0].update(max_new_tokens=12, blind=True)
        Path(plan.source).write_text(yaml.safe_dump(data))
        return StudyPlan.from_file(plan.source)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ref_plan = make("ref")  # uninterrupted, in a process like the killed one's (thread counts change float sums)
    res = subprocess.run([sys.executable, "-m", "connectorlab", "study", "run", ref_plan.source, "--eval-batch", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = run_study(ref_plan, show_progress=False, eval_batch=1)  # all done: reads the states back
    plan = make("killed")
    cmd = [sys.executable, "-m", "connectorlab", "study", "run", plan.source, "--eval-batch", "1"]

    def run_until(ready):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the study finished before it could be killed"

    out = tmp_path / "killed"
    run_until(lambda: any(out.glob("pretrain/*/pretrain/checkpoints/step-0000006")))
    preds = lambda: list(out.glob("cells/*/eval/probe/predictions.jsonl"))  # noqa: E731
    run_until(lambda: preds() and len(preds()[0].read_text().splitlines()) >= 5)
    assert not list(out.glob("cells/*/eval/probe_blind/results.json"))
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (a,), = ref.states.values(),
    b = json.loads(next(out.glob("cells/*/cell.json")).read_text())
    assert b["status"] == "done"
    for name in ("probe", "probe_blind"):
        x, y = (EvalResult.read(p) for p in (a.evaluations[name], b["evaluations"][name]))
        assert x.scores == y.scores and y.resumed_predictions + y.answered_now == y.items
    resumed = json.loads(Path(b["evaluations"]["probe"]).read_text())
    assert resumed["resumed_predictions"] >= 5  # the killed evaluation's answers were kept, not recomputed
    assert Path(a.model, "connector.safetensors").read_bytes() == Path(b["model"], "connector.safetensors").read_bytes()


def _pid_and(x):
    import os

    return os.getpid(), x


def test_jobs_that_finished_jobs_hand_on_run_in_the_same_worker_processes():
    from connectorlab.study.pool import run_pool

    first, then, errors = [], [], []

    def on_result(job, args, result):
        (first if args[0] < 10 else then).append(result)
        return [(_pid_and, (args[0] + 10,))] if args[0] < 10 else None  # each first job hands on one more

    run_pool([(_pid_and, (i,)) for i in range(3)], 2, 1, on_result, lambda job, args, err: errors.append(err))
    assert not errors and sorted(x for _, x in first) == [0, 1, 2] and sorted(x for _, x in then) == [10, 11, 12]
    assert {pid for pid, _ in then} <= {pid for pid, _ in first}  # no new process started for them
