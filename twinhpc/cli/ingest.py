"""``twinhpc ingest KIND SRC --out DIR``."""

from __future__ import annotations

import argparse
import shlex
import sys

from .main import add_common, setup_logging_for

DESCRIPTION = """\
Convert a source into a sharded HDF5 dataset (format: docs/dataset-format.md).

KIND and SRC:
  npz           a .npz file; one field per array (--fields, --label)
  csv           a CSV file with a header; --label names the label column; numeric columns
                become float32 features, text columns categorical codes (levels in the manifest);
                --delimiter, --na-values
  cifar10       the directory of the official python batches (data_batch_1..5, test_batch)
  imdb          the aclImdb directory (train/{pos,neg}, test/{pos,neg}; unsup with --keep-unsup)
  image-folder  one sub-folder per class of images (jpg, png, webp, bmp, gif, tif), resized
                to --image-size; --skip-bad leaves out images that cannot be decoded
  parquet       a .parquet file or a directory of part files (as Spark writes them)
  jsonl         one JSON object per line (Yelp style): --text-field and --label
  hdf5          an HDF5 file of simulation outputs; one --field NAME=PATH per field:
                PATH a dataset whose first axis is the samples (--field u=tensor), or a
                pattern with one '*' for one group per sample (--field u=*/data: sample i
                is <i-th group>/data, groups in natural order of their names); the arrays'
                attributes and small coordinate arrays are kept in the manifest's provenance

Under `mpirun -n N` the ranks write disjoint shards; the dataset is the same for every N.
The dataset is built in a temporary directory beside DIR and renamed when complete.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ingest",
        help="convert a source into a sharded HDF5 dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", metavar="KIND", help="source kind (see above)")
    p.add_argument("src", metavar="SRC", help="source file or directory")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create")
    p.add_argument("--shards", type=int, default=1, metavar="N", help="shards per split (default 1)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="fraction of the training pool held out for validation (default 0.1)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        metavar="F",
        help="fraction held out for test (default 0.1; 0 for sources with their own test split)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split permutation (default 0)")
    p.add_argument(
        "--compression",
        choices=("none", "gzip", "lzf"),
        default="none",
        help="HDF5 compression of every field (default none)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it is a dataset (holds manifest.json), after the new one is complete",
    )
    r = p.add_argument_group("reader options (each applies to the kinds named)")
    r.add_argument("--label", help="label array/column/key/field (npz, csv, parquet, jsonl, hdf5)")
    r.add_argument(
        "--field",
        action="append",
        metavar="NAME=PATH",
        help="repeatable: field NAME from HDF5 dataset PATH (first axis = samples), or from PATH with one "
        "'*' component standing for one group per sample, e.g. u=*/data (hdf5)",
    )
    r.add_argument("--fields", help="comma-separated fields/columns to keep (npz, csv, parquet)")
    r.add_argument(
        "--categorical", help="comma-separated columns to treat as categorical (csv, parquet; default: non-numeric)"
    )
    r.add_argument("--text-field", help="text key (jsonl; default 'text')")
    r.add_argument(
        "--classes", help="comma-separated label values in class order (jsonl, csv, parquet; default: sorted)"
    )
    r.add_argument("--image-size", help="HxW (or S) images are resized to (image-folder; default 32)")
    r.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be decoded, listed in the manifest (image-folder)",
    )
    r.add_argument("--delimiter", help="field delimiter, one character or 'tab' (csv; default ',')")
    r.add_argument(
        "--na-values",
        help="comma-separated texts that mean a missing value (csv; default: empty, NA, N/A, NaN, null; "
        "'' for only the empty field)",
    )
    r.add_argument(
        "--keep-unsup", action="store_true", help="keep imdb's train/unsup reviews as split 'unlabeled' (label -1)"
    )
    add_common(p)
    return p


READER_OPTIONS = (
    "label",
    "field",
    "fields",
    "categorical",
    "text_field",
    "classes",
    "image_size",
    "keep_unsup",
    "skip_bad",
    "delimiter",
    "na_values",
)


def run(args) -> int:
    from ..comm.world import get_world
    from ..data.ingest import ingest

    world = get_world()
    setup_logging_for(args, world)
    options = {k: getattr(args, k) for k in READER_OPTIONS if getattr(args, k) not in (None, False)}
    ingest(
        args.kind,
        args.src,
        args.out,
        shards=args.shards,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        compression=args.compression,
        overwrite=args.overwrite,
        options=options,
        world=world,
        command="twinhpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    return 0
