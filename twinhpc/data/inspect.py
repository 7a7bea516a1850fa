"""``twinhpc inspect`` and ``twinhpc verify``: what a dataset holds, and whether it is intact."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..comm.world import World
from ..errors import DatasetError
from .format import MANIFEST, Manifest, parse_shard_name, sha256_file
from .shards import check_shard_schema, open_shard


def _field_stats(values: np.ndarray, is_text: bool) -> dict:
    if is_text:
        lengths = np.array([len(v) for v in values]) if len(values) else np.zeros(0)
        words = np.array([len(v.split()) for v in values]) if len(values) else np.zeros(0)
        return {
            "chars_mean": float(lengths.mean()) if lengths.size else 0.0,
            "chars_max": int(lengths.max()) if lengths.size else 0,
            "words_mean": float(words.mean()) if words.size else 0.0,
        }
    if values.size == 0:
        return {}
    v = values.astype(np.float64, copy=False)
    finite = np.isfinite(v)
    out = {
        "min": float(np.nanmin(v)) if finite.any() else float("nan"),
        "max": float(np.nanmax(v)) if finite.any() else float("nan"),
        "mean": float(np.nanmean(v)) if finite.any() else float("nan"),
        "std": float(np.nanstd(v)) if finite.any() else float("nan"),
    }
    if not finite.all():
        out["non_finite"] = int((~finite).sum())
    return out


def inspect_dataset(directory: str | os.PathLike, max_samples: int = 10000) -> dict:
    """Summary of a dataset: schema, splits, counts, and per-field statistics.

    ``stats`` come from at most ``max_samples`` samples per split (the first rows of each shard;
    samples are stored shuffled, so these are a random sample); class counts of the label field
    use every sample; the manifest's ``statistics`` (NaN/inf counts of float fields and labels
    outside the classes, counted over every sample at ingest) are part of the report as stored.
    Raises :class:`DatasetError` naming a missing or unreadable shard.
    """
    directory = Path(directory)
    m = Manifest.load(directory)
    report = {"path": str(directory.absolute()), **m.to_dict(), "stats": {}, "class_counts": {}}
    for split in m.splits:
        per_shard = max(1, -(-max_samples // max(1, len(split.shards))))
        samples: dict[str, list] = {f.name: [] for f in m.fields}
        labels = []
        for sh in split.shards:
            path = directory / sh.file
            with open_shard(path) as f:
                for spec in m.fields:
                    if spec.name not in f:
                        raise DatasetError(f"{path}: field {spec.name!r} is missing")
                    ds = f[spec.name].asstr() if spec.is_text else f[spec.name]
                    samples[spec.name].append(ds[: min(per_shard, sh.count)])
                if m.label_field and m.label_field in f:
                    labels.append(f[m.label_field][:])
        report["stats"][split.name] = {
            spec.name: _field_stats(
                np.concatenate(samples[spec.name]) if samples[spec.name] else np.zeros(0), spec.is_text
            )
            for spec in m.fields
        }
        if labels and m.classes:
            y = np.concatenate(labels).astype(np.int64)
            counts = np.bincount(y[y >= 0], minlength=len(m.classes))
            report["class_counts"][split.name] = {
                m.classes[i] if i < len(m.classes) else str(i): int(c) for i, c in enumerate(counts)
            }
    return report


def format_report(r: dict) -> str:
    """The human-readable form of :func:`inspect_dataset`'s report."""
    lines = [f"dataset {r['path']}  (format {r['format']} v{r['version']})"]
    prov = r.get("provenance", {})
    if prov:
        lines.append(
            f"  source   {prov.get('kind', '?')} {prov.get('source', '?')}  "
            f"(created {prov.get('created', '?')} by twinhpc {prov.get('twinhpc_version', '?')}, "
            f"seed {prov.get('seed', '?')})"
        )
    lines.append("  fields")
    for f in r["fields"]:
        shape = "x".join(map(str, f["shape"])) or "scalar"
        role = "  (label)" if f["name"] == r.get("label_field") else ""
        lines.append(f"    {f['name']:<16} {f['dtype']:<8} {shape}{role}")
    if r.get("classes"):
        shown = ", ".join(r["classes"][:12]) + (", ..." if len(r["classes"]) > 12 else "")
        lines.append(f"  classes  {len(r['classes'])}: {shown}")
    for col, levels in r.get("categorical", {}).items():
        lines.append(
            f"  categorical {col}: {len(levels)} levels ({', '.join(levels[:8])}{', ...' if len(levels) > 8 else ''})"
        )
    lines.append("  splits")
    for name, s in r["splits"].items():
        lines.append(f"    {name:<10} {s['count']:>10} samples in {len(s['shards'])} shard(s)")
    for name, stats in r["stats"].items():
        lines.append(f"  statistics ({name}, up to the first samples of each shard)")
        for field, st in stats.items():
            lines.append(
                f"    {field:<16} "
                + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in st.items())
            )
        counted = r.get("statistics", {}).get(name, {})
        for field, c in counted.items():
            parts = []
            if "nan" in c:
                parts.append(f"nan={c['nan']}  inf={c['inf']}")
            if "outside_classes" in c:
                outside = c["outside_classes"]
                parts.append(
                    "labels outside the classes: "
                    + (", ".join(f"{v} ({k} samples)" for v, k in outside.items()) if outside else "none")
                )
            lines.append(f"    {field:<16} every sample (counted at ingest): " + "; ".join(parts))
        if name in r["class_counts"]:
            cc = r["class_counts"][name]
            lines.append(
                "    class counts "
                + ", ".join(f"{k}:{v}" for k, v in list(cc.items())[:12])
                + (" ..." if len(cc) > 12 else "")
            )
    return "\n".join(lines)


def verify_shards(directory: Path, manifest: Manifest, rank: int, size: int) -> list[str]:
    """Problems found in this rank's share of the shards (every ``size``-th shard from ``rank``)."""
    problems = []
    shards = [sh for s in manifest.splits for sh in s.shards]
    for sh in shards[rank::size]:
        path = directory / sh.file
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        digest = sha256_file(path)
        if digest != sh.sha256:
            problems.append(f"{path}: checksum mismatch (sha256 {digest[:16]}..., manifest says {sh.sha256[:16]}...)")
            continue
        try:
            with open_shard(path) as f:
                problems += check_shard_schema(f, path, manifest.fields, sh.count)
        except DatasetError as e:
            problems.append(str(e))
    return problems


def verify_dataset(directory: str | os.PathLike, world: World) -> tuple[Manifest, list[str], list[str]]:
    """Collective: check every shard's checksum and schema against the manifest.

    The shards are divided among the ranks. Returns ``(manifest, problems, warnings)`` on every
    rank; ``problems`` names each bad shard (missing, checksum mismatch, schema mismatch),
    ``warnings`` names files in the directory that the manifest does not list. A missing or
    malformed manifest raises :class:`DatasetError` on every rank.
    """
    directory = Path(directory)
    manifest = world.run(lambda: Manifest.load(directory), DatasetError)
    mine = verify_shards(directory, manifest, world.rank, world.size)
    problems = sorted(p for part in world.allgather(mine) for p in part)
    listed = {sh.file for s in manifest.splits for sh in s.shards} | {MANIFEST}
    warnings = sorted(
        f"{directory / n}: not listed in the manifest"
        for n in os.listdir(directory)
        if n not in listed and parse_shard_name(n) is not None
    )
    return manifest, problems, warnings
