"""Process-level performance settings for the CPU path: the allocator and the threads.

PyTorch has no caching allocator on the CPU: every activation tensor of a forward pass is a
fresh ``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB by default)
with ``mmap`` and gives them back with ``munmap`` on free, so each batch faults in and zeroes
its activations page by page again — on the 2-core host an EfficientNet-Lite0 forward at
224 px spent more time in the kernel than in the convolutions (sys 27 s vs user 18 s at batch
512). Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse:
measured there (bf16, batch 64) 77 → 172 img/s, and batch 512 43 → 113 img/s.

The cost is that freed memory stays with the process (its resident size keeps the peak)
instead of going back to the system. ``CONTRAHASH_MALLOC_TUNING=0`` turns it off.

Threads (:func:`apply_thread_policy`, :func:`thread_settings`)
-------------------------------------------------------------
torch (its own ``torch/lib/libgomp.so.1``, which MKL uses too) and faiss-cpu (a bundled
``faiss_cpu.libs/libgomp-*.so``, plus an OpenMP OpenBLAS) run their parallel loops on GNU
OpenMP thread teams. When torch is imported first, faiss' ``omp_*``/``GOMP_*`` calls bind to
torch's libgomp (one runtime); faiss first, two runtimes. Both read ``OMP_NUM_THREADS``,
``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` once, when loaded. By default an idle worker
*spins* (up to 300,000 iterations) before sleeping. Every parallel region is split statically
over all threads, so on 2 cores shared with another CPU-bound process a region waits for its
descheduled thread while the others spin in its way: the user report of ``contrahash demo``
at 4 min 05 s (28.7 s with ``OMP_NUM_THREADS=1``), digits epochs alternating 0.4 s / 40 s and
faiss ``IndexBinaryFlat`` at 1,234 vs 251 q/s.

Measured with ``benchmarks/contention.py`` (2-core VM, commit c3799e5 plus this module, every
run niced, settings interleaved back to back, 1–3 runs each). The machine was never idle:
other sessions kept both CPUs busy throughout ("background", /proc/stat busy = 2.0 in every
run); "+hog" adds one ``python -c "while True: pass"``. Demo = ``contrahash demo``,
wall seconds, one figure per run; 2 threads unless noted; the PASSIVE row's first figure is
``OMP_WAIT_POLICY=PASSIVE`` alone, the others (and all search/EfficientNet PASSIVE figures)
are :func:`apply_thread_policy` run before the workload's imports:

==========================  ==============  ==============  ===========  ===========
setting                     demo 5 ep bg    demo 5 ep +hog  demo 40 bg   demo 40 +hog
==========================  ==============  ==============  ===========  ===========
torch/OpenMP defaults       62, 248, 69     151, 305, 150   —            —
OMP_WAIT_POLICY=PASSIVE     18, 42, 25      46, 65, 50      73           138
GOMP_SPINCOUNT=0            18, 37, 20      54, 46, 48      —            —
OMP_NUM_THREADS=1           14, 28, 19      42, 57, 43      50           103
PASSIVE + 1 thread          35, 19          69, 34          —            —
==========================  ==============  ==============  ===========  ===========

``benchmarks/search_speed.py`` (1M 64-bit codes, k = 10, best of 3 rounds), faiss
IndexBinaryFlat q/s: defaults 399/297/355 (bg), 183/160 (+hog); PASSIVE 1,073/1,107 (bg),
1,647/865 (+hog); 1 thread 865/1,133 (bg), 819/528 (+hog). ``benchmarks/train_speed.py
--backbone efficientnet_lite0 --random-init --batch 32 --steps 2`` (224 px, CPU), train /
encode img/s: defaults 4.8/23.4 and 6.6/13.8 (bg), 6.0/13.0 and 4.2/11.1 (+hog); PASSIVE
19.1/33.6 and 13.4/40.4 (bg), 12.1/33.4 and 10.1/24.0 (+hog); 1 thread 15.6/39.8 and
16.6/35.1 (bg), 8.4/14.3 and 10.0/23.5 (+hog).

Reading: spinning is the collapse (3.5–9× the 1-thread time); a passive wait (or a zero spin
count, the same thing in libgomp) removes it under load.

Then on a quiet machine (this session's 2-core Intel Xeon with AMX, nothing else running;
``benchmarks/train_speed.py --backbone efficientnet_lite0 --random-init --steps 6`` and
``benchmarks/search_speed.py --rounds 2 --ks 10``, idle and beside one busy process):

==================  ======================================  =====================================
GOMP_SPINCOUNT      idle: train / encode / cache-head img/s  busy: train / encode / cache-head img/s
                    faiss k=10 q/s                           faiss k=10 q/s
==================  ======================================  =====================================
0 (= PASSIVE)       64.0 / 133 / 4,983 — 3,075              38.0 / 70 / 3,440 — 1,801
1,000               66.9 / 148 / 5,930 — 3,632              36.9 / 79 / 3,374 — 1,671
10,000              74.0 / 142 / 7,191 — 3,633              33.9 / 72 / 2,158 — 1,426
300,000 (default)   63.3 / 156 / 7,709 — 3,643              24.7 / 49 / 879 — 391
==================  ======================================  =====================================

A zero spin count costs the small-op paths a third of their idle speed (head training from
cached features: 4,983 vs 7,709 img/s; faiss 3,075 vs 3,643 q/s) because every parallel
region then wakes sleeping threads through the kernel; 10,000 spins (tens of microseconds)
keep the idle speed of the default and still hold 2.5–3.6× the default's speed under load.
Hence the default: **every CPU of the affinity mask, GOMP_SPINCOUNT=10000** — deterministic
per machine (the thread count changes results at a fixed seed, so it must not depend on
momentary load) — and one thread for tiny models (``contrahash demo`` runs on one unless
asked: 25 s idle, 26 s beside a busy process, against 19 s and 240 s with the old default).
The setting only takes effect if made before torch (and faiss) are imported;
:func:`thread_settings` records whether it did.
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
    (``contrahash serve``: a batch of 8 CIFAR-10 queries at 224 px, 2-core host, encoded in a
    worker thread: 76–86 ms with a 2-thread team left in the main thread, 55–62 ms without).

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
