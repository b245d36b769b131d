"""The one-command collection on CIFAR-10, scored as the field scores it.

Runs ``contrahash index build --data CIFAR.npz --out DIR`` (no run given: FDBH learns from
the collection's own images — at most 5,000 drawn at random from all 60,000, labels unused),
then evaluates the collection's codes under protocol ``cifar10-1`` (its 1,000 queries against
its 59,000-image database, mAP@1000, ties by database order) — the protocol of the frozen-FDBH
row of ``results/cifar10-1-seeds`` it is compared with. Ends with one line::

    library_cifar_map_16=… library_cifar_map_32=… library_cifar_map_64=… build_s=…

Example: ``python benchmarks/library_cifar.py --work /tmp/c10-lib`` (``--cifar`` or
``$CONTRAHASH_CIFAR10`` names the packed copy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", help="the packed CIFAR-10 JPEG copy (.npz)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--skip-build", action="store_true", help="evaluate DIR as it is")
    parser.add_argument("--build-args", default="", help="extra arguments for index build")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from contrahash.library.synthetic import find_cifar10

    cifar = find_cifar10(args.cifar)
    if cifar is None:
        sys.exit("error: give --cifar PATH (the packed CIFAR-10 JPEG copy)")
    out = args.work / "cifar10.index"
    build_s = float("nan")
    if not args.skip_build:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "contrahash.cli", "index", "build",
                              "--data", str(cifar), "--out", str(out), "--no-progress",
                              *args.build_args.split()], env=env, text=True)
        build_s = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"index build failed ({res.returncode})")
    from contrahash.data import load_source
    from contrahash.data.protocols import make_split
    from contrahash.evaluation.metrics import retrieval_report
    from contrahash.retrieval.collection import open_collection

    dataset = load_source(str(cifar))
    split = make_split("cifar10-1", dataset, seed=0)
    result = {}
    with open_collection(out) as coll:
        ids = coll.live_ids()
        rows = np.asarray([coll._item(i)["source_index"] for i in ids])
        order = np.argsort(rows)
        if not np.array_equal(rows[order], np.arange(len(dataset))):
            sys.exit("the collection does not hold every CIFAR-10 image once")
        for bits in coll.bits:
            codes = coll.codes_of(list(ids[order]), bits)  # row i = dataset image i
            rep = retrieval_report(codes[split.query], codes[split.database],
                                   dataset.labels[split.query], dataset.labels[split.database],
                                   topk=split.topk)
            result[f"library_cifar_map_{bits}"] = round(float(rep["map"]), 4)
    result["build_s"] = round(build_s, 1)
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
