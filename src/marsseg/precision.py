"""Numeric precision of the model's forward and backward pass: fp32, or bf16 autocast where the hardware has it.

Only the model runs under autocast: the loss, the metric, the EMA and the optimizer state stay fp32 (outputs are
cast back to fp32 before the loss and the softmax).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess

import torch

from marsseg.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")

# x86 flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles); Arm's FEAT_BF16 shows as "bf16".
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags_from_cpuinfo(text: str) -> set[str]:
    """The feature flags of the first processor in a Linux /proc/cpuinfo ("flags" on x86, "Features" on Arm)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively. Read from the CPU's flags, not guessed: oneDNN also runs bf16 on
    AVX512 CPUs without these instructions, by conversion, and there it is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            return bool(cpu_flags_from_cpuinfo(handle.read()) & set(NATIVE_BF16_FLAGS))
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            answer = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            return answer == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """ "fp32" or "bf16" for a configured precision on `device`.

    "auto" picks bf16 on CUDA and on CPUs with native bf16 arithmetic, fp32 elsewhere.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: found {precision!r}, expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    device_type = torch.device(device).type
    if device_type == "cuda" or (device_type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of the model's forward pass for a configured precision on `device`."""
    device = torch.device(device)
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def resolve_device(name: str) -> torch.device:
    """The device a config names: "auto" is CUDA where it is available, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
