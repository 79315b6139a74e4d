"""L-BFGS logistic regression on frozen class tokens, with the inverse regularisation C swept.

The C grid follows DINOv2 (45 values, log-spaced over 1e-6 … 1e5); C is chosen on validation and
test is scored once. On CPU the solver is scikit-learn's; on GPU the same objective is minimised
with torch L-BFGS. Both minimise ``C * sum(log-loss) + ||W||² / 2`` with an unpenalised intercept;
multi-label is one-vs-rest. The sweep runs from strong to weak regularisation, each fit starting
from the previous solution, which is what makes 45 fits affordable. Multi-label labels of -1 are
unknown (CheXpert ``uncertain=ignore``): each label is fitted on the samples where it is known.

``refit=True`` fits the chosen C again on train + val before scoring test (DINOv2's standard
logistic-regression evaluation). ``preset="paper"`` follows Baharoon et al.'s log_regression.py
(DINOv2's, unchanged; docs/paper-fidelity.md): the same 45 C values, at most 1000 iterations, tol
1e-12, C chosen on validation top-1 accuracy, refit on train + val. That code fits cuML's multi-class
logistic regression, so the preset runs on binary and multi-class tasks only.
"""

from __future__ import annotations

import copy
import warnings as _warnings
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from annotated_types import Ge, Gt

from radprobe.errors import OptionError
from radprobe.metrics.fast import validation_score
from radprobe.protocols.base import ProtocolInput, ProtocolResult

DINOV2_CS = tuple(float(c) for c in np.logspace(-6, 5, 45))
PRESETS: dict[str, dict[str, Any]] = {
    "dinov2": {"cs": DINOV2_CS, "max_iter": 1000, "tol": 1e-4, "refit": False},
    # dinov2/eval/log_regression.py: C_POWER_RANGE, DEFAULT_MAX_ITER, LogRegModule(tol=1e-12); the final
    # model is trained on train + the set C was chosen on (eval_log_regression)
    "paper": {"cs": DINOV2_CS, "max_iter": 1000, "tol": 1e-12, "refit": True},
}


def fit_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    c: float,
    num_classes: int,
    max_iter: int = 1000,
    multilabel: bool = False,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D, K) and intercept (K,) minimising C·Σ loss + ½‖W‖² with torch L-BFGS.

    Multi-label targets of -1 (unknown) add no loss, so each label's column is fitted on its known
    samples, as one-vs-rest on the filtered samples would.
    """
    k = num_classes if (multilabel or num_classes > 2) else 1
    if init is None:
        w = torch.zeros(x.shape[1], k, dtype=x.dtype, device=x.device)
        b = torch.zeros(k, dtype=x.dtype, device=x.device)
    else:
        w, b = (t.clone() for t in init)
    w.requires_grad_()
    b.requires_grad_()
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
            known = (target != -1).to(x.dtype)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                z, target.clamp_min(0), weight=known, reduction="sum"
            )
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


class _SklearnSweep:
    """One warm-started scikit-learn estimator per output (one, or one per label)."""

    def __init__(self, data: ProtocolInput, x: np.ndarray, max_iter: int, tol: float) -> None:
        from sklearn.linear_model import LogisticRegression

        self.task, self.num_classes, self.x = data.task, data.num_classes, x
        y = np.asarray(data.train.labels)
        if data.task == "multilabel":
            # one-vs-rest on each label's known samples: an unknown (-1) is neither positive nor negative
            self.rows = [np.flatnonzero(y[:, j] != -1) for j in range(y.shape[1])]
            self.targets = [y[r, j] for j, r in enumerate(self.rows)]
        else:
            self.rows, self.targets = [np.arange(len(y))], [y]
        self.models = [LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True) for _ in self.targets]

    def fit(self, c: float) -> None:
        from sklearn.exceptions import ConvergenceWarning

        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", ConvergenceWarning)
            for m, t, r in zip(self.models, self.targets, self.rows, strict=True):
                if len(np.unique(t)) > 1:  # few-shot draws can leave a label with one class only
                    m.set_params(C=c).fit(self.x if len(r) == len(self.x) else self.x[r], t)

    def scores(self, x: np.ndarray) -> np.ndarray:
        cols = []
        for m, t in zip(self.models, self.targets, strict=True):
            if len(np.unique(t)) < 2:
                # a constant score; 0.5 when the label is unknown for every training sample
                cols.append(np.full((len(x), 1), float(t[0]) if len(t) else 0.5))
                continue
            p = m.predict_proba(x)
            if self.task == "multilabel":
                cols.append(p[:, list(m.classes_).index(1)][:, None])
            else:
                full = np.zeros((len(x), self.num_classes))
                full[:, m.classes_] = p  # a class absent from train keeps score 0
                cols.append(full)
        return np.concatenate(cols, 1)


class _TorchSweep:
    def __init__(self, data: ProtocolInput, x: np.ndarray, max_iter: int) -> None:
        self.task, self.num_classes, self.max_iter = data.task, data.num_classes, max_iter
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.x = torch.as_tensor(x, dtype=torch.float64, device=self.dev)
        self.y = torch.as_tensor(np.asarray(data.train.labels), device=self.dev)
        self.wb: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, c: float) -> None:
        self.wb = fit_torch(
            self.x, self.y, c, self.num_classes, self.max_iter, self.task == "multilabel", init=self.wb
        )

    def scores(self, x: np.ndarray) -> np.ndarray:
        assert self.wb is not None
        return _scores_torch(torch.as_tensor(x, dtype=torch.float64, device=self.dev), *self.wb, self.task)


def run(
    data: ProtocolInput,
    cs: Sequence[Annotated[float, Gt(0)]] | None = None,
    max_iter: Annotated[int, Ge(1)] | None = None,
    tol: Annotated[float, Gt(0)] | None = None,
    backend: str = "auto",
    row_space: bool | None = None,
    refit: bool | None = None,
    preset: str = "dinov2",
) -> ProtocolResult:
    """Sweep C on validation and score test once with the best C (fitted again on train + val when
    ``refit``). Options left unset take the ``preset``'s value (``PRESETS``).

    With fewer training samples than feature dimensions (few-shot draws), the fits run in the row
    space of the training features (``row_space``; by default when n < D): the L2-penalised optimum
    W lies in the span of the training rows, so rotating onto an orthonormal basis of that span is
    exact and turns a (D x K) problem into an (n x K) one.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset == "paper" and data.task == "multilabel":
        raise OptionError(
            "--set",
            "logreg.preset=paper: the paper's logistic regression (cuML, multi-class) never ran on "
            "multi-label tasks; this is one",
        )
    given = {"cs": cs, "max_iter": max_iter, "tol": tol, "refit": refit}
    o = {k: v if given[k] is None else given[k] for k, v in PRESETS[preset].items()}
    if backend == "auto":
        backend = "torch" if torch.cuda.is_available() else "sklearn"
    if backend not in ("sklearn", "torch"):
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'torch', got {backend!r}")
    x_tr = np.asarray(data.train.features, dtype=np.float64)
    if row_space is None:
        row_space = len(x_tr) < x_tr.shape[1]
    x_tr, x_va, x_te = _rotate(x_tr, [data.val.features, data.test.features], row_space)
    score = _accuracy if preset == "paper" else validation_score  # the paper's code: "top-1"
    per_c: dict[float, float] = {}
    best, best_state = None, None
    sweep = _sweep(data, x_tr, o, backend)
    for c in sorted(float(c) for c in o["cs"]):
        sweep.fit(c)
        per_c[c] = score(data.val.labels, sweep.scores(x_va), data.task)
        if best is None or per_c[c] > per_c[best]:  # first of equals: the smallest C
            best, best_state = c, copy.deepcopy(sweep)
    if best is None or best_state is None:
        raise ValueError("logreg needs at least one C value")
    if o["refit"]:
        best_state, x_te = _refit(data, o, backend, row_space, best)
    hparams = {"cs": sorted(float(c) for c in o["cs"]), "max_iter": o["max_iter"], "tol": o["tol"]}
    hparams.update(backend=backend, features="cls")
    if o["refit"] or preset != "dinov2":  # only when used: other runs keep their keys
        hparams["refit"] = o["refit"]
    if preset != "dinov2":
        hparams.update(preset=preset, selection="val top-1 accuracy")
    return ProtocolResult(
        scores=best_state.scores(x_te),
        hparams=hparams,
        # how the fits were solved, not what was evaluated: equal results either way, so not a hparam
        selected={"C": best, "val_score": per_c[best], "row_space": row_space},
    )


def _rotate(x: np.ndarray, others: list[np.ndarray], row_space: bool) -> list[np.ndarray]:
    """``x`` and ``others`` (float64), onto an orthonormal basis of ``x``'s rows when ``row_space``."""
    out = [x] + [np.asarray(o, dtype=np.float64) for o in others]
    if not row_space:
        return out
    q, _ = np.linalg.qr(x.T)  # (D, n), orthonormal columns spanning the training rows
    return [a @ q for a in out]


def _sweep(
    data: ProtocolInput, x: np.ndarray, o: dict[str, Any], backend: str
) -> _SklearnSweep | _TorchSweep:
    if backend == "sklearn":
        return _SklearnSweep(data, x, o["max_iter"], o["tol"])
    return _TorchSweep(data, x, o["max_iter"])


def _refit(
    data: ProtocolInput, o: dict[str, Any], backend: str, row_space: bool, c: float
) -> tuple[_SklearnSweep | _TorchSweep, np.ndarray]:
    """A fit of C = ``c`` on train + val, from scratch, and the test features it scores."""
    full = ProtocolInput(
        data.train.concat(data.val), data.val, data.test, data.task, data.num_classes, data.seed
    )
    x = np.asarray(full.train.features, dtype=np.float64)
    x, x_te = _rotate(x, [data.test.features], row_space)
    fit = _sweep(full, x, o, backend)
    fit.fit(c)
    return fit, x_te


def _accuracy(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    """Top-1 accuracy (the paper's C selection metric)."""
    return float((np.asarray(scores).argmax(1) == np.asarray(labels)).mean())
