"""Hot reload: POST /admin/reload and SIGHUP, from the configured folder only."""

import hashlib
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from service.settings import Settings
from tests.helpers import make_client, wait_ready, write_tiny_checkpoint
from tests.servers import serve_process, wait_until_ready

TOKEN = {"X-Admin-Token": "t0ken"}
X = np.random.default_rng(0).random((2, 784)).tolist()


def version_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_admin_routes_are_off_without_a_token(model_dir: Path) -> None:
    with make_client(Settings(model_path=model_dir)) as c:
        wait_ready(c)
        r = c.post("/admin/reload", headers=TOKEN)
        assert (r.status_code, r.json()) == (
            403,
            {"detail": "admin routes are off: set MCDROPOUT_ADMIN_TOKEN to turn them on"},
        )


def test_reload_needs_the_token(model_dir: Path) -> None:
    with make_client(Settings(model_path=model_dir, admin_token="t0ken")) as c:
        wait_ready(c)
        for headers in ({}, {"X-Admin-Token": "wrong"}):
            r = c.post("/admin/reload", headers=headers)
            assert (r.status_code, r.json()) == (
                401,
                {"detail": "missing or invalid X-Admin-Token"},
            )


def test_reload_swaps_in_a_new_version_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors", seed=0)
    first = version_of(path)
    with make_client(Settings(model_path=tmp_path, admin_token="t0ken")) as c:
        wait_ready(c)
        assert c.post("/admin/reload", headers=TOKEN).json() == {
            "loaded": [],
            "unchanged": ["tiny"],
            "refused": {},
            "removed": [],
            "versions": {"tiny": first},
        }
        write_tiny_checkpoint(path, seed=1)
        second = version_of(path)
        answer = c.post("/admin/reload", headers=TOKEN).json()
        assert (answer["loaded"], answer["versions"]) == (["tiny"], {"tiny": second})
        assert c.post("/v1/models/tiny/predict", json={"instances": X}).json()["version"] == second

        good = path.read_bytes()
        tampered = bytearray(good)
        tampered[-3] ^= 0xFF
        path.write_bytes(bytes(tampered))
        answer = c.post("/admin/reload", headers=TOKEN).json()
        assert answer["refused"] == {
            "tiny": "tiny.safetensors: content SHA-256 mismatch: the file was modified after it "
            "was written"
        }
        assert answer["versions"] == {"tiny": second}  # the good version keeps serving
        r = c.post("/v1/models/tiny/predict", json={"instances": X})
        assert (r.status_code, r.json()["version"]) == (200, second)
        assert str(tmp_path) not in str(answer)

        path.unlink()
        answer = c.post("/admin/reload", headers=TOKEN).json()
        assert (answer["removed"], answer["versions"]) == (["tiny"], {})
        assert c.post("/v1/models/tiny/predict", json={"instances": X}).status_code == 503


def test_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors", seed=0)
    blobs = [path.read_bytes(), write_tiny_checkpoint(tmp_path / "other", seed=1).read_bytes()]
    versions = {hashlib.sha256(blob).hexdigest()[:12] for blob in blobs}
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    with make_client(Settings(model_path=tmp_path, admin_token="t0ken")) as c:
        wait_ready(c)

        def hammer() -> None:
            body = {"instances": X, "samples": 50, "seed": 0}
            while not stop.is_set():
                r = c.post("/v1/models/tiny/uncertainty", json=body)
                seen.append((r.status_code, r.json().get("version", "")))

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        for i in range(1, 7):
            path.write_bytes(blobs[i % 2])
            assert c.post("/admin/reload", headers=TOKEN).json()["loaded"] == ["tiny"]
            time.sleep(0.05)
        stop.set()
        for w in workers:
            w.join()
    assert len(seen) > 20
    assert {status for status, _ in seen} == {200}
    assert {version for _, version in seen} == versions


def test_sighup_reloads_the_model_folder(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors", seed=0)
    with serve_process(tmp_path) as (url, proc):
        wait_until_ready(url)
        write_tiny_checkpoint(path, seed=1)
        expected = version_of(path)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/v1/models/tiny").json()["version"] != expected:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
