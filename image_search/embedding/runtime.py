"""Which runtime and numeric precision a model runs with: configured, or chosen from the CPU.

`model.runtime` / `model.precision` may be `auto`. Auto resolves from the CPU's flags alone, so
every process on one machine (Embedder replicas, the Indexer, Ray Data actors) reaches the same
answer, hence the same model id; nodes with different CPUs may not, which is why a cluster of
mixed CPUs must set both explicitly (docs/model-runtimes.md).

Pure and light on purpose: settings import it to compute the model id, and neither torch nor
onnxruntime is needed for that.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from image_search.errors import ConfigError

logger = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
RuntimeSetting = Literal["auto", "torch", "onnx", "openvino"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "int8"]

CPUINFO = Path("/proc/cpuinfo")
# int8 dot products in hardware: AVX-512 VNNI (Cascade Lake+, Zen 4+), AVX-VNNI (Alder Lake+),
# AMX (Sapphire Rapids+). Without them ONNX Runtime's AVX2 kernels add u8*s8 pairs in 16 bits,
# which saturate: faster than fp32 on some CPUs, but the int8 build then fails the quality
# gate (docs/model-runtimes.md), so auto serves fp32 there.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# bf16 arithmetic in hardware; elsewhere torch emulates it, slower than fp32, and OpenVINO
# would quietly run fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Models whose static int8 build passed the quality gate (tests/quality) with the weights the
# project ships. Others run int8 only when model.precision says int8: their weights are the
# operator's, and the gate has not seen them.
GATED_INT8 = frozenset({"efficientnet-lite0"})
# The same for OpenVINO's bf16, the faster and more exact of the two where the CPU has bf16.
GATED_BF16 = frozenset({"efficientnet-lite0"})


@dataclass(frozen=True)
class RuntimeChoice:
    """A resolved (runtime, precision), and why: for the start-up log and /readyz."""

    runtime: Runtime
    precision: Precision
    reason: str

    @property
    def tag(self) -> str:
        """`onnx-int8`: the part of the model id (model_id below) that says how it computes."""
        return f"{self.runtime}-{self.precision}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU listed in /proc/cpuinfo text (x86 `flags` line)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags; empty where /proc/cpuinfo is absent (then fp32 everywhere)."""
    try:
        return parse_cpu_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        logger.warning("cannot read %s: auto runtime/precision resolve to fp32", CPUINFO)
        return frozenset()


def check_pair(runtime: str, precision: str) -> None:
    """Refuse pairs no runtime implements (ConfigError names the fix)."""
    if runtime == "onnx" and precision == "bf16":
        raise ConfigError(
            "model.precision bf16 needs model.runtime openvino or torch (or auto): ONNX Runtime "
            "has no bf16 convolution kernels on x86 CPUs, so it would run slower than fp32"
        )
    if runtime in ("torch", "openvino") and precision == "int8":
        raise ConfigError(
            "model.precision int8 needs model.runtime onnx (or auto): the int8 model is a "
            "static QDQ ONNX graph that the project runs on ONNX Runtime only"
        )


def resolve(
    model: str,
    runtime: RuntimeSetting,
    precision: PrecisionSetting,
    flags: frozenset[str] | None = None,
) -> RuntimeChoice:
    """Resolve `auto` values from the CPU flags (this machine's unless given)."""
    check_pair(runtime, precision)
    flags = cpu_flags() if flags is None else flags
    int8_hw = ", ".join(f for f in INT8_FLAGS if f in flags)
    bf16_hw = ", ".join(f for f in BF16_FLAGS if f in flags)
    if precision == "auto":
        if runtime in ("torch", "openvino"):
            if bf16_hw:
                return RuntimeChoice(runtime, "bf16", f"auto: CPU has {bf16_hw}")
            return RuntimeChoice(runtime, "fp32", "auto: CPU has no bf16 instructions")
        if bf16_hw and runtime == "auto" and model in GATED_BF16:
            return RuntimeChoice(
                "openvino", "bf16", f"auto: CPU has {bf16_hw}; OpenVINO bf16 passed the gate"
            )
        if not int8_hw:
            return RuntimeChoice(
                "onnx", "fp32", "auto: no VNNI/AMX, int8 would saturate (fails the gate)"
            )
        if model not in GATED_INT8:
            return RuntimeChoice(
                "onnx", "fp32", f"auto: int8 of {model} is not quality-gated (opt in: int8)"
            )
        return RuntimeChoice("onnx", "int8", f"auto: CPU has {int8_hw}; int8 passed the gate")
    # The precision is set; pick the runtime that runs it fastest: ONNX Runtime for fp32 and
    # int8, OpenVINO for bf16 where the CPU has bf16 instructions (torch emulates it elsewhere).
    chosen: Runtime = "onnx"
    if precision == "bf16":
        chosen = "openvino" if bf16_hw else "torch"
    how = "configured" if runtime != "auto" else f"configured {precision}, auto runtime"
    if runtime != "auto":
        chosen = runtime
    if chosen == "openvino" and precision == "bf16" and not bf16_hw:
        # OpenVINO would quietly run fp32 under a model id that says bf16.
        raise ConfigError(
            "model.runtime openvino with precision bf16 needs a CPU with bf16 instructions "
            f"({' or '.join(BF16_FLAGS)}) and this one has none: set model.runtime torch for "
            "emulated bf16, or model.precision fp32"
        )
    if precision == "int8" and not int8_hw:
        how += " (no VNNI/AMX: int8 is emulated, slower than fp32 and less exact)"
    elif precision == "bf16" and not bf16_hw:
        how += " (no bf16 instructions: emulated, slower than fp32)"
    return RuntimeChoice(chosen, precision, how)


def model_id(model: str, choice: RuntimeChoice) -> str:
    """The identity a vector collection is bound to: `efficientnet-lite0:onnx-int8`."""
    return f"{model}:{choice.tag}"


def same_model(stored: str, configured: str) -> bool:
    """Whether a collection bound to model id `stored` holds what `configured` computes.

    Ids written before runtimes were named (`efficientnet-lite0:fp32`) were all torch's, so a
    collection from then keeps serving with runtime torch and the same precision.
    """

    def canonical(model_id: str) -> str:
        name, sep, tag = model_id.rpartition(":")
        return f"{name}:torch-{tag}" if sep and tag in ("fp32", "bf16") else model_id

    return canonical(stored) == canonical(configured)
