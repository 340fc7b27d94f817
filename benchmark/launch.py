"""Multi-process stages: ``casdm train`` / ``casdm sample`` re-run themselves under ``accelerate launch``
when params.yaml asks for more than one process, so ``dvc repro`` uses every GPU of a box with the
same dvc.yaml commands (and CI tests the same path on CPUs, with gloo).
"""
from __future__ import annotations

import os
import subprocess
import sys


def inside_launch() -> bool:
    """True in a process started by ``accelerate launch`` / torchrun (it sets the rank variables)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_command(num_processes: int, args: list[str]) -> tuple[list[str], dict]:
    """The ``accelerate launch`` command line and environment that run ``casdm *args`` on
    ``num_processes`` processes: one per GPU when there are enough GPUs, else on the CPU with gloo
    (``ACCELERATE_USE_CPU``) and the cores shared out between the processes."""
    import torch

    env = dict(os.environ)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if torch.cuda.is_available() and torch.cuda.device_count() >= num_processes:
        cmd += ["--num_cpu_threads_per_process", "1"]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // num_processes))]
    # the trainer sets its own mixed precision from params.yaml; "no" here only silences the launcher
    return [*cmd, "-m", "benchmark.cli", *map(str, args)], env


def relaunch(num_processes: int, args: list[str]) -> int | None:
    """Run ``casdm *args`` under ``accelerate launch`` and return its exit status; ``None`` when this
    process should do the work itself (one process asked for, or already one of the launched ones)."""
    if num_processes <= 1 or inside_launch():
        return None
    cmd, env = launch_command(num_processes, args)
    return subprocess.run(cmd, env=env).returncode
