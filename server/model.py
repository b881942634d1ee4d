"""The motion model: a GRU over per-sample features with a multi-horizon residual head.

`forward` runs whole sequences (training); `step` advances a batch by one sample
(serving). Both use the same `nn.GRU`, so stepping reproduces the sequence forward.
A checkpoint carries the model arguments, the feature configuration (including the
residual normalisation and horizons), a version string and the weights:
`load_checkpoint(path, device)` rebuilds everything from the file alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from server.features import N_FEATURES, FeatureConfig

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class ModelConfig:
    n_features: int = N_FEATURES
    hidden: int = 64  # GRU hidden size
    layers: int = 1  # stacked GRU layers
    head_hidden: int = 64  # width of the head's hidden layer
    n_horizons: int = 10  # H
    dropout: float = 0.0  # between GRU layers (training only)


class MotionGRU(nn.Module):
    """GRU + head. Output: normalised residual over CV in the heading frame, (…, H, 3)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gru = nn.GRU(
            cfg.n_features,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Linear(cfg.hidden + cfg.n_features, cfg.head_hidden),
            nn.GELU(),
            nn.Linear(cfg.head_hidden, cfg.n_horizons * 3),
        )
        # Start as exact CV dead reckoning: the residual is zero until trained.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(self.cfg.layers, batch, self.cfg.hidden, device=device)

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F) -> residuals (B, T, H, 3), final hidden (L, B, hidden).

        Sequences must start at a reset (zero state) or continue from `h0`.
        """
        B, T, _ = x.shape
        z, hn = self.gru(x, h0)  # z (B, T, hidden)
        y = self.head(torch.cat([z, x], dim=-1))  # (B, T, H*3)
        return y.view(B, T, self.cfg.n_horizons, 3), hn

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample per row: x (B, F), h (L, B, hidden) -> (B, H, 3), new h (L, B, hidden).

        Uses the same `nn.GRU` as `forward` (measured faster on CPU than a hand-written
        cell for one step: 3.8 ms vs 7.2 ms for 10k rows on 2 cores).
        """
        z, hn = self.gru(x[:, None, :], h)  # z (B, 1, hidden)
        y = self.head(torch.cat([z[:, 0], x], dim=-1))  # (B, H*3)
        return y.view(-1, self.cfg.n_horizons, 3), hn


@dataclass
class LoadedModel:
    """A model ready to serve: module (eval mode, on `device`), features, version."""

    model: MotionGRU
    features: FeatureConfig
    version: str
    device: torch.device
    meta: dict


def weights_digest(model: nn.Module) -> str:
    """Short content hash of the weights (part of the version string)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:8]


def save_checkpoint(
    path: str | os.PathLike,
    model: MotionGRU,
    features: FeatureConfig,
    *,
    name: str = "gru",
    meta: dict | None = None,
) -> str:
    """Write a self-contained checkpoint atomically (temp file + rename); returns its version.

    Raises OSError if the directory is not writable.
    """
    version = f"{name}-h{model.cfg.hidden}x{model.cfg.layers}-{weights_digest(model)}"
    blob = {
        "format": CHECKPOINT_FORMAT,
        "version": version,
        "model_args": asdict(model.cfg),
        "features": features.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return version


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. Raises ValueError for cuda without a GPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return dev


def load_checkpoint(path: str | os.PathLike | None = None, device: str = "auto") -> LoadedModel:
    """Rebuild a model from a checkpoint file alone (default: the shipped model).

    Raises FileNotFoundError if missing, ValueError if the file is not a valid checkpoint.
    """
    if path is None:
        path = default_checkpoint_path()
    dev = resolve_device(device)
    data = Path(path).read_bytes()
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an avatar-stream checkpoint")
        cfg = ModelConfig(**blob["model_args"])
        features = FeatureConfig.from_dict(blob["features"])
        if cfg.n_horizons != features.n_horizons or cfg.n_features != N_FEATURES:
            raise ValueError("model and feature configuration disagree")
        model = MotionGRU(cfg)
        model.load_state_dict(blob["state_dict"])
    except ValueError:
        raise
    except Exception as e:  # corrupt pickle, missing keys, shape mismatch
        raise ValueError(f"cannot load checkpoint {path}: {e}") from e
    model.eval().to(dev)
    return LoadedModel(model, features, str(blob["version"]), dev, dict(blob.get("meta", {})))


def default_checkpoint_path() -> Path:
    """Path of the checkpoint shipped inside the `server` package."""
    return Path(str(resources.files("server") / "models" / "avatar_gru.pt"))
