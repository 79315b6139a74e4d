"""Running evaluations: one backbone x one dataset x protocols, written to a results store."""

from radprobe.run.evaluate import EvalConfig, EvalSummary, evaluate, extract

__all__ = ["EvalConfig", "EvalSummary", "evaluate", "extract"]
