"""Write service/page/static/examples.json: a few real Fashion-MNIST test images for the web page's
"random test image" and gallery, so that the service never needs the data set installed.

    .venv/bin/python scripts/export_examples.py [--per-class 6] [--seed 0] [--data DIR]

The images are drawn at random (seeded), the same number from each class, from the verified
t10k files (training/data.py); the pixels are the IDX bytes, base64, 784 per image, row-major.
"""

import argparse
import base64
import json
from pathlib import Path

import numpy as np

from training.data import LABELS, load_fashion_mnist

OUT = Path(__file__).parents[1] / "service/page/static/examples.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    data = load_fashion_mnist(args.data, download=False)
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(data.test_labels == c), args.per_class, replace=False)
                for c in range(len(LABELS))
            ]
        )
    )
    images = data.test_images[chosen]  # [n, 28, 28] uint8
    document = {
        "source": "Fashion-MNIST t10k (test split), scripts/export_examples.py",
        "t10k_sha256": data.sha256["t10k-images-idx3-ubyte"],
        "labels": list(LABELS),
        "indices": chosen.tolist(),
        "classes": data.test_labels[chosen].tolist(),
        "pixels_base64": base64.b64encode(images.tobytes()).decode(),
    }
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"{args.out}: {len(chosen)} images, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
