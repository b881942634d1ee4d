"""The model for a command line: a device or checkpoint the user named, checked.

`check_device` and `load_model` raise `server.cli.UserError` (one line that names the
device or the path, and what to do) where `server.core.model` raises ValueError, so a
command wrapped by `server.cli.command` prints it and exits with 1. torch is imported on
the first call, not with this module, so a command can import it before it knows
whether it needs the model.
"""

from __future__ import annotations

import os

from server.cli import UserError, first_line

CHECKPOINT_HINT = "train one with python -m training.train or pass a checkpoint written by it"
DEVICE_HINT = "pass --device cpu (or auto: the GPU only when there is one)"


def check_device(device: str) -> None:
    """Raise UserError unless `device` names a torch device that is there (auto, cpu, cuda:N)."""
    import torch

    from server.core.model import resolve_device

    try:
        dev = torch.device(device) if device != "auto" else None
    except (RuntimeError, ValueError):
        raise UserError(f"device {device!r} is not a torch device", DEVICE_HINT) from None
    try:
        resolve_device(device)
    except ValueError as e:
        why = "torch sees no CUDA GPU" if dev is not None and dev.type == "cuda" else first_line(e)
        raise UserError(f"device {device!r} is not there ({why})", DEVICE_HINT) from None
    if dev is not None and dev.type == "cuda" and dev.index is not None:
        n = torch.cuda.device_count()
        if dev.index >= n:
            raise UserError(f"device {device!r} is not there ({n} CUDA device(s))", DEVICE_HINT)


def load_model(path: str | os.PathLike | None, device: str = "auto"):
    """`server.core.model.load_checkpoint` for a command line: a missing file, a file that is not
    one of our checkpoints (or from an incompatible version), or a device that is not
    there raise UserError naming the path or the device; a missing or unreadable file
    raises its OSError (which `server.cli` words)."""
    from server.core.model import default_checkpoint_path, load_checkpoint

    check_device(device)
    shown = os.fspath(path) if path is not None else str(default_checkpoint_path())
    try:
        return load_checkpoint(path, device)
    except ValueError as e:  # its word for "not a checkpoint it can load"; OSErrors pass
        raise UserError(
            f"{shown}: not a checkpoint this version can load ({_reason(e, shown)})",
            CHECKPOINT_HINT,
        ) from e


def _reason(exc: BaseException, path: str) -> str:
    """A short reason: the first sentence of the message, without the path it repeats."""
    text = first_line(exc)
    for prefix in (f"cannot load checkpoint {path}: ", f"{path}: ", f"{path} "):
        text = text.removeprefix(prefix)
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."
