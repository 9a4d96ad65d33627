"""connectorlab: choose the connector between a vision encoder and a language model.

The library API, loaded on first use (so that `import connectorlab` and `connectorlab --version` stay light):

    from connectorlab import TrainConfig, train, load, load_benchmark, evaluate
    cfg = TrainConfig.from_file("configs/tiny_cpu.yaml")
    finetuned = train(cfg, ["pretrain", "finetune"])["finetune"]          # StageResult
    model = load(finetuned.artifact)
    result = evaluate(model, load_benchmark("probe", "runs/toy/test.tsv"), "runs/eval")   # EvalResult

    from connectorlab import plan_study, run_study, write_report, quickstart
    plan, cells = plan_study("configs/studies/probe_cpu.yaml")
    run = run_study(plan)                                                  # StudyRun; run.report is a ReportPaths

docs/library.md has the whole API.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute): one table, so that each name has one home
_API = {
    "CONNECTORS": ("connectorlab.connectors", "CONNECTORS"),
    "Connector": ("connectorlab.connectors", "Connector"),
    "build_connector": ("connectorlab.connectors", "build_connector"),
    "ModelConfig": ("connectorlab.model.config", "ModelConfig"),
    "MultimodalLM": ("connectorlab.model.mllm", "MultimodalLM"),
    "load": ("connectorlab.api", "load"),
    "TrainConfig": ("connectorlab.training.config", "TrainConfig"),
    "train": ("connectorlab.training.trainer", "train"),
    "load_benchmark": ("connectorlab.evaluation.registry", "load_benchmark"),
    "evaluate": ("connectorlab.evaluation.runner", "evaluate"),
    "StudyPlan": ("connectorlab.study.plan", "StudyPlan"),
    "plan_study": ("connectorlab.api", "plan_study"),
    "run_study": ("connectorlab.study.runner", "run_study"),
    "write_report": ("connectorlab.study.report", "write_report"),
    "quickstart": ("connectorlab.study.quickstart", "quickstart"),
    "export": ("connectorlab.api", "export"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'connectorlab' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
