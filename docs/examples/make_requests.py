"""Writes the README's example requests from the real Fashion-MNIST test set.

Test image 0 is an ankle boot the model is sure of; test image 17 is a coat it hesitates over.
Run: .venv/bin/python docs/examples/make_requests.py
"""

import json
from pathlib import Path

from training.data import load_fashion_mnist

here = Path(__file__).parent
test = load_fashion_mnist().test_images
boot, coat = ((test[i].reshape(-1) / 255).round(4).tolist() for i in (0, 17))
(here / "request.json").write_text(json.dumps({"instances": [boot]}))
body = {"instances": [boot, coat], "samples": 100, "seed": 0}
(here / "uncertainty.json").write_text(json.dumps(body))
