"""model.runtime / model.precision: auto resolution per CPU, refused pairs, the model id."""

from __future__ import annotations

import pytest

from image_search.config import ModelSettings, load_settings
from image_search.embedding import runtime
from image_search.embedding.runtime import (
    RuntimeChoice,
    RuntimeSetting,
    parse_cpu_flags,
    resolve,
    same_model,
)
from image_search.errors import ConfigError
from tests.conftest import ROOT


def cpuinfo(flags: str) -> str:
    """/proc/cpuinfo as Linux writes it: one block per logical CPU."""
    block = (
        "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Some CPU\n"
        f"flags\t\t: fpu sse sse2 avx avx2 fma {flags}\nbogomips\t: 4000.00\n\n"
    )
    return "".join(block.format(n=n) for n in range(2))


# (extra flags, what auto resolves to for efficientnet-lite0)
CPUS = {
    "cascade lake (avx512_vnni)": ("avx512f avx512_vnni", ("onnx", "int8")),
    "alder lake (avx_vnni)": ("avx_vnni", ("onnx", "int8")),
    "cooper lake / zen 4 (vnni, avx512_bf16)": (
        "avx512f avx512_vnni avx512_bf16",
        ("openvino", "bf16"),
    ),
    "sapphire rapids (amx)": ("avx512f amx_tile amx_int8 amx_bf16", ("openvino", "bf16")),
    "skylake (avx512, no vnni)": ("avx512f avx512bw", ("onnx", "fp32")),
    "haswell (avx2 only)": ("", ("onnx", "fp32")),
}


@pytest.mark.parametrize("cpu", CPUS, ids=list(CPUS))
def test_auto_follows_the_cpu_flags(cpu: str) -> None:
    extra, expected = CPUS[cpu]
    flags = parse_cpu_flags(cpuinfo(extra))
    assert "avx2" in flags
    choice = resolve("efficientnet-lite0", "auto", "auto", flags)
    assert (choice.runtime, choice.precision) == expected
    assert choice.reason.startswith("auto: ")
    # Deterministic: the same flags, the same answer, every process.
    assert resolve("efficientnet-lite0", "auto", "auto", flags) == choice


def test_auto_reasons_name_what_decided() -> None:
    vnni = parse_cpu_flags(cpuinfo("avx512_vnni"))
    assert "avx512_vnni" in resolve("efficientnet-lite0", "auto", "auto", vnni).reason
    assert "VNNI" in resolve("efficientnet-lite0", "auto", "auto", frozenset()).reason


def test_resnet50_int8_needs_an_explicit_setting() -> None:
    vnni = parse_cpu_flags(cpuinfo("avx512_vnni"))
    auto = resolve("resnet50", "auto", "auto", vnni)
    assert (auto.runtime, auto.precision) == ("onnx", "fp32")
    assert "not quality-gated" in auto.reason
    assert resolve("resnet50", "auto", "int8", vnni).precision == "int8"


def test_resnet50_bf16_needs_an_explicit_setting() -> None:
    both = parse_cpu_flags(cpuinfo("avx512_vnni avx512_bf16"))
    assert resolve("resnet50", "auto", "auto", both).tag == "onnx-fp32"
    assert resolve("resnet50", "auto", "bf16", both).tag == "openvino-bf16"


@pytest.mark.parametrize("runtime_", ["torch", "openvino"])
def test_a_set_runtime_takes_bf16_only_in_hardware(runtime_: RuntimeSetting) -> None:
    bf16 = parse_cpu_flags(cpuinfo("avx512_bf16"))
    assert resolve("efficientnet-lite0", runtime_, "auto", bf16).tag == f"{runtime_}-bf16"
    assert resolve("efficientnet-lite0", runtime_, "auto", frozenset()).tag == f"{runtime_}-fp32"


def test_openvino_bf16_without_bf16_instructions_is_refused() -> None:
    # It would run fp32 under a bf16 model id; torch emulates bf16 exactly.
    with pytest.raises(ConfigError, match="needs a CPU with bf16 instructions"):
        resolve("efficientnet-lite0", "openvino", "bf16", frozenset())
    bf16 = parse_cpu_flags(cpuinfo("avx512_bf16"))
    assert resolve("efficientnet-lite0", "openvino", "bf16", bf16).reason == "configured"


def test_an_explicit_precision_picks_its_runtime() -> None:
    none: frozenset[str] = frozenset()
    assert resolve("efficientnet-lite0", "auto", "bf16", none).runtime == "torch"
    bf16 = parse_cpu_flags(cpuinfo("avx512_bf16"))
    assert resolve("efficientnet-lite0", "auto", "bf16", bf16).runtime == "openvino"
    assert resolve("efficientnet-lite0", "auto", "fp32", none).runtime == "onnx"
    assert resolve("efficientnet-lite0", "auto", "int8", none).runtime == "onnx"
    # Explicit everything is taken as is; an emulated int8 says so.
    assert resolve("efficientnet-lite0", "torch", "fp32", none) == RuntimeChoice(
        "torch", "fp32", "configured"
    )
    assert "emulated" in resolve("efficientnet-lite0", "onnx", "int8", none).reason


@pytest.mark.parametrize(
    ("runtime_", "precision", "needle"),
    [
        ("onnx", "bf16", "ONNX Runtime has no bf16"),
        ("torch", "int8", "on ONNX Runtime only"),
        ("openvino", "int8", "on ONNX Runtime only"),
    ],
)
def test_pairs_no_runtime_implements_are_refused(
    runtime_: str, precision: str, needle: str
) -> None:
    env = {"ISE__MODEL__RUNTIME": runtime_, "ISE__MODEL__PRECISION": precision}
    with pytest.raises(ConfigError, match=needle):
        load_settings(ROOT / "config.yaml", environ=env)
    with pytest.raises(ConfigError, match=needle):
        ModelSettings.model_validate({"runtime": runtime_, "precision": precision})


def test_model_id_names_runtime_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: parse_cpu_flags(cpuinfo("avx512_vnni")))
    assert ModelSettings().model_id == "efficientnet-lite0:onnx-int8"
    assert ModelSettings(runtime="torch").model_id == "efficientnet-lite0:torch-fp32"
    assert ModelSettings(precision="bf16").model_id == "efficientnet-lite0:torch-bf16"
    assert ModelSettings(name="resnet50").model_id == "resnet50:onnx-fp32"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: parse_cpu_flags(cpuinfo("avx512_bf16")))
    assert ModelSettings().model_id == "efficientnet-lite0:openvino-bf16"
    assert ModelSettings(runtime="onnx").model_id == "efficientnet-lite0:onnx-fp32"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset[str]())
    assert ModelSettings().model_id == "efficientnet-lite0:onnx-fp32"


def test_collections_from_before_runtimes_were_named_were_torch() -> None:
    assert same_model("efficientnet-lite0:fp32", "efficientnet-lite0:torch-fp32")
    assert same_model("resnet50:bf16", "resnet50:torch-bf16")
    assert same_model("efficientnet-lite0:onnx-int8", "efficientnet-lite0:onnx-int8")
    assert not same_model("efficientnet-lite0:fp32", "efficientnet-lite0:onnx-fp32")
    assert not same_model("efficientnet-lite0:fp32", "resnet50:torch-fp32")
    assert not same_model("None", "efficientnet-lite0:torch-fp32")


def test_repo_config_leaves_both_to_auto() -> None:
    model = load_settings(ROOT / "config.yaml", environ={}).model
    assert (model.runtime, model.precision) == ("auto", "auto")
    assert model.model_id == f"{model.name}:{model.runtime_choice().tag}"


def test_this_machines_flags_are_read() -> None:
    runtime.cpu_flags.cache_clear()
    try:
        flags = runtime.cpu_flags()
    finally:
        runtime.cpu_flags.cache_clear()
    if runtime.CPUINFO.exists():
        assert flags, "no flags parsed from /proc/cpuinfo"
