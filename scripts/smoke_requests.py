"""The HTTP half of the container smoke test (scripts/container-smoke.sh): one running container.

python scripts/smoke_requests.py http://127.0.0.1:18000 build/smoke/models/fashion-cnn.safetensors

Standard library only, so any python3 runs it. Exits non-zero with a message on the first failure.
"""

import argparse
import hashlib
import json
import math
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


class SmokeError(Exception):
    pass


def call(url: str, body: object = None) -> tuple[int, Any, float]:
    """(status, JSON body, seconds) of a GET, or of a JSON POST when body is given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if data is None else {"content-type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response), time.perf_counter() - start
    except urllib.error.HTTPError as e:  # 4xx/5xx still carry a JSON body
        return e.code, json.load(e), time.perf_counter() - start


def png(pixels: bytes, side: int) -> bytes:
    """A grayscale PNG of side x side bytes, with the standard library alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grayscale
    rows = b"".join(b"\0" + pixels[i * side : (i + 1) * side] for i in range(side))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))


def upload(url: str, image: bytes, fields: dict[str, str]) -> tuple[int, Any]:
    """(status, JSON body) of a multipart POST of `image` as the field `file`."""
    boundary = "smoke-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    data = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeError(message)


def check(base: str, checkpoint: Path) -> list[str]:
    name = checkpoint.stem
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    report = []

    for route, status in (("live", "live"), ("ready", "ready")):
        code, body, _ = call(f"{base}/health/{route}")
        expect((code, body) == (200, {"status": status}), f"/health/{route}: {code} {body}")

    code, body, _ = call(f"{base}/v1/models")
    expect(code == 200, f"/v1/models: {code} {body}")
    cards = {card["name"]: card for card in body["models"]}
    expect(list(cards) == [name], f"/v1/models serves {list(cards)}, expected [{name!r}]")
    expect(cards[name]["sha256"] == sha256, "the served model is not the checkpoint's bytes")

    model = f"{base}/v1/models/{name}"
    boot = json.loads((EXAMPLES / "request.json").read_text())
    code, body, seconds = call(f"{model}/predict", boot)
    expect(code == 200, f"predict: {code} {body}")
    (pred,) = body["predictions"]
    probs = pred["probabilities"]
    expect(len(probs) == 10 and math.isclose(sum(probs), 1.0, abs_tol=1e-5), f"predict: {probs}")
    expect(probs[pred["class_index"]] == max(probs) == pred["confidence"], f"predict: {pred}")
    report.append(f"predict {pred['label']} {pred['confidence']:.3f} in {seconds * 1000:.0f} ms")

    request = json.loads((EXAMPLES / "uncertainty.json").read_text())
    code, body, seconds = call(f"{model}/uncertainty", request)
    expect(code == 200, f"uncertainty: {code} {body}")
    n = request["samples"]
    expect(body["samples"] == n and body["seed"] == request["seed"], f"uncertainty: {body}")
    expect(len(body["predictions"]) == len(request["instances"]), "uncertainty: predictions")
    for p in body["predictions"]:
        expect(sum(p["votes"]) == n, f"uncertainty: votes {p['votes']} do not sum to {n}")
        share = p["votes"][p["class_index"]] / n
        expect(math.isclose(p["agreement"], share, abs_tol=1e-6), f"uncertainty: {p}")
        expect(p["mutual_information"] >= -1e-9, f"uncertainty: {p}")
        report.append(f"uncertainty {p['label']} agreement {p['agreement']:.2f}")
    report.append(f"uncertainty N={n} x {len(request['instances'])} in {seconds * 1000:.0f} ms")
    _, again, _ = call(f"{model}/uncertainty", request)
    expect(again == body, "uncertainty: the same seed gave a different answer")

    # The image route (Pillow inside the image): a 28x28 PNG of the example's own pixels, on the
    # black background Fashion-MNIST has, answers as the JSON route does for pixels / 255.
    shades = bytes(round(v * 255) for v in request["instances"][0])
    fields = {"samples": str(n), "seed": str(request["seed"])}
    code, image_body = upload(f"{model}/uncertainty/image", png(shades, 28), fields)
    expect(code == 200, f"uncertainty/image: {code} {image_body}")
    as_json = {"instances": [[b / 255 for b in shades]], "samples": n, "seed": request["seed"]}
    _, json_body, _ = call(f"{model}/uncertainty", as_json)
    expect(image_body == json_body, "uncertainty/image differs from the JSON route's answer")
    report.append(f"uncertainty/image {image_body['predictions'][0]['label']}, as the JSON route")

    with urllib.request.urlopen(f"{base}/", timeout=60) as response:
        page = response.read().decode()
    expect("<title>MC dropout" in page, "the web page at / is missing")
    with urllib.request.urlopen(f"{base}/static/app.js", timeout=60) as response:
        expect(response.status == 200, "the page's script is missing")
    report.append("web page at / and its script served")

    code, body, _ = call(f"{model}/predict", {"instances": [[0.5] * 783]})
    text = json.dumps(body)
    expect(code == 422 and "instance 0" in text, f"bad input: {code} {text}")
    expect("Traceback" not in text and "/opt/" not in text, f"bad input leaks internals: {text}")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the service's URL, e.g. http://127.0.0.1:18000")
    p.add_argument("checkpoint", type=Path, help="the checkpoint the container should serve")
    args = p.parse_args()
    try:
        for line in check(args.base.rstrip("/"), args.checkpoint):
            print(f"  ok: {line}")
    except SmokeError as e:
        print(f"smoke: FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
