"""``image-folder``: one sub-folder per class of images (the torchvision ImageFolder layout).

SRC holds one folder per class; the class names are the folder names, sorted, and the label is
the index in that order. Images are the files directly inside a class folder whose extension, in
any case, is one Pillow reads: ``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.bmp``, ``.gif``,
``.tif``, ``.tiff``. Hidden files (``.*``), nested folders and files directly in SRC are ignored;
other files are skipped and counted by extension (a warning, and ``skipped_by_extension`` in the
manifest's provenance details). A class folder without images is an error (its class would never
occur). Global order: classes in sorted order, files sorted by name inside each.

Fields: ``image`` uint8 (H, W, 3), ``label`` int64. Each image is decoded with Pillow (a GIF's
first frame), turned upright by its EXIF orientation tag, converted to RGB (grayscale
replicated, alpha dropped, palette expanded) and, unless it already has that size, resized to
``--image-size`` (``HxW`` or ``S`` for S x S; default 32) with bilinear filtering; the aspect ratio
is not kept. 16-bit samples (greyscale PNG/TIFF from scientific cameras and depth sensors, mode
``I;16`` or ``I``) are scaled to 8 bits (``round(v * 255 / 65535)``), never clipped; a 32-bit
integer image with samples above 65535 and a floating-point image (mode ``F``) are errors naming
the file.

:meth:`ImageFolderSource.open` lists the files and decodes each once to find the bad ones (not
an image, truncated, corrupt): without ``--skip-bad`` that is an
:class:`~twinhpc.errors.IngestError` naming every bad file; with ``--skip-bad`` they are left out,
logged, and listed (with the reason) under ``skipped_bad`` in the manifest's provenance details.
:meth:`ImageFolderSource.read` decodes the images again; a file that fails there (changed since
:meth:`~ImageFolderSource.open`) raises IngestError naming it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
log = logging.getLogger("twinhpc")
DEFAULT_SIZE = 32
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


def parse_image_size(value, where: Path) -> tuple[int, int]:
    """``"HxW"`` or ``"S"`` (or an int) -> ``(H, W)``; IngestError naming ``where`` and ``--image-size`` otherwise."""
    m = _SIZE_RE.match(str(value))
    h, w = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
    if h < 1 or w < 1:
        raise IngestError(f"{where}: --image-size must be HxW or S with positive integers, got {value!r}")
    return h, w


def to_rgb8(im, path: Path):
    """A Pillow image as 8-bit RGB: 16-bit samples scaled to 0..255, everything else converted."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise IngestError(
                f"{path}: {im.mode} image with samples in {a.min()}..{a.max()}, outside the 16-bit range 0..65535"
            )
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif im.mode == "F":
        raise IngestError(f"{path}: floating-point image (mode F); convert it to 8 or 16 bits")
    return im.convert("RGB")


class ImageFolderSource(Source):
    kind = "image-folder"
    option_help = {
        "image_size": f"HxW (or S) images are resized to (default {DEFAULT_SIZE})",
        "skip_bad": "leave out images that cannot be decoded (listed in the manifest's provenance)",
    }

    def open(self) -> SourceInfo:
        self.require_exists(directory=True)
        self._size = parse_image_size(self.option("image_size", DEFAULT_SIZE), self.path)
        class_dirs = sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise IngestError(f"{self.path}: the source is empty (no class sub-folders)")
        files: list[Path] = []
        labels: list[int] = []
        skipped: Counter[str] = Counter()
        for label, folder in enumerate(class_dirs):
            images = []
            for p in sorted(folder.iterdir()):
                if p.name.startswith(".") or not p.is_file():
                    continue
                if p.suffix.lower() in EXTENSIONS:
                    images.append(p)
                else:
                    skipped[p.suffix.lower() or "(none)"] += 1
            if not images:
                raise IngestError(f"{folder}: class folder holds no images ({', '.join(EXTENSIONS)})")
            files += images
            labels += [label] * len(images)
        details: dict = {}
        if skipped:
            details["skipped_by_extension"] = dict(sorted(skipped.items()))
            log.warning(
                "%s: skipped %d file(s) that are no images by extension: %s",
                self.path,
                sum(skipped.values()),
                ", ".join(f"{n} {e}" for e, n in sorted(skipped.items())),
            )
        bad: dict[int, str] = {}
        for k, p in enumerate(files):
            try:
                self._decode(p)
            except IngestError as e:
                bad[k] = str(e)
        if bad and not self.option("skip_bad"):
            raise IngestError(
                f"{self.path}: {len(bad)} image(s) cannot be decoded (leave them out with --skip-bad):\n"
                + "\n".join(bad.values())
            )
        if bad:
            details["skipped_bad"] = [
                {"file": str(files[k].relative_to(self.path)), "error": e} for k, e in bad.items()
            ]
            log.warning("%s: --skip-bad left out %d image(s):\n%s", self.path, len(bad), "\n".join(bad.values()))
            keep = [k for k in range(len(files)) if k not in bad]
            files = [files[k] for k in keep]
            labels = [labels[k] for k in keep]
            emptied = [d.name for i, d in enumerate(class_dirs) if i not in labels]
            if emptied:
                raise IngestError(f"{self.path}: class folder(s) {emptied} hold no readable image after --skip-bad")
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        h, w = self._size
        return SourceInfo(
            (FieldSpec("image", "uint8", (h, w, 3)), FieldSpec("label", "int64")),
            len(files),
            label_field="label",
            classes=tuple(p.name for p in class_dirs),
            details={"image_size": [h, w], **details},
        )

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image, ImageOps

        h, w = self._size
        try:
            with Image.open(path) as im:
                im.draft("RGB", (max(h, w), max(h, w)))  # JPEG: let the decoder scale down (cheap)
                rgb = to_rgb8(ImageOps.exif_transpose(im), path)
                if rgb.size != (w, h):
                    rgb = rgb.resize((w, h), Image.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise IngestError(f"{path}: not a readable image ({e})") from None

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Decode the images at ``indices``; one that cannot be decoded raises IngestError naming it."""
        h, w = self._size
        images = np.empty((len(indices), h, w, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            images[k] = self._decode(self._files[i])
        return {"image": images, "label": self._labels[indices]}
