"""``contrahash index build``, ``contrahash search`` and ``contrahash evaluate`` on code files.

Thin wrappers: load ``.npy`` files, call :mod:`contrahash.retrieval.index` / :mod:`contrahash.evaluation.metrics`,
print a rich table (or JSON with ``--json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from contrahash.cli.common import console, fail, fmt, invoked_command, relaunch
from contrahash.cli.progress import ProgressOption


def load_npy(path: Path, option: str) -> np.ndarray:
    """An .npy array, or a one-line error naming the option and the file."""
    if path.is_dir():
        fail(f"{option} {path} is a directory, not an .npy file")
    if not path.is_file():
        fail(f"{option} {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        fail(f"{option} {path} is not a readable .npy array ({exc})")


# ----------------------------------------------------------------------------- index build
def build_codes_index(codes: Path, out: Path, ids: Path | None, bits: int | None) -> None:
    """``index build CODES.npy --out FILE``: an exact Hamming index of a codes file."""
    from contrahash.io import write_json
    from contrahash.retrieval.codes_io import check_output_path, provenance_of, sidecar
    from contrahash.retrieval.index import HammingIndex

    array = load_npy(codes, "CODES")
    id_array = load_npy(ids, "--ids") if ids is not None else None
    if array.ndim != 2:
        fail(f"CODES {codes}: codes must be 2-D [n, bits]; got shape {array.shape}")
    if array.shape[0] == 0:
        fail(f"CODES {codes} holds no codes: nothing to index")
    check_output_path(out)
    packed = bits is not None
    n_bits = bits if packed else array.shape[1]
    index = HammingIndex(n_bits, backend="numpy")
    try:
        index.add(array, ids=id_array, packed=packed)
    except ValueError as exc:
        fail(f"CODES {codes}: {exc}")
    path = index.save(out)
    meta = provenance_of(codes)
    if meta:  # the index remembers which run made its codes
        write_json(sidecar(out), {**meta, "codes": str(codes)})
    console.print(f"indexed {len(index)} codes of {n_bits} bits -> {path}")


# ----------------------------------------------------------------------------- search
def search_codes(index_path: Path, queries: Path, k: int, out: Path | None, as_json: bool,
                 packed: bool, show: int, backend: str) -> None:
    """``search INDEX QUERIES.npy``: the k nearest codes of each query code."""
    from contrahash.retrieval.codes_io import check_output_path, check_same_run
    from contrahash.retrieval.index import HammingIndex

    if index_path.is_dir():
        fail(f"INDEX {index_path} is a directory: give an index file (contrahash index build "
             "CODES --out FILE), or a collection directory made by `index build RUN --data`")
    q = load_npy(queries, "QUERIES")
    if out is not None:
        check_output_path(out)
    check_same_run(index_path, queries)
    try:
        index = HammingIndex.load(index_path, backend=backend)
    except FileNotFoundError as exc:
        fail(f"INDEX {exc}")
    if len(index) == 0:
        fail(f"INDEX {index_path} holds no codes")
    kk = min(k, len(index))
    try:
        distances, ids = index.search(q, kk, packed=packed)
    except ValueError as exc:
        fail(f"QUERIES {queries}: {exc}")
    if out is not None:
        from contrahash.io import write_npz

        write_npz(out, distances=distances, ids=ids)
    if as_json:
        typer.echo(json.dumps({"k": kk, "distances": distances.tolist(), "ids": ids.tolist()}))
        return
    note = f" (the index holds only {len(index)})" if kk < k else ""
    table = Table(title=f"top {kk} of {len(index)} ({index.bits} bits){note} — first "
                        f"{min(show, len(ids))} of {len(ids)} queries")
    for name in ("query", "rank", "id", "distance"):
        table.add_column(name, justify="right")
    for qi in range(min(show, len(ids))):
        for rank in range(kk):
            table.add_row(str(qi) if rank == 0 else "", str(rank + 1), str(ids[qi, rank]),
                          str(distances[qi, rank]))
    console.print(table)
    if out is not None:
        console.print(f"wrote distances and ids [{len(ids)}, {kk}] to {out}")


# ----------------------------------------------------------------------------- evaluate
def _report_table(reports: dict[str, dict[str, Any]], title: str, bounds: bool) -> Table:
    first = next(iter(reports.values()))
    ns = list(first.get("precision_at_n", {}))
    table = Table(title=title)
    table.add_column("bits", justify="right")
    table.add_column(f"mAP@{first.get('topk')}", justify="right")
    if bounds:
        table.add_column("mAP worst…best (ties)", justify="right")
    for n in ns:
        table.add_column(f"P@{n}", justify="right")
    table.add_column("P@r≤2", justify="right")
    for bits, rep in reports.items():
        row = [str(bits), fmt(rep.get("map"))]
        if bounds:
            row.append(f"{fmt(rep.get('map_worst'))}…{fmt(rep.get('map_best'))}")
        pn = rep.get("precision_at_n", {})
        row += [fmt(pn.get(n)) for n in ns]
        row.append(fmt(rep.get("precision_radius_2")))
        table.add_row(*row)
    return table


def evaluate_command(
    run_dir: Annotated[Path | None, typer.Argument(
        help="a finished run directory (optional)")] = None,
    query_codes: Annotated[Path | None, typer.Option("--query-codes", help="query codes .npy")
                           ] = None,
    db_codes: Annotated[Path | None, typer.Option("--db-codes", help="database codes .npy")
                        ] = None,
    query_labels: Annotated[Path | None, typer.Option(
        "--query-labels", help="query labels .npy: class ids [n] or multi-hot [n, C]")] = None,
    db_labels: Annotated[Path | None, typer.Option("--db-labels", help="database labels .npy")
                         ] = None,
    topk: Annotated[int | None, typer.Option("--topk", min=1, help="mAP cut-off K (default: the "
                                             "run's protocol; all for files)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON to stdout")] = False,
    bounds: Annotated[bool, typer.Option("--bounds", help="also show the tie bounds of mAP "
                                         "(JSON always has map_best / map_worst)")] = False,
) -> None:
    """mAP@K, P@N and P@r≤2 of saved codes (ties broken by database order)."""
    from contrahash.evaluation.metrics import retrieval_report

    if run_dir is not None:
        from contrahash.evaluation.evaluate import evaluate_run

        if not run_dir.is_dir():
            fail(f"RUN_DIR {run_dir} is not a directory")
        reports = {str(k): v for k, v in evaluate_run(run_dir, topk=topk).items()}
        title = f"{run_dir}"
    else:
        from contrahash.retrieval.codes_io import check_same_run

        paths = {"--query-codes": query_codes, "--db-codes": db_codes,
                 "--query-labels": query_labels, "--db-labels": db_labels}
        missing = [name for name, p in paths.items() if p is None]
        if missing:
            fail(f"give a RUN_DIR, or all of {', '.join(paths)} (missing {', '.join(missing)})")
        arrays = {name: load_npy(p, name) for name, p in paths.items()}
        check_same_run(query_codes, db_codes)
        report = retrieval_report(arrays["--query-codes"], arrays["--db-codes"],
                                  arrays["--query-labels"], arrays["--db-labels"], topk=topk)
        reports = {str(report["bits"]): report}
        title = f"{query_codes.name} against {db_codes.name}"
    if as_json:
        payload = reports if run_dir is not None else next(iter(reports.values()))
        typer.echo(json.dumps(payload))
        return
    if not reports:
        fail(f"{run_dir}: no code lengths to evaluate")
    console.print(_report_table(reports, title, bounds))


# ----------------------------------------------------------------------------- collections
def _backend_spec(backend: str, milvus_uri: str | None, milvus_collection: str | None,
                  milvus_options: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": backend}
    if backend == "milvus":
        spec.update(uri=milvus_uri, collection=milvus_collection or "contrahash",
                    **(milvus_options or {}))
    return spec


def build_library_index(data: str, out: Path, bits: list[int] | None, labels: str,
                        epochs: int | None, finetune_blocks: int, train_images: int,
                        keep_cache: bool, device: str | None, backend: str,
                        milvus_uri: str | None, milvus_collection: str | None,
                        progress: bool, milvus_options: dict[str, Any] | None = None) -> None:
    """``index build --data FOLDER --out DIR``: learn the model from the folder, index it."""
    from contrahash.cli.progress import progress_display
    from contrahash.library.build import DEFAULT_BITS, build_library

    t0 = time.perf_counter()
    manifest = build_library(data, out, bits=bits or DEFAULT_BITS, epochs=epochs,
                             finetune_blocks=finetune_blocks, max_train=train_images,
                             labels=labels, device=device or "auto",
                             backend=_backend_spec(backend, milvus_uri, milvus_collection,
                                                   milvus_options),
                             progress=progress_display(progress),
                             say=lambda text: console.print(text, highlight=False),
                             command=invoked_command())
    dt = time.perf_counter() - t0
    quality = manifest["training"].get("bits", {})
    longest = max(quality, key=int) if quality else None
    if longest is not None:
        rep = quality[longest]
        if "self_retrieval_at_10" in rep:
            console.print(f"label-free quality ({longest} bits): an augmented view finds its own "
                          f"photo in the top 10 for {rep['self_retrieval_at_10']:.1%} of "
                          f"{manifest['training'].get('self_queries')} photos (ties counted "
                          "against it)", highlight=False)
        elif rep.get("map") is not None:
            console.print(f"mAP ({longest} bits) against the source's labels: {rep['map']:.4f}",
                          highlight=False)
    console.print(f"indexed {manifest['count']:,} images at {', '.join(map(str, manifest['bits']))}"
                  f" bits -> {out} in {dt:.1f} s; search it: contrahash serve {out}",
                  highlight=False)


def build_collection_index(run_dir: Path, data: str | None, out: Path, bits: list[int] | None,
                           image_root: Path | None, device: str | None, backend: str,
                           milvus_uri: str | None, milvus_collection: str | None,
                           progress: bool, labels: str = "albums",
                           milvus_options: dict[str, Any] | None = None) -> None:
    """``index build RUN --data SOURCE --out DIR``: a searchable collection."""
    from contrahash.cli.progress import progress_display
    from contrahash.retrieval.collection import build_collection

    if data is None:
        fail("--data SOURCE is needed with a run directory (the images to index)")
    t0 = time.perf_counter()
    manifest = build_collection(run_dir, data, out, bits=bits,
                                image_root=str(image_root) if image_root else None, device=device,
                                backend=_backend_spec(backend, milvus_uri, milvus_collection,
                                                      milvus_options),
                                labels=labels, progress=progress_display(progress),
                                command=invoked_command())
    dt = time.perf_counter() - t0
    from contrahash.training.distributed import context

    if not context().is_main:
        return
    console.print(f"indexed {manifest['count']:,} images at {', '.join(map(str, manifest['bits']))}"
                  f" bits -> {out} in {dt:.1f} s ({manifest['count'] / dt:,.1f} images/s)")


LabelsOption = Annotated[str, typer.Option(
    "--labels", help="how a folder's sub-folders are read: albums (a photo library, no labels) "
    "or folders (class folders: a labelled dataset)")]


def add_command(
    directory: Annotated[Path, typer.Argument(help="a collection directory (index build)")],
    data: Annotated[str, typer.Option("--data", help="the images to add (any source)")],
    image_root: Annotated[Path | None, typer.Option("--image-root")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    allow_duplicates: Annotated[bool, typer.Option(
        "--allow-duplicates", help="store images whose content is already in the collection")
        ] = False,
    labels: LabelsOption = "albums",
    progress: ProgressOption = True,
) -> None:
    """Append images to a collection (new ids; nothing written before changes; content that
    is already in the collection is reported, not stored twice)."""
    from contrahash.cli.progress import progress_display
    from contrahash.retrieval.collection import add_to_collection

    _check_labels(labels)
    before = len_of(directory)
    manifest = add_to_collection(directory, data, image_root=str(image_root) if image_root
                                 else None, device=device, allow_duplicates=allow_duplicates,
                                 labels=labels, progress=progress_display(progress),
                                 command=invoked_command())
    change = manifest["last_change"]
    _say_duplicates(change)
    console.print(f"added {manifest['count'] - before:,} images to {directory} "
                  f"({manifest['count']:,} in all)", highlight=False)


def _say_duplicates(change: dict[str, Any]) -> None:
    dups, bad = change.get("duplicates", []), change.get("unreadable", [])
    if dups:
        shown = "; ".join(f"{Path(d['path']).name} (= id {d['same_as']})" if d["same_as"]
                          is not None else Path(d["path"]).name for d in dups[:5])
        more = f"; … {len(dups) - 5} more" if len(dups) > 5 else ""
        console.print(f"not stored again: {len(dups)} file(s) whose content is already in the "
                      f"collection: {shown}{more}", highlight=False)
    if bad:
        shown = "; ".join(f"{Path(b['path']).name} ({b['reason']})" for b in bad[:5])
        console.print(f"skipped {len(bad)} unreadable file(s): {shown}", highlight=False)


def _check_labels(labels: str) -> None:
    from contrahash.data.sources import FOLDER_LABELS

    if labels not in FOLDER_LABELS:
        fail(f"--labels must be one of {', '.join(FOLDER_LABELS)}, got {labels!r}")


def sync_command(
    directory: Annotated[Path, typer.Argument(help="a collection directory")],
    device: Annotated[str | None, typer.Option("--device")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help='print one line {"added": …, "removed": …, "changed": …, '
        '"unchanged": …}')] = False,
    progress: ProgressOption = True,
) -> None:
    """Follow the collection's folders: add new photos, remove deleted ones, re-encode changed
    ones (by content: a touched but identical file is unchanged). Ids of kept items never
    change; a running `serve` picks the change up."""
    from contrahash.cli.progress import progress_display
    from contrahash.retrieval.collection import sync_collection

    t0 = time.perf_counter()
    out = sync_collection(directory, device=device,
                          progress=progress_display(progress and not as_json),
                          command=invoked_command())
    if as_json:
        typer.echo(json.dumps(out))
        return
    extra = "".join(f", {out[k]} {k.replace('_', ' ')}" for k in ("duplicates", "unreadable")
                    if out[k])
    console.print(f"{directory}: {out['added']} added, {out['removed']} removed, "
                  f"{out['changed']} changed, {out['unchanged']} unchanged{extra} "
                  f"({out['encoded']} encoded, {time.perf_counter() - t0:.1f} s)",
                  highlight=False)


def remove_command(
    directory: Annotated[Path, typer.Argument(help="a collection directory")],
    item_id: Annotated[list[int] | None, typer.Option("--id", min=0, help="an item id")] = None,
    path: Annotated[list[Path] | None, typer.Option("--path", help="an indexed file")] = None,
) -> None:
    """Remove items (by id or by file path): never returned again; other ids unchanged."""
    from contrahash.retrieval.collection import remove_from_collection

    before = len_of(directory)
    manifest = remove_from_collection(directory, ids=item_id or [],
                                      paths=[str(p) for p in path or []],
                                      command=invoked_command())
    console.print(f"removed {before - manifest['count']} item(s) from {directory} "
                  f"({manifest['count']:,} left)", highlight=False)


def len_of(directory: Path) -> int:
    """Items in a collection (from its manifest)."""
    from contrahash.retrieval.collection import read_manifest

    return int(read_manifest(directory)["count"])


def info_command(
    directory: Annotated[Path, typer.Argument(help="a collection directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """What a collection holds: items, code lengths, the run, its sources."""
    from contrahash.models.engine import engine_note
    from contrahash.retrieval.collection import collection_info

    info = collection_info(directory)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    run = info["run"]
    console.print(f"[bold]{directory}[/]: {info['count']:,} items, code lengths "
                  f"{info['bits']}, backend {info['backend']['kind']}, "
                  f"{info['bytes_on_disk'] / 2**20:,.1f} MiB on disk", highlight=False)
    from contrahash.retrieval.backends import backend_of

    console.print(backend_of(info["backend"]).describe(info["backend"]), highlight=False)
    console.print(f"model: {run['method']} on {run['backbone']} at {run['image_size']} px "
                  f"({run['precision']}), run {run['run_id']} from {run['dir']}", highlight=False)
    console.print(engine_note(run.get("engine")), highlight=False)
    removed = len(info.get("removed", []))
    if removed or info.get("generation"):
        console.print(f"{removed:,} item(s) removed; ids up to {info.get('next_id', 0) - 1} "
                      f"used; {info.get('generation', 0)} change(s) committed, the last at "
                      f"{info.get('updated_at')}", highlight=False)
    table = Table(title="segments (a later row of an id supersedes an earlier one)")
    for name in ("segment", "ids", "images", "source", "kind", "added"):
        table.add_column(name)
    for seg in info["segments"]:
        table.add_row(seg["name"], f"{seg['first_id']}..",
                      f"{seg['count']:,}", seg["source"], seg.get("kind", "-"), seg["added_at"])
    console.print(table)


def search_collection(directory: Path, image: Path | None, item_id: int | None, k: int,
                      bits: int | None, as_json: bool) -> None:
    """``search DIR --image FILE`` / ``--id N``: ranked items of a collection."""
    from contrahash.retrieval.collection import open_collection

    if (image is None) == (item_id is None):
        fail("give exactly one of --image FILE or --id N to search a collection")
    if image is not None and not image.is_file():
        fail(f"--image {image} does not exist" if not image.exists() else
             f"--image {image} is not a file")
    with open_collection(directory) as collection:
        _search_and_show(collection, image, item_id, k, bits, as_json)


def _search_and_show(collection: Any, image: Path | None, item_id: int | None, k: int,
                     bits: int | None, as_json: bool) -> None:
    k_bits = bits or collection.default_bits
    if k_bits not in collection.bits:
        fail(f"--bits {k_bits}: the collection has code lengths {collection.bits}")
    t0 = time.perf_counter()
    if image is not None:
        try:
            decoded = collection.decode_image(image.read_bytes())
        except ValueError as exc:
            fail(f"--image {image}: {exc}")
        codes = collection.encode([decoded])[k_bits]
        hits = collection.search_codes(codes, k, k_bits)[0]
        query: dict[str, Any] = {"image": str(image)}
    else:
        hits = collection.search_ids([item_id], k, k_bits)[0]
        query = {"id": item_id}
    ms = (time.perf_counter() - t0) * 1000
    results = []
    for rank, hit in enumerate(hits, 1):
        item = collection.item(hit.id)
        results.append({"rank": rank, "id": hit.id, "distance": hit.distance, "name": item.name,
                        "path": item.path, "album": item.album, "labels": item.labels})
    if as_json:
        typer.echo(json.dumps({"query": query, "k": k, "bits": k_bits, "ms": round(ms, 2),
                               "results": results}))
        return
    title = f"top {len(results)} of {len(collection):,} ({k_bits} bits) for " + (
        f"{image}" if image is not None else f"item {item_id}") + f" — {ms:.1f} ms"
    table = Table(title=title)
    labelled = any(r["labels"] for r in results)
    for name, justify in (("rank", "right"), ("id", "right"), ("distance", "right"),
                          ("label" if labelled else "album", "left"), ("path", "left")):
        table.add_column(name, justify=justify)
    for r in results:
        table.add_row(str(r["rank"]), str(r["id"]), str(r["distance"]),
                      ", ".join(r["labels"]) if labelled else (r["album"] or ""),
                      r["path"] or r["name"])
    console.print(table)


# ----------------------------------------------------------------------------- commands
def build_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="collection directory, or index file")],
    source: Annotated[Path | None, typer.Argument(
        metavar="[RUN|CODES]", help="a finished run directory (with --data: a searchable "
        "collection), or a codes .npy (±1, {0,1} or bool [n, bits]; packed uint8 with --bits); "
        "none: learn the model from --data's own images, then index them")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="images to index: a folder, a list file, a packed .npz, CIFAR "
        "batches, one image file")] = None,
    bits: Annotated[list[int] | None, typer.Option(
        "--bits", min=1, help="code lengths to index (default: all of the run's); for a codes "
        ".npy: the code length of packed uint8 codes")] = None,
    ids: Annotated[Path | None, typer.Option(
        "--ids", help="codes .npy only: int64 ids [n] (default 0..n-1)")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    backend: Annotated[str, typer.Option(
        "--backend", help="faiss (in-process, exact) or milvus (a Milvus server or a Milvus "
        "Lite .db file: --milvus-uri)")] = "faiss",
    milvus_uri: Annotated[str | None, typer.Option(
        "--milvus-uri", help="a .db file (embedded Milvus Lite) or http://host:19530")] = None,
    milvus_collection: Annotated[str | None, typer.Option(
        "--milvus-collection", help="Milvus collection name prefix")] = None,
    milvus_index: Annotated[str, typer.Option(
        "--milvus-index", help="BIN_FLAT (exact) or BIN_IVF_FLAT (approximate, faster on big "
        "collections; a Milvus server only: docs/scaling.md)")] = "BIN_FLAT",
    milvus_nlist: Annotated[int, typer.Option(
        "--milvus-nlist", min=1, help="BIN_IVF_FLAT: clusters the codes are split into")] = 1024,
    milvus_nprobe: Annotated[int, typer.Option(
        "--milvus-nprobe", min=1, help="BIN_IVF_FLAT: clusters a search visits")] = 32,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, help="processes sharing the encoding (torch.distributed)")] = 1,
    progress: ProgressOption = True,
    labels: LabelsOption = "albums",
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="no RUN: training epochs (default: FDBH's 80)")] = None,
    finetune_blocks: Annotated[int, typer.Option(
        "--finetune-blocks", min=0, help="no RUN: fine-tune the backbone's last N blocks from "
        "the block cache (slower, better codes; 0 = frozen backbone, the default)")] = 0,
    train_images: Annotated[int, typer.Option(
        "--train-images", min=2, help="no RUN: images the model learns from at most")] = 5000,
    keep_cache: Annotated[bool, typer.Option(
        "--keep-cache", help="no RUN: keep the training feature cache in DIR/training")] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="no RUN: a training config override key=value (as `contrahash train` "
        "takes them), repeatable")] = None,
) -> None:
    """Index a folder of images in one command (its model learnt from the images themselves),
    index images with a trained run, or index a codes file."""
    from contrahash.training.distributed import is_distributed

    if nproc > 1 and not is_distributed():
        relaunch(nproc)
        return
    from contrahash.retrieval.backends import INDEX_BACKENDS

    if backend not in INDEX_BACKENDS:
        fail(f"--backend must be one of {', '.join(INDEX_BACKENDS)}, got {backend!r}")
    milvus_options = {"index": milvus_index.upper(), "nlist": milvus_nlist,
                      "nprobe": milvus_nprobe}
    _check_labels(labels)
    if source is not None and (epochs is not None or finetune_blocks or overrides
                               or keep_cache or train_images != 5000):
        fail("--epochs, --finetune-blocks, --train-images, --keep-cache and --set train a model "
             "from --data: give them without a RUN (a run's model is already trained)")
    if source is None:
        if data is None:
            fail("give --data FOLDER (the images to learn from and index), or a RUN directory")
        build_library_index(data, out, bits, labels, epochs, finetune_blocks, train_images,
                            keep_cache, device, backend, milvus_uri, milvus_collection, progress,
                            milvus_options)
        return
    if source.is_dir():
        build_collection_index(source, data, out, bits, image_root, device, backend,
                               milvus_uri, milvus_collection, progress, labels, milvus_options)
        return
    if data is not None:
        fail(f"RUN {source} is not a run directory (--data indexes images with a trained run)")
    if bits is not None and len(bits) != 1:
        fail("--bits: a packed codes file has one code length")
    build_codes_index(source, out, ids, bits[0] if bits else None)


def search_command(
    target: Annotated[Path, typer.Argument(
        metavar="DIR|INDEX", help="a collection directory, or an index file (index build)")],
    queries: Annotated[Path | None, typer.Argument(
        help="with an index file: query codes .npy (±1, {0,1} or bool [q, bits])")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="collection: query by a photo")
                     ] = None,
    item_id: Annotated[int | None, typer.Option("--id", min=0,
                                                help="collection: query by a stored item")] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=100_000,
                                   help="results per query")] = 10,
    bits: Annotated[int | None, typer.Option(
        "--bits", help="collection: code length (default: the longest)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write distances/ids .npz")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print all results as JSON")] = False,
    packed: Annotated[bool, typer.Option("--packed", help="queries are packed uint8")] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="queries shown in the table")] = 5,
    backend: Annotated[str, typer.Option("--backend", help="auto | faiss | numpy | torch")
                       ] = "auto",
) -> None:
    """The k nearest items of a photo or a stored item in a collection, or of query codes in
    an index file (ranked by Hamming distance, ties by id)."""
    if target.is_dir():
        if queries is not None:
            fail(f"{target} is a directory: query codes search an index file (index build "
                 "CODES --out FILE); a collection directory is searched with --image or --id")
        search_collection(target, image, item_id, k, bits, as_json)
        return
    if queries is None:
        fail(f"INDEX {target}: give a QUERIES .npy file (or search a collection directory "
             "with --image/--id)")
    search_codes(target, queries, k, out, as_json, packed, show, backend)
