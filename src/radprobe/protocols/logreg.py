"""L-BFGS logistic regression on frozen class tokens, with the inverse regularisation C swept.

The C grid follows DINOv2 (45 values, log-spaced over 1e-6 … 1e5); C is chosen on validation and
test is scored once. On CPU the solver is scikit-learn's; on GPU the same objective is minimised
with torch L-BFGS. Both minimise ``C * sum(log-loss) + ||W||² / 2`` with an unpenalised intercept,
and multi-label is one-vs-rest.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Sequence

import numpy as np
import torch

from radprobe.protocols.base import ProtocolInput, ProtocolResult, validation_score

DINOV2_CS = tuple(float(c) for c in np.logspace(-6, 5, 45))


class _Constant:
    """Stand-in for a label that has a single class in the training set: predicts that class."""

    def __init__(self, value: int) -> None:
        self.classes_ = np.array([value])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.ones((len(x), 1))


def _fit_sklearn(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):  # type: ignore[no-untyped-def]
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:  # few-shot draws can leave a label with positives only
        return _Constant(int(y[0]))
    clf = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def fit_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    c: float,
    num_classes: int,
    max_iter: int = 1000,
    multilabel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D, K) and intercept (K,) minimising C·Σ loss + ½‖W‖² with torch L-BFGS."""
    k = num_classes if (multilabel or num_classes > 2) else 1
    w = torch.zeros(x.shape[1], k, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(k, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ w + b
        if multilabel or k == 1:
            target = y.to(x.dtype).view(z.shape)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="sum")
        else:
            loss = torch.nn.functional.cross_entropy(z, y.long(), reduction="sum")
        obj = c * loss + 0.5 * (w * w).sum()
        obj.backward()
        return obj

    opt.step(closure)
    return w.detach(), b.detach()


def _scores_torch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, task: str) -> np.ndarray:
    z = x @ w + b
    if task == "multilabel":
        return z.sigmoid().double().cpu().numpy()
    if z.shape[1] == 1:
        p = z.sigmoid()[:, 0]
        return torch.stack([1 - p, p], 1).double().cpu().numpy()
    return z.softmax(-1).double().cpu().numpy()


class _Model:
    """One fitted C: predicts (N, C) scores for every task."""

    def __init__(
        self, data: ProtocolInput, x: np.ndarray, y: np.ndarray, c: float, backend: str, max_iter: int
    ):
        self.task, self.backend = data.task, backend
        if backend == "sklearn":
            if data.task == "multilabel":
                self.models = [_fit_sklearn(x, y[:, j], c, max_iter) for j in range(y.shape[1])]
            else:
                self.models = [_fit_sklearn(x, y, c, max_iter)]
        else:
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            xt = torch.as_tensor(x, dtype=torch.float64, device=dev)
            yt = torch.as_tensor(y, device=dev)
            self.w, self.b = fit_torch(
                xt, yt, c, data.num_classes, max_iter, multilabel=data.task == "multilabel"
            )

    def scores(self, x: np.ndarray, num_classes: int) -> np.ndarray:
        if self.backend == "sklearn":
            if self.task == "multilabel":
                return np.stack([_proba_pos(m, x) for m in self.models], 1)
            m = self.models[0]
            out = np.zeros((len(x), num_classes))
            out[:, m.classes_] = m.predict_proba(x)  # a class absent from train keeps score 0
            return out
        return _scores_torch(
            torch.as_tensor(x, dtype=torch.float64, device=self.w.device), self.w, self.b, self.task
        )


def _proba_pos(m, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    p = m.predict_proba(x)
    return p[:, list(m.classes_).index(1)] if 1 in m.classes_ else np.zeros(len(x))


def run(
    data: ProtocolInput,
    cs: Sequence[float] = DINOV2_CS,
    max_iter: int = 1000,
    backend: str = "auto",
) -> ProtocolResult:
    """Sweep C on validation, refit nothing, score test once with the best C."""
    if backend == "auto":
        backend = "torch" if torch.cuda.is_available() else "sklearn"
    if backend not in ("sklearn", "torch"):
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'torch', got {backend!r}")
    x_tr = np.asarray(data.train.features, dtype=np.float64)
    x_va = np.asarray(data.val.features, dtype=np.float64)
    x_te = np.asarray(data.test.features, dtype=np.float64)
    per_c: dict[float, float] = {}
    best, best_model = None, None
    for c in cs:
        m = _Model(data, x_tr, data.train.labels, c, backend, max_iter)
        per_c[c] = validation_score(data.val.labels, m.scores(x_va, data.num_classes), data.task)
        if best is None or per_c[c] > per_c[best]:  # first of equals: the smallest C
            best, best_model = c, m
    assert best is not None and best_model is not None, "empty C grid"
    return ProtocolResult(
        scores=best_model.scores(x_te, data.num_classes),
        hparams={"cs": [float(c) for c in cs], "max_iter": max_iter, "backend": backend, "features": "cls"},
        selected={"C": float(best), "val_score": per_c[best]},
    )
