"""One rule for choosing a torch device, used by every command and by `ModelManager.get`.

`None` means CUDA when available, else the CPU. Ultralytics-style specs are accepted too: `0` or `"0"` is
`cuda:0`, `"0,1"` names several GPUs (`resolve_devices`; single-model paths take the first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class DeviceError(ValueError):
    """A device that does not exist on this machine; the message says what there is."""


def resolve_devices(spec: str | int | torch.device | None) -> list[torch.device]:
    """Every device a spec names, checked against this machine."""
    import torch  # here: DeviceError must be importable where torch is not (exported models)

    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        return [torch.device("cuda:0" if torch.cuda.is_available() else "cpu")]
    if isinstance(spec, torch.device):
        parts = [str(spec)]
    elif isinstance(spec, int) and not isinstance(spec, bool):
        parts = [str(spec)]
    elif isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        raise DeviceError(f"device must be a name such as 'cpu', 'cuda:0' or '0', not {type(spec).__name__}")
    if not parts:
        raise DeviceError(f"device {spec!r} names no device")
    return [_one(p, spec) for p in parts]


def resolve_device(spec: str | int | torch.device | None) -> torch.device:
    """The device a spec names (the first one of a list such as '0,1')."""
    return resolve_devices(spec)[0]


def _one(text: str, spec: object) -> torch.device:
    import torch

    text = text.lower()
    if text.isdigit():
        text = f"cuda:{text}"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {spec!r} is not a device name (use cpu, cuda, cuda:N, N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r}: CUDA is not available here (torch {torch.__version__}; "
                              "use --device cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {spec!r}: there is no GPU {dev.index}; this machine has {count} "
                              f"(cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"device {spec!r}: MPS is not available here (use --device cpu)")
    elif dev.type != "cpu":
        raise DeviceError(f"device {spec!r}: unsupported device type {dev.type!r} (use cpu, cuda or mps)")
    return dev
