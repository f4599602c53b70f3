"""Find, verify and parse the Fashion-MNIST IDX files, and split them into the training,
validation and test tensors that training, calibration, evaluation and the experiments share."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
import torch

from models.checkpoint import atomic_write_bytes

LABELS: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

# SHA-256 of the UNCOMPRESSED files: Debian recompressed the .gz files, so hashes of the
# compressed bytes (and upstream's MD5s) differ between sources while the content does not.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
VAL_SIZE = 5000  # training images held out for validation, by default
IMAGE_SHAPE = (1, 28, 28)  # [channels, height, width]: gray 28 x 28 images

# The largest real file is 47 MB; the cap stops a hostile or broken .gz from filling memory.
MAX_BYTES = 128 * 1024 * 1024
_UBYTE = 0x08


class DataError(Exception):
    pass


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcdropout" / "fashion-mnist"


def parse_idx(
    data: bytes, *, name: str = "IDX data", ndim: int | None = None
) -> npt.NDArray[np.uint8]:
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header (4 bytes)")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{name}: bad magic 0x{magic:08x}: an IDX file starts with two zero bytes "
            "(not an IDX file, or still gzip-compressed?)"
        )
    if data[2] != _UBYTE:
        raise DataError(
            f"{name}: bad magic 0x{magic:08x}: unsupported type code 0x{data[2]:02x} "
            f"(only 0x{_UBYTE:02x}, unsigned byte, is supported)"
        )
    declared = data[3]
    if not 1 <= declared <= 4:
        raise DataError(
            f"{name}: bad magic 0x{magic:08x}: declares {declared} dimensions (expected 1 to 4)"
        )
    if ndim is not None and declared != ndim:
        raise DataError(f"{name}: header declares {declared} dimensions, expected {ndim}")
    header = 4 + 4 * declared
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(declared))
    count = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header
    if body < count:
        raise DataError(
            f"{name}: truncated: dimensions {dims} need {count} bytes of data, got {body}"
        )
    if body > count:
        raise DataError(f"{name}: {body - count} trailing bytes after the {dims} data")
    # A writable copy: frombuffer over bytes is read-only, and torch.from_numpy warns on that.
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def _gunzip(raw: bytes, name: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt gzip data ({e}); delete it and fetch it again") from e
    if len(data) > MAX_BYTES:
        raise DataError(f"{name}: decompresses to more than {MAX_BYTES} bytes; not Fashion-MNIST")
    return data


def _check_sha256(data: bytes, sha256: str, name: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.lower():
        raise DataError(
            f"{name}: SHA-256 of the uncompressed data is {got}, expected {sha256}: the file is "
            "corrupt or not the upstream Fashion-MNIST file; delete it and fetch it again"
        )


def read_verified(path: Path, sha256: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if path.suffix == ".gz":
        data = _gunzip(data, str(path))
    if sha256 is not None:
        _check_sha256(data, sha256, str(path))
    return data


@dataclass(frozen=True, eq=False)
class FashionMNIST:
    train_images: npt.NDArray[np.uint8]  # [60000, 28, 28]
    train_labels: npt.NDArray[np.uint8]  # [60000]
    test_images: npt.NDArray[np.uint8]  # [10000, 28, 28]
    test_labels: npt.NDArray[np.uint8]  # [10000]
    source: str  # the folder the files came from, or "download"
    sha256: dict[str, str]  # file stem -> SHA-256 of its uncompressed bytes

    def __post_init__(self) -> None:
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.dtype != np.uint8 or labels.dtype != np.uint8:
                raise DataError(f"{split}: images and labels must be uint8")
            if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:]:
                raise DataError(
                    f"{split}: images have shape {images.shape}, "
                    f"expected [n, {IMAGE_SHAPE[1]}, {IMAGE_SHAPE[2]}]"
                )
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(f"{split}: {len(images)} images but labels of shape {labels.shape}")
            if labels.size and int(labels.max()) >= len(LABELS):
                raise DataError(f"{split}: label {int(labels.max())} is not below {len(LABELS)}")


def _find(folder: Path, stem: str) -> Path | None:
    # Prefer the .gz: it is what Debian ships and what download() writes.
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path, stems: Mapping[str, str]) -> list[str]:
    return [stem for stem in stems if _find(folder, stem) is None]


def _help(cache: Path, base_url: str, stems: Mapping[str, str]) -> str:
    names = ", ".join(f"{stem}.gz" for stem in stems)
    return (
        "To get Fashion-MNIST, do one of:\n"
        f"  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (installs {DEBIAN_DIR})\n"
        f"  - download {names} from {base_url} into {cache}\n"
        f"  - set {ENV_VAR}=/path/to/folder or pass --data-dir /path/to/folder"
    )


class LocateOptions(TypedDict, total=False):
    """The keyword options of locate() and load_fashion_mnist()."""

    hashes: Mapping[str, str]  # file stem -> SHA-256 of its uncompressed bytes; default FILES
    base_url: str  # where missing files are downloaded from; default UPSTREAM_URL
    download: bool  # download them into the cache if no folder holds them; default True
    cache_dir: Path | None  # the cache; default default_cache_dir()


def _locate(explicit: Path | None, options: LocateOptions) -> tuple[Path, bool]:
    hashes = options.get("hashes", FILES)
    base_url = options.get("base_url", UPSTREAM_URL)
    cache_dir = options.get("cache_dir")
    env = os.environ.get(ENV_VAR)
    for given, origin in ((explicit, "--data-dir"), (Path(env) if env else None, ENV_VAR)):
        if given is None:
            continue
        # A folder the user named is never silently replaced by another one.
        missing = _missing(given, hashes)
        if missing:
            raise DataError(
                f"{given} (from {origin}) does not hold {', '.join(missing)} "
                "(each as <name> or <name>.gz)"
            )
        return given, False
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    for folder in (DEBIAN_DIR, cache):
        if not _missing(folder, hashes):
            return folder, False
    looked = f"Fashion-MNIST not found in {DEBIAN_DIR} or {cache}"
    if not options.get("download", True):
        raise DataError(f"{looked}.\n{_help(cache, base_url, hashes)}")
    try:
        download(cache, base_url=base_url, hashes=hashes)
    except DataError as e:
        msg = f"{looked}, and downloading failed: {e}\n{_help(cache, base_url, hashes)}"
        raise DataError(msg) from e
    return cache, True


def locate(explicit: Path | None = None, **options: Unpack[LocateOptions]) -> Path:
    """The folder that holds the files: explicit, else $FASHION_MNIST_DIR, else Debian's folder
    or the cache, else the cache after downloading them there."""
    return _locate(explicit, options)[0]


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw: bytes = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DataError(f"cannot download {url}: {reason}") from e
    if len(raw) > MAX_BYTES:
        raise DataError(f"cannot download {url}: larger than {MAX_BYTES} bytes")
    return raw


def download(dest: Path, *, base_url: str, hashes: Mapping[str, str], timeout: float = 60) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for stem, sha256 in hashes.items():
        url = f"{base_url.rstrip('/')}/{stem}.gz"
        raw = _fetch(url, timeout)
        # Verify before anything lands on disk under a name that locate() would accept.
        _check_sha256(_gunzip(raw, url), sha256, url)
        atomic_write_bytes(dest / f"{stem}.gz", raw)


def load_fashion_mnist(
    explicit: Path | None = None, **options: Unpack[LocateOptions]
) -> FashionMNIST:
    """The four files from the folder locate() finds, each verified and parsed."""
    hashes = options.get("hashes", FILES)
    if set(hashes) != set(FILES):
        raise ValueError(f"hashes must have exactly the keys {sorted(FILES)}")
    folder, downloaded = _locate(explicit, options)
    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    for stem, sha256 in hashes.items():
        path = _find(folder, stem)
        if path is None:  # removed since _locate looked
            raise DataError(f"{folder / stem}(.gz) disappeared while loading")
        ndim = 3 if "images" in stem else 1
        arrays[stem] = parse_idx(read_verified(path, sha256), name=str(path), ndim=ndim)
    return FashionMNIST(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
        source="download" if downloaded else str(folder),
        sha256={stem: sha.lower() for stem, sha in hashes.items()},
    )


def split_validation(
    n: int, val_size: int, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if not 0 < val_size < n:
        raise ValueError(
            f"val_size must be greater than 0 and less than n={n} (got {val_size}), "
            "so that both the training and the validation split are non-empty"
        )
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


@dataclass
class Split:
    X: torch.Tensor  # [n, 784] float32 in [0, 1]
    y: torch.Tensor  # [n] int64

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray) -> Split:
        X = torch.from_numpy(images.reshape(len(images), -1)).float().div_(255.0)
        return cls(X, torch.from_numpy(labels.astype(np.int64)))

    def to(self, device: torch.device) -> Split:
        return Split(self.X.to(device), self.y.to(device))


def load_splits(
    data_dir: Path | None = None, *, val_size: int = VAL_SIZE, limit: int | None = None
) -> tuple[FashionMNIST, Split, Split, Split]:
    """(data, train, val, test): validation held out of the training images by the fixed
    permutation of split_validation; limit keeps the first N training examples only."""
    data = load_fashion_mnist(data_dir)
    train_idx, val_idx = split_validation(len(data.train_labels), val_size)
    if limit is not None:
        train_idx = train_idx[:limit]
    train = Split.from_numpy(data.train_images[train_idx], data.train_labels[train_idx])
    val = Split.from_numpy(data.train_images[val_idx], data.train_labels[val_idx])
    test = Split.from_numpy(data.test_images, data.test_labels)
    return data, train, val, test
