"""torchrun's workers: every environment variable torchrun sets that this tool reads (read
here only), joining the workers' process group, waiting for all of them at the end, and the
command line that started (or resumes) this process. Standard library at import; torch's
distributed package only once there are several workers.
"""

from __future__ import annotations

import datetime
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Worker:
    """This process's place among torchrun's workers (rank 0 of 1 without torchrun): every
    variable torchrun sets that this tool reads, read here only."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restarts: int = 0  # how often torchrun restarted the workers (they resume)
    nodes: str = "1"
    per_node: str = "?"
    master: tuple[str, int] = ("", 0)
    agent_store: bool = False  # torchrun's agent hosts the store; no worker may

    @classmethod
    def from_env(cls) -> Worker:
        """Read the variables torchrun sets."""
        env = os.environ
        return cls(
            int(env.get("RANK", 0)),
            int(env.get("WORLD_SIZE", 1)),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
            env.get("GROUP_WORLD_SIZE") or "1",
            env.get("LOCAL_WORLD_SIZE") or "?",
            (env.get("MASTER_ADDR", ""), int(env.get("MASTER_PORT", 0))),
            env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
        )

    def join(self, device: torch.device) -> None:
        """Join the other workers' process group (nothing to do alone)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        # the final barrier waits for the slowest share, which may take hours; a dead worker
        # makes torchrun stop (or restart) the others, so the long timeout cannot hang
        timeout = datetime.timedelta(days=30)
        store = dist.TCPStore(
            *self.master,
            self.world,
            is_master=self.rank == 0 and not self.agent_store,
            timeout=timeout,
        )
        # torchrun's store outlives a restart: keys of the killed round must not be read again
        round_store = dist.PrefixStore(f"restart{self.restarts}", store)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=round_store,
            rank=self.rank,
            world_size=self.world,
            timeout=timeout,
        )

    def wait_for_all(self) -> None:
        """Wait until every worker has trained its share, then leave the group."""
        if self.world == 1:
            return
        import torch.distributed as dist

        # the barrier blocks inside gloo, where no Python handler runs: let a signal end the
        # process as the OS does (this worker's runs are all written by now)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        dist.barrier()
        dist.destroy_process_group()


def command_line(argv: Sequence[str]) -> str:
    """The command that ran this process, as torchrun or plain python."""
    w = Worker.from_env()
    launcher = "python"
    if w.world > 1:
        launcher = f"torchrun --nnodes {w.nodes} --nproc_per_node {w.per_node}"
    return f"{launcher} main.py {shlex.join(argv)}".rstrip()


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues this process's runs where they stopped: --overwrite, which
    started them afresh, would refuse the --resume that continues them."""
    kept = [word for word in argv if word != "--overwrite"]
    return command_line(kept if "--resume" in kept else [*kept, "--resume"])
