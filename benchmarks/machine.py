"""The CPU a benchmark ran on: model, cores and the SIMD flags that decide the int8 kernels.

ONNX Runtime picks its int8 GEMM kernel by these flags (VNNI, AVX-512, AVX2 on x86; the dot
product extension on ARM), so int8 speed, and before the u8 x u8 fix its results, depend on them.
Every benchmark table should be printed with `describe()` beside it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# /proc/cpuinfo flag -> the name the results use.
X86_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_int8": "AMX-INT8",
}
ARM_FLAGS = {"asimd": "NEON", "asimddp": "dot product (UDOT/SDOT)", "i8mm": "I8MM", "sve": "SVE"}


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """CPU model, family/model numbers, cores this process may use, and the relevant flags present/absent."""
    fields: dict = {}
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's entry
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    known = ARM_FLAGS if "Features" in fields and "flags" not in fields else X86_FLAGS
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine(),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "cores": usable,
        "logical_cpus": os.cpu_count(),
        "flags": {label: flag in flags for flag, label in known.items()},
    }


def describe(info: dict | None = None) -> str:
    """One line for a results table, e.g. 'AMD EPYC (family 25 model 1), 2 cores; AVX2 yes, ... VNNI no'."""
    info = info or cpu_info()
    family = f" (family {info['family']} model {info['model']})" if info["family"] else ""
    flags = ", ".join(f"{label} {'yes' if present else 'no'}" for label, present in info["flags"].items())
    return f"CPU: {info['model_name']}{family}, {info['cores']} cores usable of {info['logical_cpus']}; {flags}"


if __name__ == "__main__":
    print(describe())
