"""Facts about the device a benchmark ran on (names, versions, HBM bandwidth) and bandwidth figures."""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .memory import memory_method
from .timing import sync

# Floor traffic of a fused minGRU layer kernel in fp32: ~12 bytes/element forward + ~24 backward.
FUSED_BYTES_PER_ELEMENT = 36
# Spec HBM bandwidth (bytes/s) by device-name fragment, most specific first. Unknown devices fall
# back to a measured device-to-device copy bandwidth (said so in the output).
HBM_PEAK_BYTES_PER_S: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
    ("L40", 0.864e12),  # L40 and L40S
    ("L4", 0.3e12),
    ("A10", 0.6e12),
    ("RTX 4090", 1.008e12),
    ("V100", 0.9e12),
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def measured_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), median of 5: a practical HBM ceiling."""
    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    samples = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        samples.append(time.perf_counter() - start)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 256 * 2**20 * 4 / statistics.median(samples[1:])


def peak_bandwidth(device: torch.device) -> tuple[float, str]:
    """(bytes/s, where the figure comes from) for the HBM-bandwidth target."""
    name = torch.cuda.get_device_name(device)
    for fragment, value in HBM_PEAK_BYTES_PER_S:
        if fragment.lower() in name.lower():
            return value, f"spec sheet for {fragment}"
    return measured_copy_bandwidth(device), "measured device-to-device copy (spec unknown for this device)"


def metadata(device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "memory_method": memory_method(device),
    }
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
        meta["cudnn"] = torch.backends.cudnn.version()
        meta["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        meta["tf32_cudnn"] = torch.backends.cudnn.allow_tf32  # cuDNN LSTM/GRU use TF32 when this is True
    return meta


def add_bandwidth(rows: list[dict], hidden_dim: int, peak: float | None) -> None:
    """Achieved bandwidth of the minGRU rows: 36 B/element (fp32 fwd+bwd floor) * B*T*H / median time.

    For "gated scan" rows that is the kernel's own traffic; "minGRU" layer rows also run the input
    projection, so their figure is a lower bound on the scan's share.
    """
    for row in rows:
        if (
            row["kind"] != "train"
            or "median_s" not in row
            or not row["method"].startswith(("gated scan [", "minGRU ["))
        ):
            continue
        moved = FUSED_BYTES_PER_ELEMENT * row["B"] * row["T"] * hidden_dim
        row["bandwidth_gb_s"] = moved / row["median_s"] / 1e9
        if peak:
            row["bandwidth_fraction"] = moved / row["median_s"] / peak
