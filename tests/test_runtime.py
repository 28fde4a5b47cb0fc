"""Where tensors are computed: explicit precisions, and `auto` measuring once per machine, model and batch size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoorlab import runtime
from backdoorlab.runtime import BF16_MARGIN, Runtime


@pytest.fixture
def cpu_only(monkeypatch, tmp_path):
    """No GPU, and a fresh cache folder for measured choices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def test_explicit_precisions_are_taken_as_given(cpu_only):
    assert Runtime.pick("fp32").precision == "fp32"
    assert Runtime.pick("bf16").autocast == torch.bfloat16


def test_train_threads_fixes_the_thread_count_and_zero_leaves_torch_s_own():
    before = torch.get_num_threads()
    try:
        Runtime.pick("fp32", threads=1)
        assert torch.get_num_threads() == 1 and Runtime.pick("fp32").describe()["threads"] == 1
        torch.set_num_threads(2)
        Runtime.pick("fp32", threads=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_measures_once_and_every_later_stage_reuses_the_choice(cpu_only, monkeypatch):
    calls = []

    def measure(arch, batch_size):
        calls.append((arch, batch_size))
        return {"choice": "bf16_channels_last", "images_per_s": {}}

    monkeypatch.setattr(runtime, "measure_cpu_options", measure)
    first = Runtime.pick("auto", "convnet", 64)
    again = Runtime.pick("auto", "convnet", 64)
    assert calls == [("convnet", 64)]
    assert first == again == Runtime(torch.device("cpu"), torch.bfloat16, True)
    Runtime.pick("auto", "convnet", 128)  # another batch size is another measurement
    assert calls == [("convnet", 64), ("convnet", 128)]


def test_two_cpus_sharing_a_name_but_not_a_family_and_model_measure_apart(cpu_only, monkeypatch):
    """Virtual machines call a Zen 3 (AVX2) and a Zen 4 (AVX512_BF16) both 'AMD EPYC'; bf16 is 10x slower on one."""
    calls = []
    monkeypatch.setattr(runtime, "measure_cpu_options", lambda arch, batch: calls.append(arch) or {"choice": "fp32"})
    for family_model in ("25/1", "25/17", "25/1"):
        monkeypatch.setattr(runtime, "cpuinfo_field", lambda name, fm=family_model: {
            "model name": "AMD EPYC", "cpu family": fm.split("/")[0], "model": fm.split("/")[1]}.get(name))
        Runtime.pick("auto", "convnet", 64)
    assert calls == ["convnet", "convnet"]  # the third pick is the first machine's, cached


@pytest.mark.parametrize("choice,autocast,channels_last", [("fp32", None, False), ("bf16", torch.bfloat16, False),
                                                            ("fp32_channels_last", None, True)])
def test_a_cached_choice_sets_precision_and_memory_layout(cpu_only, monkeypatch, choice, autocast, channels_last):
    monkeypatch.setattr(runtime, "measure_cpu_options", lambda arch, batch: {"choice": choice})
    rt = Runtime.pick("auto", "convnet", 32)
    assert (rt.autocast, rt.channels_last) == (autocast, channels_last)


@pytest.mark.parametrize("bf16_speedup,expected", [(BF16_MARGIN * 0.95, "fp32_channels_last"),
                                                   (BF16_MARGIN * 1.05, "bf16")])
def test_bf16_is_chosen_only_when_clearly_faster_than_the_fastest_fp32(monkeypatch, bf16_speedup, expected):
    fp32 = {False: 100.0, True: 120.0}  # channels_last is the faster fp32 layout here

    def speed(arch, batch_size, autocast, channels_last, steps=3):
        if autocast is None:
            return fp32[channels_last]
        return 120.0 * bf16_speedup if not channels_last else 50.0

    monkeypatch.setattr(runtime, "step_speed", speed)
    assert runtime.measure_cpu_options("convnet", 32)["choice"] == expected


def test_model_input_turns_uint8_nhwc_into_unit_float_nchw():
    rt = Runtime(torch.device("cpu"), channels_last=False)
    x = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    x[1, 0, 0, 2] = 255
    out = rt.model_input(rt.tensors(x))
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    assert out[1, 2, 0, 0] == 1.0 and out.sum() == 1.0


def test_limiting_the_kernels_instruction_set_is_another_machine_for_auto(cpu_only, monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 make a Zen 4 compute like an AVX2 CPU, where bf16 is slow."""
    calls = []
    monkeypatch.setattr(runtime, "measure_cpu_options", lambda arch, batch: calls.append(arch) or {"choice": "fp32"})
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    Runtime.pick("auto", "convnet", 64)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    Runtime.pick("auto", "convnet", 64)
    Runtime.pick("auto", "convnet", 64)
    assert calls == ["convnet", "convnet"]
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in runtime.kernel_isa()
