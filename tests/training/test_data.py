from __future__ import annotations

import gzip
import hashlib
import http.server
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers import http_server
from training import data
from training.data import (
    FILES,
    DataError,
    load_fashion_mnist,
    locate,
    parse_idx,
    read_verified,
    split_validation,
)


def idx_bytes(array: npt.NDArray[np.uint8], type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def fake_arrays(seed: int = 0) -> dict[str, npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(10, dtype=np.uint8)[::-1].copy(),
    }


@dataclass
class FakeSet:
    arrays: dict[str, npt.NDArray[np.uint8]]
    raw: dict[str, bytes] = field(init=False)
    hashes: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.raw = {stem: idx_bytes(a) for stem, a in self.arrays.items()}
        self.hashes = {stem: hashlib.sha256(b).hexdigest() for stem, b in self.raw.items()}

    def write(self, folder: Path, *, gz: bool = True, skip: tuple[str, ...] = ()) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for stem, raw in self.raw.items():
            if stem in skip:
                continue
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        return folder


@pytest.fixture
def fake() -> FakeSet:
    return FakeSet(fake_arrays())


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real data set, env var or user cache is visible; returns the cache folder."""
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mcdropout" / "fashion-mnist"


# --- parse_idx ---------------------------------------------------------------------------


def test_parse_idx_round_trips_images_and_labels(fake: FakeSet) -> None:
    for stem, array in fake.arrays.items():
        parsed = parse_idx(fake.raw[stem], name=stem)
        assert parsed.dtype == np.uint8
        assert parsed.shape == array.shape
        np.testing.assert_array_equal(parsed, array)
        assert parsed.flags.writeable


def test_parse_idx_generic_ndim() -> None:
    array = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(parse_idx(idx_bytes(array)), array)


LABELS_7 = np.arange(7, dtype=np.uint8)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x00\x00\x09\x03" + idx_bytes(LABELS_7)[4:], "bad magic 0x00000903: unsupported"),
        (b"\x01\x00\x08\x01" + idx_bytes(LABELS_7)[4:], "bad magic 0x01000801"),
        (gzip.compress(idx_bytes(LABELS_7)), "bad magic"),
        (idx_bytes(LABELS_7, type_code=0x0D), "0x00000d01: unsupported type code 0x0d"),
        (idx_bytes(LABELS_7)[:-1], "truncated: dimensions (7,) need 7 bytes of data, got 6"),
        (idx_bytes(LABELS_7) + b"\x00\x00", "2 trailing bytes"),
        (b"\x00\x00\x08\x00", "0x00000800: declares 0 dimensions"),
        (b"\x00\x00\x08\x05" + b"\x00" * 20, "declares 5 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header (8 of 16 bytes)"),
        (b"\x00\x00", "too short for an IDX header"),
    ],
)
def test_parse_idx_rejects_bad_data(blob: bytes, message: str) -> None:
    with pytest.raises(DataError, match=r"^labels-file: ") as info:
        parse_idx(blob, name="labels-file")
    assert message in str(info.value)


def test_parse_idx_rejects_unexpected_ndim() -> None:
    with pytest.raises(DataError, match="declares 1 dimensions, expected 3"):
        parse_idx(idx_bytes(LABELS_7), name="images", ndim=3)


# --- read_verified -----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_verified_raw_and_gz(fake: FakeSet, tmp_path: Path, gz: bool) -> None:
    fake.write(tmp_path, gz=gz)
    stem = "train-labels-idx1-ubyte"
    path = tmp_path / (f"{stem}.gz" if gz else stem)
    assert read_verified(path, fake.hashes[stem]) == fake.raw[stem]
    assert read_verified(path, None) == fake.raw[stem]


def test_read_verified_checksum_mismatch(fake: FakeSet, tmp_path: Path) -> None:
    fake.write(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    wrong = "0" * 64
    with pytest.raises(DataError, match="corrupt or not the upstream") as info:
        read_verified(path, wrong)
    assert f"expected {wrong}" in str(info.value)
    assert fake.hashes["t10k-labels-idx1-ubyte"] in str(info.value)


def test_read_verified_corrupt_gzip_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"hello world" * 100)[:-10])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_verified(bad, None)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt gzip"):
        read_verified(bad, None)
    with pytest.raises(DataError, match="cannot read"):
        read_verified(tmp_path / "absent", None)


# --- locate ------------------------------------------------------------------------------


def test_locate_order(
    fake: FakeSet, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit, env, debian = (fake.write(tmp_path / n) for n in ("explicit", "env", "debian"))
    fake.write(isolated)
    assert locate(hashes=fake.hashes, download=False) == debian
    (debian / "t10k-labels-idx1-ubyte.gz").unlink()
    assert locate(hashes=fake.hashes, download=False) == isolated
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert locate(hashes=fake.hashes, download=False) == env
    assert locate(explicit, hashes=fake.hashes, download=False) == explicit


def test_cache_dir_parameter_and_default(
    fake: FakeSet, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert data.default_cache_dir() == isolated
    mine = fake.write(tmp_path / "mine", gz=False)
    assert locate(hashes=fake.hashes, download=False, cache_dir=mine) == mine
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home/.cache/mcdropout/fashion-mnist"


def test_explicit_folder_missing_files_is_an_error(
    fake: FakeSet, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.write(tmp_path / "debian")  # a valid fallback that must NOT be used
    partial = fake.write(tmp_path / "partial", skip=("train-images-idx3-ubyte",))
    with pytest.raises(DataError, match="does not hold train-images-idx3-ubyte") as info:
        locate(partial, hashes=fake.hashes, download=False)
    assert "--data-dir" in str(info.value)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=f"from {data.ENV_VAR}"):
        locate(hashes=fake.hashes, download=False)


def test_all_fail_message_says_how_to_get_the_data(isolated: Path) -> None:
    with pytest.raises(DataError) as info:
        locate(download=False)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert data.ENV_VAR in message
    assert "--data-dir" in message
    assert data.UPSTREAM_URL in message
    assert str(isolated) in message
    assert "train-images-idx3-ubyte.gz" in message


# --- download against a local HTTP server ------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """Serves the bytes in the returned dict (path -> body) on 127.0.0.1; 404 otherwise."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Handler) as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/data/", files


def serve(files: dict[str, bytes], fake: FakeSet) -> None:
    for stem, raw in fake.raw.items():
        files[f"/data/{stem}.gz"] = gzip.compress(raw)


def test_download_then_load(
    fake: FakeSet, isolated: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    serve(files, fake)
    loaded = load_fashion_mnist(hashes=fake.hashes, base_url=url)
    assert loaded.source == "download"
    assert loaded.sha256 == fake.hashes
    np.testing.assert_array_equal(loaded.train_images, fake.arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(loaded.test_labels, fake.arrays["t10k-labels-idx1-ubyte"])
    assert sorted(p.name for p in isolated.iterdir()) == sorted(f"{s}.gz" for s in FILES)
    for stem, sha in fake.hashes.items():
        assert read_verified(isolated / f"{stem}.gz", sha) == fake.raw[stem]
    files.clear()  # the second load must come from the cache, not the network
    again = load_fashion_mnist(hashes=fake.hashes, base_url=url)
    assert again.source == str(isolated)
    np.testing.assert_array_equal(again.train_labels, loaded.train_labels)


def test_download_corrupt_file_leaves_nothing(
    fake: FakeSet, tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    serve(files, fake)
    stem = "train-labels-idx1-ubyte"
    tampered = bytearray(fake.raw[stem])
    tampered[-1] ^= 0xFF
    files[f"/data/{stem}.gz"] = gzip.compress(bytes(tampered))
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match=f"{stem}.gz: SHA-256 .* corrupt or not the upstream"):
        data.download(dest, base_url=url, hashes=fake.hashes)
    assert not (dest / f"{stem}.gz").exists()
    assert not any(p.name.startswith(f".{stem}") for p in dest.iterdir())
    files[f"/data/{stem}.gz"] = b"<html>not gzip</html>"
    with pytest.raises(DataError, match="corrupt gzip"):
        data.download(dest, base_url=url, hashes=fake.hashes)
    assert not (dest / f"{stem}.gz").exists()
    assert {p.name for p in dest.iterdir()} == {"train-images-idx3-ubyte.gz"}


def test_download_404_names_the_url(
    fake: FakeSet, isolated: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, _ = server  # serves nothing
    with pytest.raises(DataError) as info:
        load_fashion_mnist(hashes=fake.hashes, base_url=url)
    message = str(info.value)
    assert f"cannot download {url}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not any(isolated.iterdir())


def test_download_connection_refused_names_the_url(fake: FakeSet, tmp_path: Path) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    httpd.server_close()  # nothing listens on this port any more
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DataError, match=f"cannot download {url}train-images"):
        data.download(tmp_path, base_url=url, hashes=fake.hashes, timeout=5)


# --- FashionMNIST consistency ------------------------------------------------------------


def test_dataset_checks_shapes_and_labels(fake: FakeSet) -> None:
    a = fake.arrays
    ok = data.FashionMNIST(
        train_images=a["train-images-idx3-ubyte"],
        train_labels=a["train-labels-idx1-ubyte"],
        test_images=a["t10k-images-idx3-ubyte"],
        test_labels=a["t10k-labels-idx1-ubyte"],
        source="x",
        sha256={},
    )
    with pytest.raises(DataError, match="train: 20 images but labels of shape"):
        replace(ok, train_labels=a["train-labels-idx1-ubyte"][:-1])
    with pytest.raises(DataError, match=r"test: images have shape \(10, 27, 28\)"):
        replace(ok, test_images=np.zeros((10, 27, 28), np.uint8))
    with pytest.raises(DataError, match="test: label 10 is not below 10"):
        replace(ok, test_labels=np.full(10, 10, np.uint8))
    wide = a["train-images-idx3-ubyte"].astype(np.int16)
    with pytest.raises(DataError, match="train: images and labels must be uint8"):
        replace(ok, train_images=wide)  # type: ignore[arg-type]


# --- split_validation --------------------------------------------------------------------


def test_split_validation() -> None:
    train, val = split_validation(100, 20, seed=3)
    assert (len(train), len(val)) == (80, 20)
    assert np.all(np.diff(train) > 0)
    assert np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    again_train, again_val = split_validation(100, 20, seed=3)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    expected = np.sort(np.random.Generator(np.random.PCG64(3)).permutation(100)[:20])
    np.testing.assert_array_equal(val, expected)
    assert not np.array_equal(val, split_validation(100, 20, seed=4)[1])


@pytest.mark.parametrize(("n", "val_size"), [(10, 0), (10, 10), (10, -1), (10, 11), (0, 0)])
def test_split_validation_rejects_bad_sizes(n: int, val_size: int) -> None:
    with pytest.raises(ValueError, match=f"less than n={n} \\(got {val_size}\\)"):
        split_validation(n, val_size)


# --- the real data set -------------------------------------------------------------------


def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    loaded = load_fashion_mnist(download=False, cache_dir=tmp_path)
    assert loaded.train_images.shape == (60000, 28, 28)
    assert loaded.test_images.shape == (10000, 28, 28)
    assert loaded.train_labels.shape == (60000,)
    np.testing.assert_array_equal(np.bincount(loaded.train_labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(loaded.test_labels, minlength=10), [1000] * 10)
    assert loaded.sha256 == FILES
    assert int(loaded.train_images.max()) == 255
