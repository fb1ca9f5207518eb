"""Where and how a trial computes: the device (placed per job on a multi-GPU box, checked
against what exists), its precision, determinism, and what a training's time depends on.

Every CUDA-only branch here is plain logic on ``torch.cuda``'s answers, so the tests exercise it
on a CPU by faking those answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform

import torch

from lottery.config import TrainConfig, bad_value, choice
from lottery.errors import LotteryError

log = logging.getLogger("lottery")

# cuBLAS is deterministic only with a fixed workspace, set before CUDA starts (every trial imports this first).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def check_device(name: str) -> None:
    """auto, cpu, cuda or cuda:N of a device that exists."""
    if name not in ("auto", "cpu") and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise bad_value("device", name, "use auto, cpu or cuda[:N]")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LotteryError(f"device={name} but no CUDA device is available; use device=cpu")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise bad_value("device", name, f"this machine has {count} CUDA device(s): cuda:0 .. cuda:{count - 1}")


def pick_device(name: str, job: int = 0) -> torch.device:
    """The device a trial runs on: ``auto`` is CUDA when there is one, job k of a multirun on
    ``cuda:{k mod devices}`` (so ``JOBS=N`` spreads over the box's GPUs), else the CPU."""
    if name == "auto":
        name = f"cuda:{job % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def model_of(device: torch.device) -> str:
    """What a device's speed depends on: a GPU's model (not its index), a CPU and its threads."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else name_of(device)


def name_of(device: torch.device) -> str:
    """The device by its name, e.g. ``cuda:1 (NVIDIA H200)`` or ``cpu (AMD EPYC ..., 2 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# torch's fused attention backends on CUDA, (switch, state): their backward accumulates atomically.
FUSED_ATTENTION = ((torch.backends.cuda.enable_flash_sdp, torch.backends.cuda.flash_sdp_enabled),
                   (torch.backends.cuda.enable_mem_efficient_sdp, torch.backends.cuda.mem_efficient_sdp_enabled),
                   (torch.backends.cuda.enable_cudnn_sdp, torch.backends.cuda.cudnn_sdp_enabled))


def configure(device: torch.device, t: TrainConfig) -> None:
    """How a trial computes, set once when it opens (before scoring, which a trial reusing a
    stored dense network does first), for the whole process.

    The trial's GPU is made current (streams, graphs and allocations default to it). With
    ``train.deterministic``: deterministic algorithms, strict (an op without a deterministic
    implementation stops the trial rather than warn while the run says deterministic), no cuDNN
    autotuning (whose pick varies between runs and whose workspace would count as memory), and
    on CUDA attention computed by the math backend, the one whose backward is deterministic
    (flash and memory-efficient attention accumulate their gradients atomically). Without it,
    cuDNN benchmarks its convolutions and every attention backend is allowed. TF32 stays off:
    the recipe is fp32 or bf16. Fresh tensors are not filled with NaN, which torch does by default
    under deterministic algorithms to expose reads of uninitialized memory: the fill cost 13 % of
    a bf16 ResNet32 step on a CPU (a memset per activation), and a training with it ends
    bit-identical to one without it (tests on the CPU and the GPU), so no step reads unwritten
    memory."""
    deterministic = bool(t.deterministic)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.utils.deterministic.fill_uninitialized_memory = False
    if device.type == "cuda":
        if device.index is not None:  # (an index-less cuda is the current device already)
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        for enable, _ in FUSED_ATTENTION:
            enable(not deterministic)


@contextlib.contextmanager
def restored():
    """The process-wide settings ``configure`` changes (determinism and its fill, cuDNN, TF32,
    attention backends) put back as they were after the block: for code that configures for a
    while, a benchmark's reference or a test, inside a process that goes on."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.utils.deterministic.fill_uninitialized_memory)
    attention = [(enable, enabled()) for enable, enabled in FUSED_ATTENTION]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32, torch.utils.deterministic.fill_uninitialized_memory) = saved[2:]
        for enable, was in attention:
            enable(was)


def determinism(device: torch.device) -> str:
    """What holds now (the run's ``deterministic`` tag): ``strict`` (with the attention backend
    on CUDA), ``warn-only`` or ``off``."""
    if not torch.are_deterministic_algorithms_enabled():
        return "off"
    held = "warn-only" if torch.is_deterministic_algorithms_warn_only_enabled() else "strict"
    if device.type == "cuda":
        fused = any(enabled() for _, enabled in FUSED_ATTENTION)
        held += ", attention: " + ("flash/memory-efficient allowed" if fused else "math")
    return held


def not_deterministic(e: RuntimeError, device: torch.device) -> LotteryError | None:
    """An op that has no deterministic implementation on this device, as one line; None for any other error."""
    text = str(e)
    if "does not have a deterministic implementation" not in text:
        return None
    op = text.split(" does not have", 1)[0].strip().split()[-1]
    return LotteryError(f"train.deterministic=true but {op} has no deterministic implementation on {device.type}: "
                        "set train.deterministic=false (runs may then differ in their last bits)")


@contextlib.contextmanager
def exact_matmuls():
    """Full fp32 matmuls and convolutions (no TF32 on Ampere and later): near-tied scores rank
    the same on every GPU as on a CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 matmuls and convolutions natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def precision(device: torch.device, amp) -> str:
    """The dtype training computes in on this device: ``bf16`` or ``fp32`` (``amp=auto`` resolved)."""
    amp = choice(amp)
    if amp == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return "bf16" if amp == "bf16" else "fp32"


def autocast(device: torch.device, amp) -> contextlib.AbstractContextManager:
    """bf16 autocast (loss, softmax and BatchNorm stay fp32, as autocast keeps them) or nothing."""
    if precision(device, amp) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conditions(device: torch.device, t: TrainConfig, jobs: int) -> str:
    """What a training's wall time and energy depend on besides the network: recorded with every
    training, so that two trainings' times and energies are compared only when these match."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return (f"device={device.type}:{name.replace(' ', '_')} threads={torch.get_num_threads()} "
            f"amp={precision(device, t.amp)} channels_last={t.channels_last} compile={t.compile} "
            f"cuda_graph={t.cuda_graph} deterministic={t.deterministic} jobs={jobs}")
