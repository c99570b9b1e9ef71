"""A tabular MLP in torch: median impute + standardize numerics, one-hot categoricals.

Everything learned (imputer, scaler, one-hot vocabulary, target scale) is fitted on the
fold's training rows inside `fit`. Early stopping watches rows split off the *training*
rows (`inner_split`), never the held-out fold, and restores the best epoch's weights.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pandas as pd

try:
    import torch
    from torch import nn
except ImportError as e:
    raise ImportError("model type torch_mlp needs torch: pip install 'foldwise[torch]'") from e

from foldwise.tasks.features import column_kinds, preprocessor
from foldwise.tasks.models import FitContext, ModelConfig, inner_split
from foldwise.tasks.models.mlp_params import DEFAULTS, check_params


def _network(n_in: int, hidden: list[int], dropout: float, n_out: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(dropout)]
        width = int(h)
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class TorchMLPModel:
    def __init__(self, config: ModelConfig, ctx: FitContext) -> None:
        problem = check_params(config.params)
        if problem:
            raise ValueError(problem)
        self.config, self.ctx = config, ctx
        self.params = {**DEFAULTS, **config.params}
        self.device = self._device(ctx)
        self.prep = None
        self.net: nn.Module | None = None
        self.y_mean, self.y_std = 0.0, 1.0
        self.best_iteration: int | None = None  # best epoch (1-based)

    @staticmethod
    def _device(ctx: FitContext) -> torch.device:
        """Ray's CUDA_VISIBLE_DEVICES already names the assigned GPU, so cuda:0 is it."""
        if ctx.gpus > 0:
            if torch.cuda.is_available():
                return torch.device("cuda:0")
            print("torch_mlp: a GPU was requested but CUDA is not available; falling back to CPU", file=sys.stderr)
        return torch.device("cpu")

    def _n_out(self) -> int:
        return self.ctx.n_classes if self.ctx.task == "multiclass" else 1

    def _loss(self) -> nn.Module:
        return nn.CrossEntropyLoss() if self.ctx.task == "multiclass" else (
            nn.BCEWithLogitsLoss() if self.ctx.task == "binary" else nn.MSELoss())

    def _tensor_y(self, y: np.ndarray) -> torch.Tensor:
        if self.ctx.task == "multiclass":
            return torch.as_tensor(y.astype(np.int64), device=self.device)
        if self.ctx.task == "binary":
            return torch.as_tensor(y.astype(np.float32), device=self.device)
        return torch.as_tensor(((y - self.y_mean) / self.y_std).astype(np.float32), device=self.device)

    def _features(self, X: pd.DataFrame) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.prep.transform(X), dtype=np.float32), device=self.device)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        p, task = self.params, self.ctx.task
        torch.set_num_threads(max(1, int(self.ctx.n_threads)))
        torch.manual_seed(self.ctx.seed)
        rng = np.random.default_rng(self.ctx.seed)
        y = np.asarray(y)

        numeric, categorical = column_kinds(X)
        # Imputer always first: held-out rows may have NaN where the training rows had none.
        self.prep = preprocessor(("median_imputer", "standard_scaler"), numeric, categorical, True)
        self.prep.fit(X)
        if task == "regression":
            self.y_mean = float(np.mean(y))
            self.y_std = float(np.std(y)) or 1.0

        fit_idx, stop_idx = inner_split(y, task, self.ctx.seed)
        self.stop_rows = stop_idx  # positions within the training rows, for inspection
        features = self._features(X)
        target = self._tensor_y(y)
        X_fit, y_fit = features[fit_idx], target[fit_idx]
        X_stop, y_stop = features[stop_idx], target[stop_idx]

        self.net = _network(features.shape[1], list(p["hidden"]), float(p["dropout"]), self._n_out()).to(self.device)
        loss_fn = self._loss()
        opt = torch.optim.AdamW(self.net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        batch = max(1, int(p["batch_size"]))
        best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
        for epoch in range(1, int(p["epochs"]) + 1):
            self.net.train()
            order = torch.as_tensor(rng.permutation(len(fit_idx)), device=self.device)
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                opt.zero_grad()
                loss = loss_fn(self._out(self.net(X_fit[rows])), y_fit[rows])
                loss.backward()
                opt.step()
            self.net.eval()
            with torch.no_grad():
                stop_loss = float(loss_fn(self._out(self.net(X_stop)), y_stop)) if len(stop_idx) else 0.0
            if stop_loss < best_loss:
                best_loss, best_epoch, stale = stop_loss, epoch, 0
                best_state = copy.deepcopy(self.net.state_dict())
            else:
                stale += 1
                if stale >= int(p["patience"]):
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.best_iteration = best_epoch
        self.net.eval()

    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.ctx.task == "multiclass" else logits.squeeze(-1)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        with torch.no_grad():
            out = self._out(self.net(self._features(X)))
            if self.ctx.task == "binary":
                out = torch.sigmoid(out)
            elif self.ctx.task == "multiclass":
                out = torch.softmax(out, dim=-1)
        result = out.double().cpu().numpy()
        if self.ctx.task == "regression":
            result = result * self.y_std + self.y_mean
        return result
