"""``image-folder``: one sub-folder per class of JPEG/PNG images (the torchvision ImageFolder layout).

SRC holds one folder per class; the class names are the folder names, sorted, and the label is
the index in that order. Images are the files directly inside a class folder whose extension is
``.jpg``, ``.jpeg`` or ``.png`` in any case; other files, hidden files (``.*``), nested folders and
files directly in SRC are ignored. A class folder without images is an error (its class would
never occur). Global order: classes in sorted order, files sorted by name inside each.

Fields: ``image`` uint8 (H, W, 3), ``label`` int64. Each image is decoded with Pillow, converted to
RGB (grayscale replicated, alpha dropped) and, unless it already has that size, resized to
``--image-size`` (``HxW`` or ``S`` for S x S; default 32) with bilinear filtering; the aspect ratio
is not kept.

:meth:`ImageFolderSource.open` only lists the files; images are decoded in
:meth:`ImageFolderSource.read`, where a file Pillow cannot decode (not an image, truncated,
corrupt) raises :class:`~twinhpc.errors.IngestError` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo

EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_SIZE = 32
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


def parse_image_size(value, where: Path) -> tuple[int, int]:
    """``"HxW"`` or ``"S"`` (or an int) -> ``(H, W)``; IngestError naming ``where`` and ``--image-size`` otherwise."""
    m = _SIZE_RE.match(str(value))
    h, w = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
    if h < 1 or w < 1:
        raise IngestError(f"{where}: --image-size must be HxW or S with positive integers, got {value!r}")
    return h, w


class ImageFolderSource(Source):
    kind = "image-folder"
    option_help = {"image_size": f"HxW (or S) images are resized to (default {DEFAULT_SIZE})"}

    def open(self) -> SourceInfo:
        self.require_exists(directory=True)
        self._size = parse_image_size(self.option("image_size", DEFAULT_SIZE), self.path)
        class_dirs = sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise IngestError(f"{self.path}: the source is empty (no class sub-folders)")
        files: list[Path] = []
        labels: list[int] = []
        for label, folder in enumerate(class_dirs):
            images = sorted(
                p
                for p in folder.iterdir()
                if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".") and p.is_file()
            )
            if not images:
                raise IngestError(f"{folder}: class folder holds no .jpg/.jpeg/.png images")
            files += images
            labels += [label] * len(images)
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        h, w = self._size
        return SourceInfo(
            (FieldSpec("image", "uint8", (h, w, 3)), FieldSpec("label", "int64")),
            len(files),
            label_field="label",
            classes=tuple(p.name for p in class_dirs),
            details={"image_size": [h, w]},
        )

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        h, w = self._size
        try:
            with Image.open(path) as im:
                im.draft("RGB", (w, h))  # JPEG: let the decoder scale down (cheap); no-op otherwise
                rgb = im.convert("RGB")
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
