"""Evaluation: official scoring conformance, extraction rules, loaders, runner and resume."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import ROOT
from helpers import run_module as cli

from connectorlab.evaluation.benchmarks.mmbench import load_mmbench, predictions_table, score_mmbench
from connectorlab.evaluation.benchmarks.mme import join_llava_answers, load_mme, read_tool_folder, score_lines
from connectorlab.evaluation.benchmarks.seedbench import load_seedbench, predictions_rows, score_seed
from connectorlab.evaluation.extraction import extract_choice, mme_answer
from connectorlab.evaluation.result import EvalResult
from connectorlab.evaluation.runner import evaluate
from connectorlab.evaluation.stats import wilson
from connectorlab.evaluation.task_types import load_mapping
from connectorlab.model.mllm import MultimodalLM

LAVIN = {"existence": 185.00, "count": 88.33, "position": 63.33, "color": 75.00, "posters": 79.59, "celebrity": 47.35,
         "scene": 136.75, "landmark": 93.50, "artwork": 87.25, "OCR": 107.50, "commonsense_reasoning": 87.14,
         "numerical_calculation": 65.00, "text_translation": 47.50, "code_reasoning": 50.00}
OPTS = {"A": "a red car", "B": "a blue bus", "C": "a bicycle", "D": "a train"}


# ---- conformance on the real files ---------------------------------------------------------------

def test_mme_lavin_sample_scores_as_the_official_tool(shared_data):
    scores = score_lines(read_tool_folder(shared_data / "mme/sample_answers_lavin").lines, load_mapping("mme"))
    assert f"{scores['perception']:.2f}" == "963.61" and f"{scores['cognition']:.2f}" == "249.64"
    assert scores["subtasks"] == LAVIN


@pytest.mark.slow
def test_score_mme_cli_prints_and_emits_json(shared_data):
    res = cli("score", "mme", "--predictions", str(shared_data / "mme/sample_answers_lavin"))
    assert res.returncode == 0, res.stderr
    assert "963.61" in res.stdout and "249.64" in res.stdout and "136.75" in res.stdout
    res = cli("score", "mme", "--predictions", str(shared_data / "mme/sample_answers_lavin"), "--json")
    data = json.loads(res.stdout)
    assert round(data["perception"], 2) == 963.61 and data["subtasks"]["OCR"] == 107.5
    assert data["task_types"]["fine"]["n"] == 1714 and data["task_types"]["coarse"]["subtasks"] == ["scene"]


@pytest.mark.slow
def test_llava_mme_answers_join_the_ground_truth(shared_data):
    joined = join_llava_answers(shared_data / "external/llava_answers/mme_mlp2_448.jsonl", shared_data / "mme/ground_truth")
    assert not joined.missing and not joined.duplicates and sum(len(v) for v in joined.lines.values()) == 2374
    res = cli("score", "mme", "--predictions", str(shared_data / "external/llava_answers/mme_mlp2_448.jsonl"),
              "--ground-truth", str(shared_data / "mme/ground_truth"), "--json")
    data = json.loads(res.stdout)
    assert data["missing_predictions"] == 0 and 1000 < data["perception"] < 2000


@pytest.mark.slow
def test_mmbench_upload_file_scores_circular(shared_data):
    res = cli("score", "mmbench", "--predictions", str(shared_data / "external/llava_answers/mmbench_dev_linear_448_upload.xlsx"),
              "--questions", str(shared_data / "mmbench/mmbench_dev_20230712_sample.tsv"), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["questions"] == 1176 and data["rows"] == 4377
    assert 0 <= data["circular"] <= data["vanilla"] <= 1
    assert "physical_property_reasoning" in data["categories"]  # joined from the sample TSV


def test_mmbench_sample_tsv_loads_real_images_and_llava_prompt(shared_data):
    bench = load_mmbench(shared_data / "mmbench/mmbench_dev_20230712_sample.tsv")
    assert len(bench.items) == 59 and bench.skips.total == 0
    image = bench.items[0].load_image()
    assert image.size[0] > 10 and image.mode == "RGB"
    first = bench.items[0]
    assert first.prompt.startswith("<image>\n")
    assert first.prompt.endswith("\nA. " + first.meta["options"]["A"] + "\nB. " + first.meta["options"]["B"]
                                 + "\nAnswer with the option's letter from the given choices directly.")
    with_hint = next(it for it in bench.items if "\n" in it.prompt.split("<image>\n")[1].split("\nA. ")[0])
    assert with_hint.prompt.count("\n") >= 4


# ---- extraction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("output,expected", [
    ("A.", "A"), ("(B)", "B"), ("The answer is C.", "C"), ("Answer: D", "D"), ("a blue bus", "B"),
    ("A train", "D"), ("I think A is wrong, so B", None), ("B", "B"), ("E", None), ("", None),
])
def test_multiple_choice_extraction(output, expected):
    assert extract_choice(output, OPTS) == expected


@pytest.mark.parametrize("output,expected", [
    ("Y", "other"), ("There is a dog, yes.", "other"), ("Not really", "no"), ("None of them", "no"), ("Nope", "no"),
    ("Yes and no", "yes"), ("Yes", "yes"), ("no\n", "no"), ("Maybe", "other"),
])
def test_mme_yes_no_extraction(output, expected):
    assert mme_answer(output) == expected


# ---- scoring -------------------------------------------------------------------------------------

def test_circular_grouping():
    rows = []
    for base, right in ((1, 4), (2, 3)):  # question 1 right in 4/4 rotations, question 2 in 3/4
        for k in range(4):
            rows.append({"index": base + k * 1_000_000, "answer": "ABCD"[k], "options": OPTS, "category": "ocr",
                         "prediction": "ABCD"[k] if k < right else "ABCD"[(k + 1) % 4]})
    scores = score_mmbench(rows, load_mapping("mmbench"))
    assert scores["circular"] == 0.5 and scores["per_row_diagnostic"] == 0.875 and scores["vanilla"] == 1.0
    assert scores["task_types"]["fine"]["n"] == 2


def test_wilson_interval():
    lo, hi = wilson(70, 100)
    assert 0.60 < lo < 0.61 and 0.78 < hi < 0.79


def test_mme_odd_line_count_raises():
    with pytest.raises(ValueError, match="consecutive"):
        score_lines({"count": [("a.jpg", "q", "Yes", "yes")]})


# ---- fixtures: tiny benchmark folders written by the tests ----------------------------------------


def test_loaders_report_bad_rows(fixtures):
    mmb = load_mmbench(fixtures / "mmb.tsv")
    assert len(mmb.items) == 9 and dict(mmb.skips.counts) == {"malformed_row": 1}
    assert mmb.items[0].prompt.startswith("<image>\nA hint.\nWhat colour")
    assert "nan" not in mmb.items[1].prompt
    mme = load_mme(fixtures / "MME")
    assert len(mme.items) == 8 and dict(mme.skips.counts) == {"missing_image": 1}
    assert mme.items[0].prompt == "<image>\nAre there 0 dogs?\nAnswer the question using a single word or phrase."
    assert any("Is it a beach?\nAnswer" in it.prompt for it in mme.items)  # two spaces before Please handled
    seed = load_seedbench(fixtures / "seed/seed.json")
    assert len(seed.items) == 4 and dict(seed.skips.counts) == {"video_question": 1}


@pytest.mark.parametrize("name", ["mmbench", "mme", "seedbench"])
def test_eval_end_to_end_batch_invariant_and_resumable(fixtures, tiny_model, tmp_path, name):
    loaders = {"mmbench": lambda: load_mmbench(fixtures / "mmb.tsv"), "mme": lambda: load_mme(fixtures / "MME"),
               "seedbench": lambda: load_seedbench(fixtures / "seed/seed.json")}
    bench = loaders[name]()
    # Batch size and image decoding (inline vs threads a batch ahead) must not change an answer.
    one = evaluate(tiny_model, bench, tmp_path / "b1", batch_size=1, max_new_tokens=6, show_progress=False, workers=0)
    four = evaluate(tiny_model, bench, tmp_path / "b4", batch_size=4, max_new_tokens=6, show_progress=False, workers=3)
    p1 = (tmp_path / "b1/predictions.jsonl").read_text().splitlines()
    p4 = (tmp_path / "b4/predictions.jsonl").read_text().splitlines()
    assert sorted(p1) == sorted(p4) and one.scores == four.scores
    # Interrupt: keep half the predictions plus a line cut short by the crash, then resume.
    lines = p4[: len(p4) // 2]
    (tmp_path / "b4/predictions.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:10])
    again = evaluate(tiny_model, bench, tmp_path / "b4", batch_size=4, max_new_tokens=6, show_progress=False)
    assert again.resumed_predictions == len(lines) and again.answered_now == len(p4) - len(lines)
    assert again.scores == one.scores
    done = evaluate(tiny_model, bench, tmp_path / "b4", batch_size=4, max_new_tokens=6, show_progress=False)
    assert done.answered_now == 0 and done.scores == one.scores
    assert (tmp_path / "b4/records.jsonl").exists() and (tmp_path / "b4/results.json").exists()
    if name == "mmbench":
        assert set(one.scores["task_types"]) >= {"coarse", "fine", "reasoning"}
        assert one.scores["task_types"]["coarse"]["n"] == 1


def test_eval_refuses_to_mix_runs(fixtures, tiny_model, tmp_path):
    bench = load_mmbench(fixtures / "mmb.tsv")
    evaluate(tiny_model, bench, tmp_path / "o", max_new_tokens=2, show_progress=False)
    with pytest.raises(ValueError, match="another run"):
        evaluate(tiny_model, bench, tmp_path / "o", max_new_tokens=3, show_progress=False)


def test_blind_baseline_drops_the_image(fixtures, tiny_model, tmp_path):
    result = evaluate(tiny_model, load_mme(fixtures / "MME"), tmp_path / "blind", max_new_tokens=3, blind=True,
                      show_progress=False)
    assert result.identity["blind"] and result.scores["subtask_details"]["count"]["questions"] == 4


@pytest.mark.slow
def test_eval_cli_runs_a_saved_model(fixtures, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    res = cli("eval", "--model", str(tmp_path / "model"), "--benchmark", "mmbench", "--data", str(fixtures / "mmb.tsv"),
              "--out", str(tmp_path / "ev"), "--batch-size", "4", "--max-new-tokens", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MMBench circular" in res.stdout and "skipped 1 records" in res.stdout
    assert json.loads((tmp_path / "ev/results.json").read_text())["scores"]["questions"] == 3


@pytest.mark.slow
def test_eval_sharded_over_two_processes_gives_the_in_process_answers(fixtures, tiny_model, tmp_path):
    """`accelerate launch -m connectorlab eval` with 2 CPU processes: the batches are dealt out, each process appends
    its own file, and the merged predictions are those of one process."""
    import os

    tiny_model.save_pretrained(tmp_path / "model")
    model = MultimodalLM.from_pretrained(tmp_path / "model")
    here = evaluate(model, load_mme(fixtures / "MME"), tmp_path / "one", batch_size=2, max_new_tokens=4,
                    run_info={"model": str(tmp_path / "model")}, show_progress=False)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "connectorlab", "eval", "--model", str(tmp_path / "model"),
           "--benchmark", "mme", "--data", str(fixtures / "MME"), "--out", str(tmp_path / "two"), "--batch-size", "2",
           "--max-new-tokens", "4", "--allow-incomplete"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    two = EvalResult.read(tmp_path / "two")
    assert two.processes == 2 and two.scores == here.scores and res.stdout.count("MME perception") == 1
    read = lambda p: sorted((p / "predictions.jsonl").read_text().splitlines())  # noqa: E731
    assert read(tmp_path / "two") == read(tmp_path / "one") and not list((tmp_path / "two").glob("predictions.rank*"))


def test_a_stopped_sharded_evaluation_resumes_with_another_process_count(fixtures, tiny_model, tmp_path):
    bench = load_mmbench(fixtures / "mmb.tsv")
    full = evaluate(tiny_model, bench, tmp_path / "ref", batch_size=2, max_new_tokens=4, show_progress=False)
    lines = (tmp_path / "ref/predictions.jsonl").read_text().splitlines()
    out = tmp_path / "stopped"
    evaluate(tiny_model, bench, out, batch_size=2, max_new_tokens=4, show_progress=False)  # claims the folder
    (out / "predictions.jsonl").write_text("")
    (out / "results.json").unlink()
    # what two processes had appended when they were killed: rank 1 in the middle of a line
    (out / "predictions.rank0.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (out / "predictions.rank1.jsonl").write_text("\n".join(lines[3:5]) + "\n" + lines[5][:7])
    again = evaluate(tiny_model, bench, out, batch_size=2, max_new_tokens=4, show_progress=False)
    assert again.resumed_predictions == 5 and again.answered_now == len(lines) - 5
    assert again.scores == full.scores and not list(out.glob("predictions.rank*"))


@pytest.mark.slow
def test_seed_prediction_files(fixtures, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"question_id": str(100 + i), "prompt": "p", "text": t})
                                 for i, t in enumerate(["A", "The answer is B.", "D", "y"])))
    rows, names = predictions_rows(answers, fixtures / "seed/seed.json")
    scores = score_seed(rows, names, load_mapping("seedbench"))
    assert scores["image"] == 0.5 and scores["dimensions"] == {"1": 1.0, "3": 1.0, "5": 0.0, "7": 0.0}
    logs = {"logs": [{"doc_id": i, "doc": {"question_id": str(i), "question_type_id": 1, "answer": "A", "choice_a": "x",
                                           "choice_b": "y", "choice_c": "z", "choice_d": "w", "data_type": "image"},
                      "filtered_resps": [r]} for i, r in enumerate(["A", "(A)", "B"])]}
    (tmp_path / "seed_image.json").write_text(json.dumps(logs))
    rows, _ = predictions_rows(tmp_path / "seed_image.json")
    scores = score_seed(rows)
    assert scores["image"] == pytest.approx(2 / 3) and scores["image_first_char"] == pytest.approx(1 / 3)
    res = cli("score", "seedbench", "--predictions", str(answers), "--questions", str(fixtures / "seed/seed.json"), "--json")
    assert json.loads(res.stdout)["image"] == 0.5


def test_predictions_table_needs_answers(tmp_path):
    pd.DataFrame([{"index": 1, "prediction": "A", "A": "x", "B": "y", "C": "", "D": ""}]).to_csv(tmp_path / "p.tsv", sep="\t",
                                                                                            index=False)
    with pytest.raises(ValueError, match="--questions"):
        predictions_table(tmp_path / "p.tsv")


def test_every_registered_benchmark_loads_scores_and_renders(fixtures, toy):
    """The registry is the one table the runner, CLI and study use: each entry's loader, scorer and summary agree."""
    from connectorlab.evaluation.registry import BENCHMARKS, load_benchmark

    data = {"mmbench": fixtures / "mmb.tsv", "mme": fixtures / "MME", "seedbench": fixtures / "seed/seed.json",
            "probe": toy / "probe/test.tsv"}
    assert set(BENCHMARKS) == set(data)
    for name, entry in BENCHMARKS.items():
        bench = load_benchmark(name, data[name])
        assert bench.items and entry.max_new_tokens >= 1
        scores = bench.score({it.key: "A" for it in bench.items})
        summary = entry.render(scores)
        assert summary.rows and all(len(row) == len(summary.columns) for row in summary.rows), name
    assert load_benchmark("probe", data["probe"]).score({})["task_section"] == "probe"  # its own task types
