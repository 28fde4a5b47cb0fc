"""Where and how tensors are computed: the device, the precision and the memory layout.

`train.precision: auto` measures instead of guessing. CPUs differ more than their
flags say: bf16 autocast was 1.6x faster than fp32 on one AMD EPYC (AVX512_BF16),
0.8x on an Intel Xeon with the same flag, and 0.1x on an AMD EPYC without it. So
on a CPU `auto` times a few training steps of the actual model in each precision
and memory layout and keeps the fastest; bf16 must win by a clear margin, because
it also changes the numbers. The choice is cached per machine, model and batch
size (in $XDG_CACHE_HOME/backdoorlab), so every stage on one machine makes the same
choice, and each stage prints and records what it used. On CUDA `auto` is bf16.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

BF16_MARGIN = 1.15  # bf16 only where it is at least this much faster than fp32


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def pick(cls, precision: str = "fp32", arch: str | None = None, batch_size: int = 128,
             threads: int = 0) -> "Runtime":
        """precision: fp32 | bf16 | auto (measured on a CPU, bf16 on CUDA); threads: see `use_threads`."""
        use_threads(threads)
        cuda = torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        if cuda:
            torch.backends.cudnn.benchmark = True
            return cls(device, torch.bfloat16 if precision in ("auto", "bf16") else None, True)
        if precision != "auto":
            return cls(device, torch.bfloat16 if precision == "bf16" else None, True)
        return measured_cpu_runtime(arch or "convnet", batch_size)

    @property
    def precision(self) -> str:
        return "fp32" if self.autocast is None else "bf16"

    def describe(self) -> dict:
        return {"device": self.device.type, "precision": self.precision, "channels_last": self.channels_last,
                "cpu": cpu_model(), "threads": torch.get_num_threads()}

    def amp(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def tensors(self, x: np.ndarray, y: np.ndarray | None = None):
        """uint8 images and int64 labels onto the device, once."""
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return xt if y is None else (xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device))

    def model_input(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
        out = xb.permute(0, 3, 1, 2).float().div_(255.0)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()


def use_threads(threads: int) -> None:
    """Compute on `threads` CPU threads (`train.threads`); 0 leaves torch's default, one per core.

    A CPU result depends on the thread count: a reduction split over two threads rounds
    differently from one over one. Fixing it in params makes a configuration's numbers the
    same however its stages are run (one at a time on every core, or side by side on one
    core each, which is faster on a small machine: `python -m backdoorlab.parallel --repro`)."""
    if threads > 0:
        torch.set_num_threads(threads)


def cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (what every timing is printed beside)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_family_model() -> str | None:
    """'25/17' for an AMD EPYC 9004 (Zen 4): virtual machines often name every EPYC just 'AMD EPYC', and
    two such machines (Zen 3 with AVX2 only, Zen 4 with AVX512_BF16) differed 3x in bf16 speed."""
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    return f"{family}/{model}" if family and model else None


# Environment variables that change which kernels torch and oneDNN run on the same CPU (and so which
# precision is faster): a machine limited to AVX2 this way is, for `auto`, another machine.
KERNEL_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def kernel_isa() -> str:
    """The vector instruction set torch's own CPU kernels use here ('AVX512', 'AVX2', ...) and any oneDNN limit."""
    limits = ",".join(f"{name}={os.environ[name]}" for name in KERNEL_ISA_VARIABLES if os.environ.get(name))
    return torch.backends.cpu.get_cpu_capability() + (f" ({limits})" if limits else "")


def _cache_file(arch: str, batch_size: int) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backdoorlab"
    key = (f"{cpu_model()}|{cpu_family_model()}|{kernel_isa()}|{os.cpu_count()}|{torch.get_num_threads()}"
           f"|{torch.__version__}|{arch}|{batch_size}")
    return root / f"runtime-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def step_speed(arch: str, batch_size: int, autocast: torch.dtype | None, channels_last: bool,
               steps: int = 3) -> float:
    """Images per second of a training step of `arch` on random 32x32 RGB images, after one warm-up step."""
    from .models import Classifier

    torch.manual_seed(0)
    model = Classifier(arch, 3, 10)
    x = torch.rand(batch_size, 3, 32, 32)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def measure_cpu_options(arch: str, batch_size: int) -> dict:
    speeds = {f"{p}{'_channels_last' if cl else ''}": step_speed(arch, batch_size, dt, cl)
              for p, dt in (("fp32", None), ("bf16", torch.bfloat16)) for cl in (False, True)}
    fp32 = max(("fp32", "fp32_channels_last"), key=speeds.get)
    bf16 = max(("bf16", "bf16_channels_last"), key=speeds.get)
    best = bf16 if speeds[bf16] >= BF16_MARGIN * speeds[fp32] else fp32
    return {"choice": best, "images_per_s": {k: round(v, 1) for k, v in speeds.items()}}


def measured_cpu_runtime(arch: str, batch_size: int) -> Runtime:
    cache = _cache_file(arch, batch_size)
    try:
        choice = json.loads(cache.read_text())["choice"]
    except (OSError, ValueError, KeyError):
        measured = measure_cpu_options(arch, batch_size)
        choice = measured["choice"]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"cpu": cpu_model(), "cpu_family_model": cpu_family_model(),
                                   "kernel_isa": kernel_isa(), "arch": arch,
                                   "batch_size": batch_size, **measured}))
        os.replace(tmp, cache)
    return Runtime(torch.device("cpu"), torch.bfloat16 if choice.startswith("bf16") else None,
                   choice.endswith("channels_last"))
