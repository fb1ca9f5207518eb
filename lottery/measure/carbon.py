"""Energy and CO2 of a training phase with codecarbon, offline (no network needed).

A failure of codecarbon (an unwritable folder, a platform it cannot read) is a warning, never
the end of a trial: the phase still runs and the other metrics are still logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pynvml
import torch

log = logging.getLogger("lottery")

# codecarbon's power sources that read real counters; anything else is a model-based estimate.
MEASURED = {"intel_rapl", "intel_power_gadget", "windows_emi", "nvml"}


@dataclass
class Footprint:
    co2_kg: float | None = None
    energy_kwh: float | None = None
    power: str = "unavailable"  # measured | estimated | unavailable
    hardware: str = ""

    def metrics(self) -> dict:
        return {"co2_kg": self.co2_kg, "energy_kwh": self.energy_kwh}

    def tags(self, resumed_from: int | None) -> dict:
        """Where the numbers come from; a resumed phase's footprint covers only the epochs after
        the resumption."""
        return {"power_source": self.power, "power_hardware": self.hardware,
                "co2_covers": "all" if resumed_from is None else f"epochs after {resumed_from} (resumed)"}


def _start(cfg, label: str, jobs: int, device):
    """A started offline tracker, or None (with a warning) when codecarbon cannot start."""
    try:
        os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")  # read when codecarbon is imported
        from codecarbon import OfflineEmissionsTracker

        out = Path(cfg.carbon_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        tracker = OfflineEmissionsTracker(
            country_iso_code=cfg.country, output_dir=str(out), project_name=label, log_level="error",
            measure_power_secs=cfg.power_interval_s, save_to_file=True,
            tracking_mode="process" if jobs > 1 else "machine", **gpu_ids(device))
        tracker.start()
        return tracker
    except Exception as e:  # noqa: BLE001 - any failure of the tracker is only a warning
        log.warning("codecarbon could not start for %s (%s: %s); CO2 not measured", label, type(e).__name__, e)
        return None


def _stop(tracker, result: Footprint, label: str) -> None:
    """Stop the tracker and fill ``result`` (left empty, with a warning, if codecarbon fails)."""
    try:
        kg = tracker.stop()
        data = tracker.final_emissions_data
        if kg is None or data is None:
            raise RuntimeError("no emissions data (see codecarbon's log)")
        hardware = getattr(tracker, "_hardware", [])
        modes = {getattr(h, "_mode", "nvml" if type(h).__name__ == "GPU" else None) for h in hardware}
        result.co2_kg, result.energy_kwh = float(kg), float(data.energy_consumed)
        result.power = "measured" if modes & MEASURED else "estimated"
        result.hardware = ", ".join(str(h) for h in hardware)
    except Exception as e:  # noqa: BLE001
        log.warning("codecarbon failed for %s (%s: %s); CO2 not measured", label, type(e).__name__, e)


def gpu_ids(device) -> dict:
    """codecarbon's GPUs to read: the trial's own (every GPU of the box is summed otherwise), as
    the NVML index codecarbon matches (its UUID matching strips the letters of the ``GPU-``
    prefix and never matches). NVML counts every GPU of the box in PCI order, torch only the
    visible ones (``CUDA_VISIBLE_DEVICES``): the device's UUID, which both know, maps one to the
    other; without NVML, the device's entry in CUDA_VISIBLE_DEVICES."""
    if device is None or device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"gpu_ids": [nvml_index(index)]}


def nvml_index(index: int) -> int:
    """The NVML index of torch's ``cuda:index``: a whole GPU's, or for a MIG slice its GPU's."""
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    if uuid:
        try:
            pynvml.nvmlInit()
            try:
                return int(pynvml.nvmlDeviceGetIndex(_nvml_gpu(uuid)))
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return int(visible[index]) if index < len(visible) and visible[index].isdigit() else index


def _nvml_gpu(uuid: str):
    """The NVML handle of the GPU that CUDA's device UUID (no prefix) names: NVML prefixes a
    whole GPU's UUID with ``GPU-`` and a MIG slice's with ``MIG-``."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except pynvml.NVMLError_NotFound:
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"MIG-{uuid}")
    if pynvml.nvmlDeviceIsMigDeviceHandle(handle):
        handle = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    return handle


@contextlib.contextmanager
def tracked(cfg, label: str, jobs: int = 1, device=None):
    """Yields a Footprint filled in when the block exits (left empty if codecarbon fails).

    With ``jobs > 1`` trials at once on this machine, codecarbon follows this process alone
    (``tracking_mode="process"``) for CPU and RAM; a GPU is read as a whole device, the trial's
    own only (``gpu_ids``), so beside other trials on it its energy is shared: such phases are
    compared only under equal conditions with one trial at a time (``lottery.measure.metrics``). The
    tracker is stopped however the block exits.
    """
    result = Footprint()
    tracker = _start(cfg, label, jobs, device) if cfg.carbon else None
    try:
        yield result
    except BaseException:
        if tracker is not None:
            with contextlib.suppress(Exception):
                tracker.stop()
        raise
    if tracker is not None:
        _stop(tracker, result, label)
