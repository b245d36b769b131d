"""Process-level performance settings for the CPU path: the allocator and the threads.

Allocator (:func:`tune_cpu_allocator`)
--------------------------------------
PyTorch has no caching allocator on the CPU: every activation tensor of a forward pass is a
fresh ``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB by default)
with ``mmap`` and gives them back with ``munmap`` on free, so each batch faults in and zeroes
its activations page by page again, and a forward can spend more time in the kernel than in
the convolutions. Raising the mmap and trim thresholds keeps freed blocks in the heap for
reuse. The cost is that freed memory stays with the process (its resident size keeps the
peak) instead of going back to the system. ``CONTRAHASH_MALLOC_TUNING=0`` turns it off.

Threads (:func:`apply_thread_policy`, :func:`thread_settings`)
-------------------------------------------------------------
torch (its own ``torch/lib/libgomp.so.1``, which MKL uses too) and faiss-cpu (a bundled
``faiss_cpu.libs/libgomp-*.so``, plus an OpenMP OpenBLAS) run their parallel loops on GNU
OpenMP thread teams. When torch is imported first, faiss' ``omp_*``/``GOMP_*`` calls bind to
torch's libgomp (one runtime); faiss first, two runtimes. Both read ``OMP_NUM_THREADS``,
``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` once, when loaded. By default an idle worker
*spins* (up to 300,000 iterations) before sleeping. Every parallel region is split statically
over all threads, so on a machine shared with another CPU-bound process a region waits for its
descheduled thread while the others spin in its way: spinning, not the work, then dominates
the wall time. A passive wait removes that collapse but makes every parallel region wake its
sleeping threads through the kernel, which costs the small-op paths (head training from
cached features, faiss search) much of their idle speed; a short spin (10,000 iterations, tens
of microseconds) keeps both.

Hence the default: **every CPU of the affinity mask, GOMP_SPINCOUNT=10000** — deterministic
per machine (the thread count changes results at a fixed seed, so it must not depend on
momentary load) — and one thread for tiny models (``contrahash demo`` runs on one unless
asked). The setting only takes effect if made before torch (and faiss) are imported;
:func:`thread_settings` records whether it did. The measurements behind these choices are in
docs/results.md ("Threads under contention", "The feature cache: cost and resolution").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any

#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: 2 GiB − 1, the largest value mallopt's int argument takes
_THRESHOLD = 2**31 - 1

_tuned: bool | None = None

#: the default thread count; None = every CPU of the affinity mask (see the module docs)
DEFAULT_THREADS: int | None = None
#: libgomp's spin count set when the user set no wait policy: spin this many iterations
#: (tens of microseconds), then sleep (see the module docs for the measurements)
SPIN_COUNT = "10000"


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in glibc's heap (see the module docs); True when applied.

    Idempotent; does nothing (False) off Linux/glibc or with ``CONTRAHASH_MALLOC_TUNING=0``.

    >>> isinstance(tune_cpu_allocator(), bool)
    True
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("CONTRAHASH_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or no libc handle: leave the allocator alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _tuned


# ----------------------------------------------------------------------------------------------
# Thread policy (see the module docs)

#: the thread-related environment variables this module reads, sets or records
THREAD_ENV = ("CONTRAHASH_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
              "KMP_BLOCKTIME", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: the values apply_thread_policy put into os.environ itself (so a later call may change them,
#: while anything else found there was set by the user and wins)
_ours: dict[str, str] = {}
_applied: ThreadPolicy | None = None


@dataclass(frozen=True)
class ThreadPolicy:
    """What :func:`apply_thread_policy` decided and did."""

    #: intra-op threads for torch and the OpenMP thread count for faiss
    threads: int
    #: where ``threads`` came from: "argument", "CONTRAHASH_THREADS", "OMP_NUM_THREADS"
    #: (set by the user), "torch" (its count when imported before the first call) or "default"
    source: str
    #: how idle OpenMP threads wait: "GOMP_SPINCOUNT=10000" (the default), or the user's
    #: OMP_WAIT_POLICY / GOMP_SPINCOUNT
    wait_policy: str | None
    #: False when torch was imported before the policy first ran: its OpenMP runtime had
    #: already read the environment, so the wait policy does not apply to torch
    wait_policy_effective: bool
    #: variables this call wrote to os.environ
    env_set: dict[str, str] = field(default_factory=dict)
    #: runtime calls made on already imported libraries ("torch", "torch_interop", "faiss")
    runtime_set: tuple[str, ...] = ()


def cpu_affinity_count() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _parse_threads(value: object, where: str) -> int | None:
    """A thread count from an argument or variable; None means "the default"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}={value!r}: expected a positive integer or 'auto'")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("", "auto", "0"):
            return None
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"{where}={value!r}: expected a positive integer or 'auto'") from None
    if n == 0:
        return None
    if n < 0:
        raise ValueError(f"{where}={value!r}: expected a positive integer or 'auto'")
    return n


def _user_set(name: str) -> str | None:
    """The variable's value when it was set by the user (not by this module), else None."""
    value = os.environ.get(name)
    if value is None or _ours.get(name) == value:
        return None
    return value


def _set_env(name: str, value: str, done: dict[str, str], force: bool = False) -> None:
    if (_user_set(name) is not None and not force) or os.environ.get(name) == value:
        return
    os.environ[name] = value
    _ours[name] = value
    done[name] = value


def default_threads() -> int:
    """The thread count used when nothing asks for another: see the module docs."""
    return DEFAULT_THREADS if DEFAULT_THREADS is not None else cpu_affinity_count()


def apply_thread_policy(threads: int | str | None = None) -> ThreadPolicy:
    """Set the OpenMP/torch/faiss thread settings for this process; returns what it did.

    Thread count, first found: ``threads`` (an int, or ``None``/``"auto"``/0 for "not
    given"); the count an earlier call chose (so a library call without a count keeps what the
    CLI's ``--threads`` set); ``CONTRAHASH_THREADS``; a user-set ``OMP_NUM_THREADS``; torch's
    current count when torch was imported before (the caller may have set it); the default
    (:func:`default_threads`). The wait policy: ``GOMP_SPINCOUNT=10000`` (spin briefly, then
    sleep) unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``. ``OMP_NUM_THREADS`` is set to the chosen count;
    variables the user set are not overwritten, with one exception: an explicit ``threads``
    or ``CONTRAHASH_THREADS`` replaces a user-set ``OMP_NUM_THREADS`` (it is the more
    specific request). Nothing else (``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``) is set:
    torch's MKL and faiss' OpenBLAS follow their OpenMP runtime's count.

    The OpenMP runtimes read the environment once, when torch (or faiss) is imported, so call
    this **before** ``import torch`` for the wait policy to apply. Calling it again later (e.g.
    with a ``--threads`` value) is fine: for libraries already imported it sets their thread
    counts through ``torch.set_num_threads``, ``torch.set_num_interop_threads`` (while torch
    still allows it) and ``faiss.omp_set_num_threads``.

    A bad ``threads`` or ``CONTRAHASH_THREADS`` value raises ``ValueError`` naming it.
    """
    global _applied
    torch = sys.modules.get("torch")
    torch_loaded = torch is not None and hasattr(torch, "get_num_threads")
    n = _parse_threads(threads, "threads")
    source = "argument"
    if n is None and _applied is not None:  # an earlier decision stands unless a new count is given
        n, source = _applied.threads, _applied.source
    if n is None:
        n = _parse_threads(os.environ.get("CONTRAHASH_THREADS"), "CONTRAHASH_THREADS")
        source = "CONTRAHASH_THREADS"
    if n is None:
        user_omp = _user_set("OMP_NUM_THREADS")
        try:
            n = _parse_threads(user_omp.split(",")[0], "OMP_NUM_THREADS") if user_omp else None
        except ValueError:  # the OpenMP runtimes ignore a malformed value; so do we
            n = None
        source = "OMP_NUM_THREADS"
    if n is None and torch_loaded:  # imported (and maybe set up) by the caller: keep its count
        n, source = int(torch.get_num_threads()), "torch"
    if n is None:
        n, source = default_threads(), "default"

    env_set: dict[str, str] = {}
    # an explicit count (argument, CONTRAHASH_THREADS) is the more specific request: it also
    # replaces a user-set OMP_NUM_THREADS, so torch and faiss start with it
    _set_env("OMP_NUM_THREADS", str(n), env_set, force=source in ("argument", "CONTRAHASH_THREADS"))
    if _user_set("OMP_WAIT_POLICY") is None and _user_set("GOMP_SPINCOUNT") is None:
        _set_env("GOMP_SPINCOUNT", SPIN_COUNT, env_set)
    if os.environ.get("OMP_WAIT_POLICY"):
        wait_policy: str | None = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    elif os.environ.get("GOMP_SPINCOUNT"):
        wait_policy = f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    else:
        wait_policy = None

    runtime_set: list[str] = []
    if torch_loaded:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
            runtime_set.append("torch")
        if torch.get_num_interop_threads() != n:
            try:
                torch.set_num_interop_threads(n)
                runtime_set.append("torch_interop")
            except RuntimeError:  # inter-op work already started: torch refuses a change
                pass
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        if faiss.omp_get_max_threads() != n:
            faiss.omp_set_num_threads(n)
            runtime_set.append("faiss")

    effective = not torch_loaded if _applied is None else _applied.wait_policy_effective
    _applied = ThreadPolicy(threads=n, source=source, wait_policy=wait_policy,
                            wait_policy_effective=effective, env_set=env_set,
                            runtime_set=tuple(runtime_set))
    return _applied


def policy_threads() -> int | None:
    """The thread count :func:`apply_thread_policy` set in this process, None before it ran
    (for code that sizes its own pool of workers by the policy)."""
    return None if _applied is None else int(_applied.threads)


def thread_settings() -> dict[str, Any]:
    """The thread settings in effect, for ``environment.json`` (results depend on them).

    Library values are read only from libraries already imported (None otherwise), so calling
    this never initialises torch or faiss.
    """
    torch = sys.modules.get("torch")
    faiss = sys.modules.get("faiss")
    info: dict[str, Any] = {
        "torch_intra_op": torch.get_num_threads() if torch is not None else None,
        "torch_inter_op": torch.get_num_interop_threads() if torch is not None else None,
        "faiss_omp": (faiss.omp_get_max_threads()
                      if faiss is not None and hasattr(faiss, "omp_get_max_threads") else None),
        "cpu_affinity": cpu_affinity_count(),
        "cpu_count": os.cpu_count(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV},
        "policy": None,
    }
    if _applied is not None:
        info["policy"] = {"threads": _applied.threads, "source": _applied.source,
                          "wait_policy": _applied.wait_policy,
                          "wait_policy_effective": _applied.wait_policy_effective}
    return info


def use_threads_in_this_thread(threads: int) -> None:
    """Give parallel regions started by the *calling* thread ``threads`` OpenMP threads.

    libgomp keeps the team size per thread, and counts every thread it manages: once a
    process holds more of them than it has CPUs (say the main thread ran a torch op or a faiss
    search on a 2-thread team, and a worker thread then encodes on its own 2-thread team), all
    of its idle workers spin only ~100 iterations before sleeping, so every parallel region
    pays kernel wake-ups. A service that encodes in one dedicated thread therefore calls this
    with its thread count there and with 1 in every other thread that may touch torch or faiss
    (``contrahash serve`` does; docs/results.md measures what a team left in the main thread
    costs the encoder thread).

    torch applies its last ``set_num_threads`` value to each thread on that thread's first
    parallel op, so this also performs that first-use initialisation now: a later call in
    another thread cannot change this thread's count.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    torch.get_num_threads()  # runs torch's lazy per-thread initialisation with this value
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(threads)  # its own libgomp when imported before torch
