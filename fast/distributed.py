"""RAC on several processes with torch.distributed (spec DIST-*): gloo on CPU, NCCL on GPU.

Nothing here is a transport of its own: every exchange is a torch.distributed collective.
A run is distributed when the default process group is initialised with more than one rank
(``rac prune`` initialises it when ``torchrun`` launched it: ``WORLD_SIZE`` > 1); otherwise
``world()`` is ``None`` and Phase I and II take exactly the one-process code path.

What each phase shares (docs/spec.md, DIST):

- Phase I: the batches of prompts are those of one process (``batch_size`` prompts in prompt
  order), dealt round-robin to the ranks, one round of K batches at a time; every rank receives
  every batch's traces (``all_gather_object``) and applies the token budget to them in prompt order
  exactly as one process does, so every rank holds the one-process calibration set.
- Phase II: the chunks of one process are dealt round-robin (``shard``); each rank forwards and
  propagates its own chunks; each chunk's float32 terms x^T x go (``send``/``recv``) to the owner rank
  of their input group (``owners``: longest-processing-time bin packing of the pruning cost), which adds
  them in the one-process order, so its H is bitwise the one-process H (a ``reduce`` of per-rank partial
  sums would send less but add in another order, and a near-tie of the mask could flip: measured on the
  toy reasoner, 12 mask entries); the owner prunes, and the pruned weights and report rows are broadcast.
- Failures: an error on the rank that prunes is sent to every rank with the result (all raise it,
  naming that rank); a rank that dies makes the collectives of the others fail (gloo: the connection
  is closed) or time out (``RAC_DIST_TIMEOUT`` seconds, default 1800), and ``DistributedError`` names
  the step; ``torchrun`` then stops every rank (SIGTERM, which a rank reports as a ``DistributedError``
  naming the last collective it entered) and prints the failing rank and its exit code.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

#: Seconds a collective waits for the other ranks before the job is ended (``RAC_DIST_TIMEOUT``).
DEFAULT_TIMEOUT_S = 1800


class DistributedError(RuntimeError):
    """A collective that failed because another rank failed or did not answer; the message names the step."""


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    backend: str

    @property
    def leader(self) -> bool:
        return self.rank == 0


def world():
    """The process group as a ``World`` when torch.distributed is initialised with more than one rank, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return World(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def timeout_s() -> float:
    raw = os.environ.get("RAC_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"RAC_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def launched() -> bool:
    """True when a launcher (torchrun) asked for more than one process (``WORLD_SIZE`` > 1)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw) > 1
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer (set by torchrun), got {raw!r}") from None


def init_from_env(device: str = "cpu") -> World:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the compute device is CUDA, else gloo."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    if world() is not None:
        install_sigterm_handler()
    return world()


def shard(items, w) -> list:
    """The indices of ``items`` this rank handles: round-robin (i % K == rank); all of them without a world."""
    if w is None:
        return list(range(len(items)))
    return [i for i in range(len(items)) if i % w.size == w.rank]


#: The step of the last collective this rank entered (named when torchrun stops the rank, ``_on_sigterm``).
_LAST_STEP: list = []


def _on_sigterm(signum, frame):
    """torchrun ends every rank with SIGTERM as soon as one rank fails, which can reach this rank before its own
    next collective fails: say which rank was stopped and where, as a failed collective does (DIST-4)."""
    w = world()
    rank = f"rank {w.rank}" if w is not None else "this rank"
    last = f" after the collective '{_LAST_STEP[0]}'" if _LAST_STEP else " before its first collective"
    raise DistributedError(f"{rank}: stopped by SIGTERM{last}; torchrun stops every rank when one fails: its "
                           "summary names the failed rank")


def install_sigterm_handler() -> None:
    """In the main thread of a several-rank run: SIGTERM raises ``DistributedError`` (``_on_sigterm``)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _collective(what: str, fn, *args, **kwargs):
    """Run one collective; a failure (a rank died, closed its connection or timed out) is a DistributedError."""
    _LAST_STEP[:] = [what]
    try:
        return fn(*args, **kwargs)
    except DistributedError:
        raise
    except (RuntimeError, ConnectionError, OSError) as exc:
        w = world()
        rank = f"rank {w.rank}" if w is not None else "this rank"
        raise DistributedError(
            f"{rank}: the collective '{what}' failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            "another rank has failed or stopped answering: its own error (and torchrun's summary) names it"
        ) from exc


def all_gather(obj, what: str) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    _collective(what, dist.all_gather_object, out, obj)
    return out


def broadcast(obj, src: int, what: str):
    """``obj`` of rank ``src`` on every rank (picklable)."""
    import torch.distributed as dist

    box = [obj]
    _collective(what, dist.broadcast_object_list, box, src=src)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor, src: int, what: str) -> None:
    import torch.distributed as dist

    _collective(what, dist.broadcast, tensor, src=src)


def send(tensor: torch.Tensor, dst: int, what: str) -> None:
    import torch.distributed as dist

    _collective(what, dist.send, tensor.contiguous(), dst=dst)


def recv(tensor: torch.Tensor, src: int, what: str) -> None:
    import torch.distributed as dist

    _collective(what, dist.recv, tensor, src=src)


def barrier(what: str) -> None:
    """Wait for every rank; with gloo, a rank that does not arrive within the timeout is named
    (``monitored_barrier``); with NCCL, a plain barrier under the process group's timeout."""
    import torch.distributed as dist

    if str(dist.get_backend()) == "gloo":
        _collective(what, dist.monitored_barrier, timeout=datetime.timedelta(seconds=timeout_s()),
                    wait_all_ranks=True)
    else:
        _collective(what, dist.barrier)


def finish(what: str = "end of Phase II") -> None:
    """This process's last step in the group it initialised (``init_from_env``): a barrier, so that no rank
    closes its connections while another still reads from them (a broadcast's root returns before the others
    have read), then ``destroy_process_group``. Without it a rank that exited while its peers still held the
    group could abort inside gloo ("terminate called without an active exception", SIGABRT: DIST-3 on a
    2-core CI machine, 2026-12-02). A no-op without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        barrier(what)
        dist.destroy_process_group()


def owners(costs: dict, size: int) -> dict:
    """key -> owner rank: longest processing time first, each to the least loaded rank (ties: lowest rank).
    Deterministic (every rank computes the same map from the same costs)."""
    load = [0] * size
    out = {}
    for key in sorted(costs, key=lambda k: (-costs[k], str(k))):
        rank = min(range(size), key=lambda r: (load[r], r))
        out[key] = rank
        load[rank] += costs[key]
    return out


def group_cost(linears: dict, names: list) -> int:
    """Pruning cost of one input group: a factorisation (in^3) and one OBS sweep per member (out x in^2)."""
    n = linears[names[0]].in_features
    return n**3 + sum(linears[m].out_features for m in names) * n**2


def raise_remote(error, owner: int) -> None:
    """Re-raise on every rank an error that rank ``owner`` sent as (type name, message)."""
    if error is None:
        return
    kind, message = error
    types = {"FloatingPointError": FloatingPointError, "ValueError": ValueError, "TypeError": TypeError}
    exc_type = types.get(kind, RuntimeError)
    raise exc_type(f"{message} (on rank {owner}, which pruned this group)")
