"""Running evaluations: one backbone x one dataset x protocols of any family, written to a results
store (:mod:`.evaluate`); studies over many (:mod:`.study`) and the executors that spread them."""

from radprobe.run.config import EvalConfig, EvalSummary
from radprobe.run.evaluate import evaluate
from radprobe.run.frozen import Prepared, extract, prepare, run_protocol

__all__ = ["EvalConfig", "EvalSummary", "Prepared", "evaluate", "extract", "prepare", "run_protocol"]
