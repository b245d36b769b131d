"""Wall time of a workload under OpenMP/thread settings, with and without a competing CPU hog.

    python benchmarks/contention.py --workload demo --settings default passive t1 --repeats 2

Each (repeat, load, setting) runs the workload in a fresh interpreter with the setting's
environment variables (so the OpenMP runtimes of torch and faiss read them at start-up);
settings and loads are interleaved, so a change of background load on a shared machine hits
all settings alike. ``--load spin`` runs ``--hogs`` busy-looping ``python -c "while True:
pass"`` processes (no affinity) during the run. For each run it prints the wall time, the
workload's figures (faiss q/s, img/s) and ``busy``: the average number of busy CPUs on the
whole machine during the run (from /proc/stat), and ``own``: the workload's CPU seconds per
wall second, so background load by others can be told apart.

Workloads: ``demo`` (``contrahash demo --epochs E`` into a temporary folder, deleted after),
``search`` (benchmarks/search_speed.py, faiss IndexBinaryFlat and numpy q/s), ``effnet``
(benchmarks/train_speed.py with a random-init EfficientNet-Lite0 at 224 px: large convolutions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

#: named settings: the environment each run gets on top of a copy of this one, with the
#: thread-related variables below removed first
PRESETS: dict[str, dict[str, str]] = {
    "default": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin0": {"GOMP_SPINCOUNT": "0"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "t1": {"OMP_NUM_THREADS": "1"},
    "passive_t1": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
    "ct1": {"CONTRAHASH_THREADS": "1"},
    "policy": {},  # contrahash.runtime.apply_thread_policy's defaults (nothing set here)
}
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
           "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CONTRAHASH_THREADS")


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def workload_command(name: str, args: argparse.Namespace, tmp: Path, setting: str) -> list[str]:
    # "policy" runs through a wrapper that applies contrahash's policy before anything imports
    # torch, as the CLI does; the other settings run the bare workload
    wrap = [PY, "-c", "import os, runpy, sys; from contrahash.runtime import apply_thread_policy; "
            "apply_thread_policy(); sys.argv = sys.argv[1:]; "
            "sys.path.insert(0, os.path.dirname(sys.argv[0])); "
            "runpy.run_path(sys.argv[0], run_name='__main__')"] if setting == "policy" else [PY]
    if name == "demo":
        policy = ("from contrahash.runtime import apply_thread_policy; apply_thread_policy(); "
                  if setting == "policy" else "")
        entry = [PY, "-c", f"import sys; {policy}from contrahash.cli import main; "
                 "sys.argv[0] = 'contrahash'; main()"]
        return [*entry, "demo", "--epochs", str(args.epochs), "--out-dir", str(tmp / "demo")]
    if name == "search":
        return [*wrap, str(HERE / "search_speed.py"), "--database", str(args.database),
                "--rounds", str(args.rounds), "--ks", "10"]
    if name == "effnet":
        return [*wrap, str(HERE / "train_speed.py"), "--backbone", "efficientnet_lite0",
                "--random-init", "--device", "cpu", "--batch", str(args.batch),
                "--steps", str(args.steps)]
    raise SystemExit(f"unknown workload {name!r}")


def figures(name: str, out: str) -> dict[str, float]:
    found: dict[str, float] = {}
    patterns = {
        "faiss_qps": r"faiss IndexBinaryFlat\s+([\d.]+) q/s",
        "numpy_qps": r"HammingIndex\(numpy\)\s+([\d.]+) q/s",
        "train_img_s": r"train_img_per_s=([\d.]+)",
        "encode_img_s": r"encode_img_per_s=([\d.]+)",
    }
    for key, pattern in patterns.items():
        m = re.search(pattern, out)
        if m:
            found[key] = float(m.group(1))
    epochs = [float(x) for x in re.findall(r"fdbh: done in ([\d.]+) s", out)]
    if epochs:
        found["fdbh_s"] = epochs[0]
    return found


def run_once(name: str, setting: str, env_extra: dict[str, str], args: argparse.Namespace
             ) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(env_extra)
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        cmd = workload_command(name, args, Path(tmp), setting)
        b0, t0 = cpu_busy()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=HERE.parent)
        out, _ = proc.communicate()
        wall = time.perf_counter() - start
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        b1, t1 = cpu_busy()
        shutil.rmtree(Path(tmp) / "demo", ignore_errors=True)
    if proc.returncode != 0:
        print(out[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} under {setting} failed ({proc.returncode})")
    ncpu = os.cpu_count() or 1
    row: dict[str, object] = {"wall_s": round(wall, 2),
                              "busy": round(ncpu * (b1 - b0) / max(t1 - t0, 1e-9), 2),
                              "own": round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                                           / wall, 2)}
    row.update(figures(name, out))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=["demo", "search", "effnet"], default="demo")
    ap.add_argument("--settings", nargs="+", default=["default", "passive", "t1"],
                    help=f"preset names ({', '.join(PRESETS)}) or NAME:VAR=V,VAR=V")
    ap.add_argument("--loads", nargs="+", choices=["none", "spin"], default=["none", "spin"])
    ap.add_argument("--hogs", type=int, default=1, help="busy-loop processes under --load spin")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10, help="demo: FDBH epochs")
    ap.add_argument("--database", type=int, default=1_000_000, help="search: database size")
    ap.add_argument("--rounds", type=int, default=3, help="search: rounds")
    ap.add_argument("--batch", type=int, default=32, help="effnet: batch")
    ap.add_argument("--steps", type=int, default=2, help="effnet: timed steps")
    ap.add_argument("--json", type=Path, help="append every row here as JSON lines")
    args = ap.parse_args()

    settings: dict[str, dict[str, str]] = {}
    for s in args.settings:
        if ":" in s:
            label, spec = s.split(":", 1)
            settings[label] = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
        elif s in PRESETS:
            settings[s] = PRESETS[s]
        else:
            raise SystemExit(f"unknown setting {s!r}; presets: {', '.join(PRESETS)}")

    for rep in range(args.repeats):
        for load in args.loads:
            hogs = [subprocess.Popen([PY, "-c", "while True: pass"])
                    for _ in range(args.hogs if load == "spin" else 0)]
            try:
                for label, env_extra in settings.items():
                    row = {"workload": args.workload, "setting": label, "load": load,
                           "repeat": rep, **run_once(args.workload, label, env_extra, args)}
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(row) + "\n")
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()


if __name__ == "__main__":
    main()
