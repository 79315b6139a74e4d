"""Running evaluations: one backbone x one dataset x protocols, written to a results store."""

from radprobe.run.evaluate import EvalConfig, EvalSummary, Prepared, evaluate, extract, prepare, run_protocol

__all__ = ["EvalConfig", "EvalSummary", "Prepared", "evaluate", "extract", "prepare", "run_protocol"]
