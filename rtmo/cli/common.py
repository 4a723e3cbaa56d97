"""What every subcommand shares: the user-error type, the optional-extra hints and the option helpers.

One name per concept across subcommands: -m/--model, -o/--output (a run folder), --threshold,
--nms-threshold, --draw-threshold, --device.
"""

from __future__ import annotations

import argparse

EXIT_USAGE = 2

# Optional dependencies and the extra that installs each (`pip install "rtmo[extra]"`).
EXTRAS = {"pycocotools": "eval", "onnx": "onnx", "onnxruntime": "onnx",
          "openvino": "openvino", "tensorboard": "train"}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input" rather than a bug; imported late to keep `rtmo --help` fast."""
    from ..hub.zoo import CheckpointError, DownloadError
    from ..infer.image import ImageError
    from ..infer.sources import SourceError
    from ..utils.device import DeviceError

    errors: list[type[BaseException]] = [CLIError, DeviceError, ImageError, SourceError, CheckpointError,
                                         DownloadError, FileNotFoundError, PermissionError, IsADirectoryError]
    try:
        from ..eval.coco import EvaluationError

        errors.append(EvaluationError)
    except ImportError:  # pragma: no cover - evaluation extras missing
        pass
    return tuple(errors)


def missing_extra_message(e: ImportError) -> str | None:
    """One line naming the extra to install for a missing optional dependency, None for other imports."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    if name == "tensorrt":
        return "this needs TensorRT (NVIDIA GPUs only): pip install tensorrt"
    if name in EXTRAS:
        return f'this needs the optional package {name}: pip install "rtmo[{EXTRAS[name]}]"'
    return None


def require(module: str) -> None:
    """Fail now, with the install line, when an optional dependency is missing (before any slow work)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        hint = missing_extra_message(ModuleNotFoundError(name=module))
        raise CLIError(hint or f"{module} is not installed")


MODEL_HELP = ("registry name (see `rtmo models`) or path to a checkpoint (.pth: mmpose's or ours) or an "
              "exported model (.onnx, OpenVINO .xml, TensorRT .engine)")


def add_model_option(p: argparse.ArgumentParser, default: str | None = "rtmo-s-coco", help: str = MODEL_HELP
                     ) -> None:
    p.add_argument("-m", "--model", default=default,
                   help=help + (" (default: %(default)s)" if default else ""))


def add_output_option(p: argparse.ArgumentParser, default: str | None, files: str) -> None:
    where = f" (default: {default})" if default else ""
    p.add_argument("-o", "--output", default=default, metavar="DIR", help=f"run folder{where}; {files}")


def add_threshold_options(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--threshold", type=float, default=None, help="person score threshold: people below it "
                   f"are dropped{what} (default: the model's, 0.1 = mmpose's test setting)")
    p.add_argument("--nms-threshold", type=float, default=None,
                   help="NMS IoU threshold (default: the model's, 0.65)")


def add_device_option(p: argparse.ArgumentParser, what: str = "torch models") -> None:
    p.add_argument("--device", default=None, help=f"device for {what}: cpu, cuda, cuda:1, 0, 0,1 "
                   "(default: CUDA when available, else cpu)")


def check_range(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and not 0.0 <= v <= 1.0:
            raise CLIError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")


def check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def resolve_device_arg(spec: str | None) -> str:
    """`--device` checked against this machine before any model loads (DeviceError: one line, exit 2).
    Without torch (a deployment install running exported models) the runtime checks it when it opens."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return spec
    from ..utils.device import resolve_device

    return str(resolve_device(spec))

