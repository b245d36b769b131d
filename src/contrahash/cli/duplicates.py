"""``contrahash duplicates DIR``: groups of near-duplicate photos of a collection.

Thin: opens the collection, calls :func:`contrahash.retrieval.duplicates.find_duplicates`, prints the
groups (largest first) or, with ``--json``, one object
``{"radius": r, "bits": b, "groups": [[{"id", "path", "distance", "exact"}, …], …]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from contrahash.cli.common import console

__all__ = ["duplicates_command", "groups_as_json"]


def groups_as_json(collection: Any, bits: int, radius: int, groups: list) -> dict[str, Any]:
    """The ``--json`` document: each member's id, source path, distance to the group's first
    member, and ``exact`` when its file is byte-identical to another member's."""
    out = []
    for group in groups:
        members = []
        for m in group:
            item = collection.item(m.id)
            members.append({"id": m.id, "path": item.path, "distance": m.distance,
                            "exact": m.exact})
        out.append(members)
    return {"radius": radius, "bits": bits, "groups": out}


def duplicates_command(
    directory: Annotated[Path, typer.Argument(help="a collection directory")],
    radius: Annotated[int | None, typer.Option(
        "--radius", help="largest Hamming distance between two duplicates (default: the "
        "measured default of the perceptual codes, docs/duplicates.md)")] = None,
    bits: Annotated[int | None, typer.Option(
        "--bits", help="group by the collection's semantic codes of this length instead "
        "(similar photos, not duplicates)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the groups as JSON")] = False,
) -> None:
    """Groups of near-duplicate photos (resized, re-compressed, lightly cropped or brightened
    copies): connected components of "within --radius" on the collection's perceptual codes."""
    from contrahash.retrieval.collection import open_collection
    from contrahash.retrieval.duplicates import DEFAULT_RADIUS, find_duplicates

    r = DEFAULT_RADIUS if radius is None else radius
    with open_collection(directory) as collection:
        used_bits, groups = find_duplicates(collection, r, bits)
        document = groups_as_json(collection, used_bits, r, groups)
    if as_json:
        typer.echo(json.dumps(document))
        return
    total = sum(len(g) for g in document["groups"])
    console.print(f"{len(document['groups']):,} groups of duplicates ({total:,} items) within "
                  f"radius {r} on {used_bits}-bit codes", highlight=False)
    for n, group in enumerate(document["groups"], 1):
        console.print(f"[bold]group {n}[/] ({len(group)} items)", highlight=False)
        for m in group:
            mark = "  same file" if m["exact"] else ""
            console.print(f"  {m['id']:>8}  d={m['distance']:<3} {m['path']}{mark}",
                          highlight=False, markup=False)
