"""torch_image: a CNN per fold on image files, with albumentations augmentations and TTA.

X holds one column of image paths (`ctx.image_column`); images are read with OpenCV,
resized to `image_size`, put through `augment.train` (training) or `augment.valid`
(inner validation and prediction), scaled to [0, 1] when still 8-bit, and fed to the
built-in CNN or a timm architecture (`arch: timm:NAME`, random init or a local
`weights` file; nothing is ever downloaded).

Which epoch predicts: `select_epoch: inner` (default) trains on the training folds less
an inner split (`valid_fraction`, stratified, seeded) and keeps the weights of the epoch
with the lowest loss on that inner split; `select_epoch: last` trains on all training
rows for exactly `epochs` epochs and keeps the last weights. The held-out fold is never
seen by `fit`.

The GPU: Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it assigned the fold task, so
`cuda:0` is the assigned GPU. When the fold asked for a GPU and torch sees none, it
trains on the CPU and says so on stderr (and in the fold's training log). AMP on CUDA:
bf16 autocast where supported, else fp16 with gradient scaling.
"""

from __future__ import annotations

import copy
import io
import os
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

try:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
except ImportError as e:
    raise ImportError("model type torch_image needs torch: pip install 'foldwise[torch]'") from e

from foldwise.tasks.augment import build as build_pipeline
from foldwise.tasks.images import cv2_module, read_image
from foldwise.tasks.models import FitContext, ModelConfig, TrainingLog, inner_split
from foldwise.tasks.models.image_params import DEFAULTS, check_params, image_size

TTA_VIEWS = {
    "hflip": lambda x: torch.flip(x, dims=(-1,)),
    "vflip": lambda x: torch.flip(x, dims=(-2,)),
    "transpose": lambda x: x.transpose(-1, -2),
    "rot90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, dims=(-2, -1)),
}


# --------------------------------------------------------------------------- data


class ImageRows(Dataset):
    """Image paths (+ targets) -> (C,H,W float32 tensor, target) through one albumentations pipeline."""

    def __init__(self, paths: np.ndarray, targets: np.ndarray | None, pipeline: Any, size: tuple[int, int],
                 channels: int) -> None:
        self.paths, self.targets, self.pipeline = paths, targets, pipeline
        self.size, self.channels = size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_image(self.paths[i], self.size, self.channels)
        img = self.pipeline(image=img)["image"]
        x = to_tensor(img)
        if x.shape[-2:] != self.size:
            raise ValueError(f"augmentation turned {self.paths[i]!r} into {tuple(x.shape[-2:])}, not image_size "
                             f"{self.size}")
        y = torch.as_tensor(self.targets[i]) if self.targets is not None else torch.tensor(0)
        return x, y


def load_image(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """Read with OpenCV and resize to (height, width): INTER_AREA to shrink, linear to grow."""
    cv2 = cv2_module()
    img = read_image(path, channels)
    h, w = size
    if img.shape[:2] != (h, w):
        shrink = img.shape[0] * img.shape[1] > h * w
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if img.ndim == 2:
            img = img[:, :, None]
    return img


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC -> CHW float32; 8-bit images are scaled to [0, 1], float images (after Normalize) kept."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _seed_worker(_: int) -> None:
    """Each DataLoader worker gets its own augmentation stream, derived from the seeded loader."""
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    info.dataset.pipeline.set_random_seed(seed)


# --------------------------------------------------------------------------- networks


def small_cnn(channels: int, n_out: int, width: int, blocks: int, dropout: float) -> nn.Module:
    """conv-bn-relu x2 per block, max-pool between blocks, global average pool, linear head."""
    layers: list[nn.Module] = []
    c_in = channels
    for b in range(blocks):
        c = width * 2**b
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        if b < blocks - 1:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, n_out)]
    return nn.Sequential(*layers)


def make_network(p: dict[str, Any], n_out: int) -> nn.Module:
    arch = str(p["arch"])
    if arch == "cnn":
        return small_cnn(int(p["channels"]), n_out, int(p["width"]), int(p["blocks"]), float(p["dropout"]))
    import timm  # checked at load: installed and the name exists

    return timm.create_model(arch.removeprefix("timm:"), pretrained=False, num_classes=n_out,
                             in_chans=int(p["channels"]), drop_rate=float(p["dropout"]))


def load_weights(net: nn.Module, path: str) -> str:
    """A local state_dict (or a foldwise checkpoint) into `net`; tensors whose shape differs (the head) are skipped."""
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    net.load_state_dict(usable, strict=False)
    missing = sorted(set(own) - set(usable))
    return (f"weights {path}: loaded {len(usable)} tensors"
            + (f"; skipped {len(skipped)} whose name or shape differ ({', '.join(skipped[:4])}...)" if skipped else "")
            + (f"; {len(missing)} left at random init" if missing else ""))


# --------------------------------------------------------------------------- the adapter


class TorchImageModel:
    takes_images = True  # train_fold adds the image-path column to X for this adapter

    def __init__(self, config: ModelConfig, ctx: FitContext) -> None:
        problem = check_params(config.params)
        if problem:
            raise ValueError(problem)
        if ctx.image_column is None:
            raise ValueError("torch_image needs image data: set data.image to the column of image paths")
        self.config, self.ctx = config, ctx
        self.p = {**DEFAULTS, **config.params}
        self.size = image_size(self.p["image_size"])
        self.channels = int(self.p["channels"])
        self.notes: list[str] = []
        self.visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.device = self._device()
        self.net: nn.Module | None = None
        self.y_mean, self.y_std = 0.0, 1.0
        self.history: dict[str, list[float]] = {}
        self.best_epoch: int | None = None
        self._checkpoint: bytes | None = None

    def _device(self) -> torch.device:
        """Ray's CUDA_VISIBLE_DEVICES already names the assigned GPU, so cuda:0 is it."""
        if self.ctx.gpus > 0:
            if torch.cuda.is_available():
                return torch.device("cuda:0")
            note = (f"torch_image: Ray assigned GPU(s) CUDA_VISIBLE_DEVICES={self.visible_devices!r} but torch "
                    f"{torch.__version__} sees no CUDA device; falling back to CPU")
            print(note, file=sys.stderr, flush=True)
            self.notes.append(note)
        return torch.device("cpu")

    # ----------------------------------------------------------------- plumbing

    def _n_out(self) -> int:
        return self.ctx.n_classes if self.ctx.task == "multiclass" else 1

    def _workers(self) -> tuple[int, int]:
        """(DataLoader workers, torch threads) from the fold's CPUs.

        On CUDA the GPU computes, so all CPUs but one decode images; on the CPU the
        compute needs the threads, so half the CPUs (rounded down) decode.
        """
        cpus = max(1, int(self.ctx.n_threads))
        if self.p["num_workers"] is not None:
            workers = int(self.p["num_workers"])
        else:
            workers = cpus - 1 if self.device.type == "cuda" else cpus // 2
        return workers, max(1, cpus - workers)

    def _loader(self, paths: np.ndarray, targets: np.ndarray | None, train: bool, seed: int) -> DataLoader:
        part = "train" if train else "valid"
        pipeline = build_pipeline((self.config.augment or {}).get(part), seed=seed, where=f"augment.{part}")
        rows = ImageRows(paths, targets, pipeline, self.size, self.channels)
        workers, _ = self._workers()
        generator = torch.Generator()
        generator.manual_seed(seed)
        return DataLoader(rows, batch_size=int(self.p["batch_size"]) * (1 if train else 2), shuffle=train,
                          drop_last=train and len(rows) > int(self.p["batch_size"]), num_workers=workers,
                          worker_init_fn=_seed_worker if workers else None, generator=generator,
                          persistent_workers=workers > 0, pin_memory=self.device.type == "cuda")

    def _amp(self) -> tuple[bool, torch.dtype]:
        if self.device.type != "cuda" or not self.p["amp"]:
            return False, torch.float32
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _targets(self, y: np.ndarray) -> np.ndarray:
        if self.ctx.task == "multiclass":
            return y.astype(np.int64)
        if self.ctx.task == "binary":
            return y.astype(np.float32)
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def _loss(self) -> nn.Module:
        ls = float(self.p["label_smoothing"])
        if self.ctx.task == "multiclass":
            return nn.CrossEntropyLoss(label_smoothing=ls)
        if self.ctx.task == "binary":
            bce = nn.BCEWithLogitsLoss()
            return (lambda out, y: bce(out, y * (1 - ls) + 0.5 * ls)) if ls else bce
        return nn.MSELoss()

    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float() if self.ctx.task == "multiclass" else logits.float().squeeze(-1)

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        p = self.p
        if p["optimizer"] == "sgd":
            return torch.optim.SGD(net.parameters(), lr=float(p["lr"]), momentum=float(p["momentum"]),
                                   weight_decay=float(p["weight_decay"]), nesterov=True)
        cls = torch.optim.AdamW if p["optimizer"] == "adamw" else torch.optim.Adam
        return cls(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))

    def _scheduler(self, opt: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Any, bool]:
        """(scheduler or None, stepped per batch?)"""
        kind, epochs = self.p["scheduler"], int(self.p["epochs"])
        if kind == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), False
        if kind == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(self.p["lr"]), epochs=epochs,
                                                       steps_per_epoch=max(1, steps_per_epoch)), True
        if kind == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=int(self.p["step_size"]),
                                                   gamma=float(self.p["gamma"])), False
        return None, False

    # ----------------------------------------------------------------- fit / predict

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        p, task, seed = self.p, self.ctx.task, self.ctx.seed
        _, threads = self._workers()
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        paths = X[self.ctx.image_column].to_numpy()
        y = np.asarray(y)
        if task == "regression":
            self.y_mean, self.y_std = float(np.mean(y)), float(np.std(y)) or 1.0
        targets = self._targets(y)

        if p["select_epoch"] == "inner":
            fit_idx, stop_idx = inner_split(y, task, seed, float(p["valid_fraction"]))
            selection = (f"best inner-split loss: {len(stop_idx)} of the fold's {len(y)} training rows "
                         f"({p['valid_fraction']:.0%}, seeded) held out of training to pick the epoch")
        else:
            fit_idx, stop_idx = np.arange(len(y)), np.array([], dtype=np.int64)
            selection = f"fixed: the last of {p['epochs']} epochs, trained on all {len(y)} training rows"
        self.selection = selection
        train_loader = self._loader(paths[fit_idx], targets[fit_idx], train=True, seed=seed)
        stop_loader = self._loader(paths[stop_idx], targets[stop_idx], train=False, seed=seed) if len(stop_idx) else None

        net = make_network(p, self._n_out())
        if p["weights"]:
            note = load_weights(net, str(p["weights"]))
            print(f"torch_image: {note}", file=sys.stderr, flush=True)
            self.notes.append(note)
        net = net.to(self.device)
        opt = self._optimizer(net)
        sched, per_batch = self._scheduler(opt, len(train_loader))
        loss_fn = self._loss()
        use_amp, amp_dtype = self._amp()
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        history: dict[str, list[float]] = {k: [] for k in ("train_loss", "lr", "epoch_seconds", "train_images_per_second")}
        if stop_loader is not None:
            history["valid_loss"] = []
            if task != "regression":
                history["valid_accuracy"] = []
        best_loss, best_state, best_epoch = float("inf"), None, 0
        for epoch in range(1, int(p["epochs"]) + 1):
            tick = time.perf_counter()
            net.train()
            total, seen = 0.0, 0
            lr_now = opt.param_groups[0]["lr"]
            for xb, yb in train_loader:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = loss_fn(self._out(net(xb)), yb)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if sched is not None and per_batch:
                    sched.step()
                total += float(loss.detach()) * len(xb)
                seen += len(xb)
            if sched is not None and not per_batch:
                sched.step()
            seconds = time.perf_counter() - tick
            history["train_loss"].append(total / max(seen, 1))
            history["lr"].append(float(lr_now))
            history["epoch_seconds"].append(seconds)
            history["train_images_per_second"].append(seen / seconds if seconds > 0 else 0.0)
            if stop_loader is not None:
                stop_loss, stop_acc = self._evaluate(net, stop_loader, loss_fn, use_amp, amp_dtype)
                history["valid_loss"].append(stop_loss)
                if task != "regression":
                    history["valid_accuracy"].append(stop_acc)
                if stop_loss < best_loss:
                    best_loss, best_epoch = stop_loss, epoch
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        if best_state is not None:
            net.load_state_dict(best_state)
        else:  # select_epoch: last
            best_epoch = int(p["epochs"])
        net.eval()
        self.net, self.best_epoch, self.history = net, best_epoch, history
        self._checkpoint = self._make_checkpoint(net) if p["checkpoint"] else None

    @torch.no_grad()
    def _evaluate(self, net: nn.Module, loader: DataLoader, loss_fn: Any, use_amp: bool,
                  amp_dtype: torch.dtype) -> tuple[float, float]:
        net.eval()
        total, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            xb, yb = xb.to(self.device), yb.to(self.device)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                out = self._out(net(xb))
            total += float(loss_fn(out, yb)) * len(xb)
            if self.ctx.task == "multiclass":
                correct += int((out.argmax(-1) == yb).sum())
            elif self.ctx.task == "binary":
                correct += int(((out > 0).float() == yb).sum())
            seen += len(xb)
        return total / max(seen, 1), correct / max(seen, 1)

    def _make_checkpoint(self, net: nn.Module) -> bytes | None:
        buf = io.BytesIO()
        state = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
        meta = {"arch": self.p["arch"], "params": dict(self.config.params), "task": self.ctx.task,
                "n_classes": self.ctx.n_classes, "best_epoch": self.best_epoch, "image_size": list(self.size),
                "channels": self.channels, "y_mean": self.y_mean, "y_std": self.y_std}
        torch.save({"state_dict": state, "meta": meta}, buf)
        blob = buf.getvalue()
        cap = float(self.p["checkpoint_max_mb"]) * 2**20
        if len(blob) > cap:
            self.notes.append(f"checkpoint not logged: {len(blob) / 2**20:.1f} MB > checkpoint_max_mb="
                              f"{self.p['checkpoint_max_mb']}")
            return None
        return blob

    @torch.no_grad()
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities (or values) averaged over the identity view and each `tta` view."""
        paths = X[self.ctx.image_column].to_numpy()
        loader = self._loader(paths, None, train=False, seed=self.ctx.seed)
        use_amp, amp_dtype = self._amp()
        views = [lambda x: x] + [TTA_VIEWS[name] for name in self.config.tta]
        parts = []
        self.net.eval()
        for xb, _ in loader:
            xb = xb.to(self.device)
            acc = None
            for view in views:
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                    out = self._out(self.net(view(xb))).double()  # probabilities in float64: rows sum to 1
                if self.ctx.task == "multiclass":
                    out = torch.softmax(out, dim=-1)
                elif self.ctx.task == "binary":
                    out = torch.sigmoid(out)
                acc = out if acc is None else acc + out
            parts.append((acc / len(views)).cpu().numpy())
        n_out = self.ctx.n_classes if self.ctx.task == "multiclass" else None
        result = np.concatenate(parts) if parts else np.empty((0, n_out) if n_out else (0,))
        if self.ctx.task == "regression":
            result = result * self.y_std + self.y_mean
        return result

    def training_log(self) -> TrainingLog:
        return TrainingLog(history=copy.deepcopy(self.history), best_epoch=self.best_epoch,
                           selection=getattr(self, "selection", ""), device=str(self.device),
                           visible_devices=self.visible_devices, notes=tuple(self.notes),
                           checkpoint=self._checkpoint)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for its size and the cache: the network on the CPU, without the checkpoint bytes."""
        state = dict(self.__dict__)
        state["_checkpoint"] = None
        if state.get("net") is not None and self.device.type != "cpu":
            state["net"] = copy.deepcopy(self.net).to("cpu")
            state["device"] = torch.device("cpu")
        return state
