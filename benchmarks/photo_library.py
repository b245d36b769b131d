"""A phone-style photo library through the one command, timed; rotated against upright
retrieval; a sync after deletions and edits, checked through a running server.

1. Writes a folder of ``--photos`` CIFAR-10 JPEGs upscaled to ``--size`` (year folders,
   albums, loose photos at the top, 15% stored sideways with EXIF Orientation 6, PNG with
   alpha, WebP, CMYK, 16-bit and animated files, junk files): :mod:`contrahash.library.
   synthetic`. Writing it is not part of the timed build.
2. Runs ``contrahash index build --data FOLDER --out DIR`` in a subprocess (empty caches: the
   run's cache lives inside DIR) and times it; reads the first printed estimate.
3. Queries the collection with every rotated photo's file, with the same photos turned
   upright and saved without the tag (paired), and with as many other upright photos
   (unpaired): precision@10 by the hidden CIFAR class (the query's own item left out).
4. Starts ``contrahash serve DIR``, then deletes ``--delete`` photos, edits ``--edit`` (brightness,
   re-saved), touches ``--touch`` (same bytes, new mtime), runs ``contrahash index sync DIR
   --json``, asks the server to reload, and sends ``--searches`` searches (half by id, half by
   uploading a photo) counting results that are deleted photos; every deleted id must 404.

Ends with one line::

    photos=… build_s=… train_s=… self_retrieval_64=… first_estimate_s=… estimate_error=…
    p10_rotated=… p10_rotated_turned_upright=… p10_upright=…
    sync_added=… sync_removed=… sync_changed=… sync_unchanged=… sync_encoded=… sync_s=…
    deleted_returned=… deleted_ids_404=…

Example: ``python benchmarks/photo_library.py --photos 2000 --work /tmp/photos``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _cifar(arg: str | None) -> Path:
    from contrahash.library.synthetic import find_cifar10

    return find_cifar10(arg) or sys.exit("error: give --cifar PATH (the packed CIFAR-10 copy)")


def _cli(*args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "contrahash.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _seconds(text: str) -> float:
    """``3 min 05 s`` / ``42 s`` / ``1 h 02 min`` → seconds."""
    total = 0.0
    for value, unit in re.findall(r"(\d+)\s*(h|min|s)\b", text):
        total += int(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


def precision_at_10(index_dir: Path, photos: list, n_upright: int | None = None,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean precision@10 by hidden class of: the rotated photos' files (stored sideways with
    EXIF Orientation 6), the same photos turned upright and saved without the tag (a paired
    comparison), and as many other upright photos (the unpaired one)."""
    import io

    from contrahash.data.images import decode_upright
    from contrahash.retrieval.collection import open_collection

    rng = random.Random(seed)
    rotated = [p for p in photos if p.rotated]
    upright = [p for p in photos if p.kind == "jpeg"]
    upright = rng.sample(upright, min(len(upright), n_upright or len(rotated)))
    label = {str(p.path): p.label for p in photos}

    def turned(photo) -> bytes:
        buf = io.BytesIO()
        decode_upright(photo.path.read_bytes())[0].save(buf, "JPEG", quality=90)
        return buf.getvalue()

    out = []
    with open_collection(index_dir) as coll:
        bits = coll.default_bits
        id_of = {coll.item(i).path: int(i) for i in coll.live_ids()}
        class_of = {i: label.get(p) for p, i in id_of.items()}
        for group, data in ((rotated, lambda p: p.path.read_bytes()), (rotated, turned),
                            (upright, lambda p: p.path.read_bytes())):
            scores = []
            for photo in group:
                code = coll.encode([coll.decode_image(data(photo))])[bits]
                hits = [h for h in coll.search_codes(code, 11, bits)[0]
                        if h.id != id_of[str(photo.path)]][:10]
                scores.append(np.mean([class_of[h.id] == photo.label for h in hits]))
            out.append(float(np.mean(scores)))
    return out[0], out[1], out[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync_through_server(index_dir: Path, root: Path, photos: list, *, delete: int, edit: int,
                        touch: int, searches: int, seed: int = 0) -> dict:
    import httpx
    from PIL import Image, ImageEnhance

    rng = random.Random(seed)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen([sys.executable, "-m", "contrahash.cli", "serve", str(index_dir),
                               "--port", str(port), "--no-warm-up", "--log-level", "warning"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            ids_before = {}
            from contrahash.retrieval.collection import open_collection

            with open_collection(index_dir) as coll:
                ids_before = {coll.item(i).path: int(i) for i in coll.live_ids()}
            jpegs = [p for p in photos if p.path.suffix == ".jpg" and str(p.path) in ids_before]
            rng.shuffle(jpegs)
            deleted = jpegs[:delete]
            edited = jpegs[delete:delete + edit]
            touched = jpegs[delete + edit:delete + edit + touch]
            for p in deleted:
                p.path.unlink()
            for p in edited:
                with Image.open(p.path) as img:
                    exif = img.info.get("exif")
                    brighter = ImageEnhance.Brightness(img.convert("RGB")).enhance(1.2)
                    brighter.save(p.path, "JPEG", quality=90, **({"exif": exif} if exif else {}))
            for p in touched:
                os.utime(p.path, None)
            t0 = time.perf_counter()
            res = _cli("index", "sync", str(index_dir), "--json", "--no-progress")
            sync_s = time.perf_counter() - t0
            if res.returncode != 0:
                sys.exit(f"sync failed: {res.stdout}{res.stderr}")
            report = json.loads(res.stdout.strip().splitlines()[-1])
            client.post("/api/reload")
            gone = {ids_before[str(p.path)] for p in deleted}
            alive = [p for p in jpegs[delete:]]
            returned = 0
            for s in range(searches):
                if s % 2 == 0:
                    item = ids_before[str(rng.choice(alive).path)]
                    r = client.get("/api/search", params={"id": item, "k": 20})
                else:
                    photo = rng.choice(alive)
                    r = client.post("/api/search", data={"k": "20"},
                                    files={"image": (photo.path.name, photo.path.read_bytes(),
                                                     "image/jpeg")})
                r.raise_for_status()
                hits = r.json()["results"]
                returned += sum(1 for h in hits if int(h["id"]) in gone)
            not_found = sum(client.get(f"/api/items/{i}").status_code == 404 for i in gone)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return {**{f"sync_{k}": v for k, v in report.items()}, "sync_s": round(sync_s, 1),
            "deleted_returned": returned, "deleted_ids_404": f"{not_found}/{len(gone)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", help="the packed CIFAR-10 JPEG copy (.npz)")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--size", default="1600x1200", help="photo size WxH")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--delete", type=int, default=100)
    parser.add_argument("--edit", type=int, default=50)
    parser.add_argument("--touch", type=int, default=50)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--no-sync", action="store_true", help="stop after the quality check")
    parser.add_argument("--build-args", default="", help="extra arguments for index build")
    parser.add_argument("--reuse-folder", action="store_true",
                        help="keep WORK/Pictures when it exists (same --photos/--size/seed)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from contrahash.library.synthetic import make_photo_folder

    w, h = (int(v) for v in args.size.lower().split("x"))
    root, out = args.work / "Pictures", args.work / "photos.index"
    reuse = args.reuse_folder and root.is_dir()
    if reuse:
        shutil.rmtree(out, ignore_errors=True)
    else:
        shutil.rmtree(args.work, ignore_errors=True)
    t0 = time.perf_counter()
    photos = make_photo_folder(_cifar(args.cifar), root, args.photos, size=(w, h),
                               write=not reuse)
    print(f"wrote {len(photos)} photos in {time.perf_counter() - t0:.1f} s "
          f"({sum(p.path.stat().st_size for p in photos) / 2**20:.0f} MiB)", file=sys.stderr)
    t0 = time.perf_counter()
    res = _cli("index", "build", "--data", str(root), "--out", str(out), "--no-progress",
               *args.build_args.split())
    build_s = time.perf_counter() - t0
    sys.stderr.write(res.stdout + res.stderr)
    if res.returncode != 0:
        sys.exit(f"index build failed ({res.returncode})")
    first = re.search(r"estimated total time ([^(]+)\(", res.stdout)
    first_s = _seconds(first.group(1)) if first else float("nan")
    p10_rot, p10_turned, p10_up = precision_at_10(out, photos)
    training = json.loads((out / "training" / "results.json").read_text())
    self64 = training["bits"].get("64", {}).get("self_retrieval_at_10", float("nan"))
    result = {"photos": len(photos), "build_s": round(build_s, 1),
              "train_s": training.get("train_seconds"), "self_retrieval_64": round(self64, 4),
              "first_estimate_s": round(first_s, 1),
              "estimate_error": round((first_s - build_s) / build_s, 3),
              "p10_rotated": round(p10_rot, 4), "p10_rotated_turned_upright": round(p10_turned, 4),
              "p10_upright": round(p10_up, 4)}
    print(" ".join(f"{k}={v}" for k, v in result.items()), file=sys.stderr)
    if not args.no_sync:
        result.update(sync_through_server(out, root, photos, delete=args.delete,
                                          edit=args.edit, touch=args.touch,
                                          searches=args.searches))
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
