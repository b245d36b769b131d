"""CLI: ``contrahash index build``, ``contrahash search`` and ``contrahash evaluate``.

Thin wrappers: load ``.npy`` files, call :mod:`contrahash.index` / :mod:`contrahash.metrics`,
print a rich table (or JSON with ``--json``). Errors a user can cause (a missing file, codes
of the wrong shape, a corrupted index) end with a one-line message and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

console = Console()
index_app = typer.Typer(help="Build Hamming indexes from binary codes.", no_args_is_help=True)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _load_npy(path: Path, option: str) -> np.ndarray:
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint=option)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise typer.BadParameter(f"{path} is not a readable .npy array ({exc})",
                                 param_hint=option) from None


# ----------------------------------------------------------------------------- index build


def build_command(
    codes: Annotated[Path, typer.Argument(help="codes .npy: ±1, {0,1} or bool [n, bits], "
                                               "or packed uint8 [n, ceil(bits/8)] with --bits")],
    out: Annotated[Path, typer.Option("--out", "-o", help="index file to write")],
    ids: Annotated[Path | None, typer.Option("--ids", help="int64 ids .npy [n] (default 0..n-1)")
                   ] = None,
    bits: Annotated[int | None, typer.Option("--bits", help="code length of packed uint8 codes")
                    ] = None,
) -> None:
    """Build an exact Hamming index from a codes file and save it."""
    from contrahash.index import HammingIndex

    array = _load_npy(codes, "CODES")
    id_array = _load_npy(ids, "--ids") if ids is not None else None
    if array.ndim != 2:
        raise typer.BadParameter(f"{codes}: codes must be 2-D [n, bits]; got shape {array.shape}",
                                 param_hint="CODES")
    packed = bits is not None
    n_bits = bits if packed else array.shape[1]
    try:
        index = HammingIndex(n_bits, backend="numpy")
        index.add(array, ids=id_array, packed=packed)
        path = index.save(out)
    except ValueError as exc:
        raise typer.BadParameter(f"{codes}: {exc}", param_hint="CODES") from None
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    console.print(f"indexed {len(index)} codes of {n_bits} bits -> {path}")


# ----------------------------------------------------------------------------- search


def search_command(
    index_path: Annotated[Path, typer.Argument(metavar="INDEX", help="index file (index build)")],
    queries: Annotated[Path, typer.Argument(help="query codes .npy (±1, {0,1} or bool [q, bits])")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="results per query")] = 10,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write distances/ids .npz")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print all results as JSON")] = False,
    packed: Annotated[bool, typer.Option("--packed", help="queries are packed uint8")] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="queries shown in the table")] = 5,
    backend: Annotated[str, typer.Option("--backend", help="auto | faiss | numpy | torch")
                       ] = "auto",
) -> None:
    """Search an index: the k nearest codes of each query (ties by insertion order)."""
    from contrahash.index import HammingIndex, IndexFormatError

    q = _load_npy(queries, "QUERIES")
    try:
        index = HammingIndex.load(index_path, backend=backend)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="INDEX") from None
    except (IndexFormatError, ImportError) as exc:
        _fail(str(exc))
        return
    except ValueError as exc:  # e.g. an unknown backend name
        raise typer.BadParameter(str(exc), param_hint="--backend") from None
    try:
        distances, ids = index.search(q, k, packed=packed)
    except ValueError as exc:
        raise typer.BadParameter(f"{queries}: {exc}", param_hint="QUERIES") from None
    if out is not None:
        from contrahash.io import write_npz

        write_npz(out, distances=distances, ids=ids)
    if as_json:
        typer.echo(json.dumps({"k": k, "distances": distances.tolist(), "ids": ids.tolist()}))
        return
    table = Table(title=f"top {k} of {len(index)} ({index.bits} bits) — first "
                        f"{min(show, len(ids))} of {len(ids)} queries")
    table.add_column("query", justify="right")
    table.add_column("rank", justify="right")
    table.add_column("id", justify="right")
    table.add_column("distance", justify="right")
    for qi in range(min(show, len(ids))):
        for rank in range(k):
            if ids[qi, rank] < 0:
                break
            table.add_row(str(qi) if rank == 0 else "", str(rank + 1), str(ids[qi, rank]),
                          str(distances[qi, rank]))
    console.print(table)
    if out is not None:
        console.print(f"wrote distances and ids [{len(ids)}, {k}] to {out}")


# ----------------------------------------------------------------------------- evaluate


def _report_table(reports: dict[str, dict[str, Any]], title: str, bounds: bool) -> Table:
    first = next(iter(reports.values()))
    topk = first.get("topk")
    ns = list(first.get("precision_at_n", {}))
    table = Table(title=title)
    table.add_column("bits", justify="right")
    table.add_column(f"mAP@{topk}", justify="right")
    if bounds:
        table.add_column("mAP worst…best (ties)", justify="right")
    for n in ns:
        table.add_column(f"P@{n}", justify="right")
    table.add_column("P@r≤2", justify="right")
    for bits, rep in reports.items():
        row = [str(bits), _fmt(rep.get("map"))]
        if bounds:
            row.append(f"{_fmt(rep.get('map_worst'))}…{_fmt(rep.get('map_best'))}")
        pn = rep.get("precision_at_n", {})
        row += [_fmt(pn.get(n)) for n in ns]
        row.append(_fmt(rep.get("precision_radius_2")))
        table.add_row(*row)
    return table


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def evaluate_command(
    run_dir: Annotated[Path | None, typer.Argument(help="a finished run directory (optional)")
                       ] = None,
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
    if run_dir is not None:
        reports = _evaluate_run_dir(run_dir, topk)
        title = f"{run_dir}"
    else:
        paths = {"--query-codes": query_codes, "--db-codes": db_codes,
                 "--query-labels": query_labels, "--db-labels": db_labels}
        missing = [name for name, p in paths.items() if p is None]
        if missing:
            raise typer.BadParameter(f"give a RUN_DIR, or all of {', '.join(paths)} "
                                     f"(missing {', '.join(missing)})")
        arrays = {name: _load_npy(p, name) for name, p in paths.items()}
        from contrahash.metrics import retrieval_report

        try:
            report = retrieval_report(arrays["--query-codes"], arrays["--db-codes"],
                                      arrays["--query-labels"], arrays["--db-labels"], topk=topk)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        reports = {str(report["bits"]): report}
        title = f"{query_codes.name} against {db_codes.name}"
    if as_json:
        payload = reports if run_dir is not None else next(iter(reports.values()))
        typer.echo(json.dumps(payload))
        return
    if not reports:
        _fail(f"{run_dir}: no code lengths to evaluate")
    console.print(_report_table(reports, title, bounds))


def _evaluate_run_dir(run_dir: Path, topk: int | None) -> dict[str, dict[str, Any]]:
    if not run_dir.is_dir():
        raise typer.BadParameter(f"{run_dir} is not a directory", param_hint="RUN_DIR")
    try:
        from contrahash.runs import evaluate_run
    except ImportError as exc:
        _fail(f"evaluating a run directory needs contrahash.runs ({exc})")
    try:
        result = evaluate_run(run_dir, topk=topk)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        _fail(f"{run_dir}: {exc}")
    # evaluate_run returns {"16": report, ...}; accept a results.json-like {"bits": {...}} too
    bits = result.get("bits", result) if isinstance(result, dict) else {}
    return {str(k): v for k, v in bits.items() if isinstance(v, dict)}


def register(app: typer.Typer) -> None:
    """Add ``index build``, ``search`` and ``evaluate`` to the main app."""
    index_app.command("build")(build_command)
    app.add_typer(index_app, name="index")
    app.command("search")(search_command)
    app.command("evaluate")(evaluate_command)
