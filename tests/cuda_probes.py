"""What the CUDA tests (tests/gpu/) check about a launch: that it reads nothing back from the device."""

from __future__ import annotations


def launch_behind_queued_work(backend, batch) -> tuple[object, bool]:
    """Launches `batch` behind a second of GPU work queued on the same stream, with torch's sync
    debug mode raising on any read-back; returns the launched batch and whether that earlier work
    was still running when the launch returned (it is, unless the launch waited for it)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # GPU clock cycles: about a second on an H100/H200
    queued_before = torch.cuda.Event()
    queued_before.record()
    torch.cuda.set_sync_debug_mode("error")
    try:
        launched = backend.launch(*batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return launched, not queued_before.query()
