"""The README's uncertainty call through mcdropout_client. Run from the repository root while
`make run` serves."""

import json
from pathlib import Path

from mcdropout_client import Client

images = json.loads(Path("docs/examples/uncertainty.json").read_text())["instances"]
with Client("http://127.0.0.1:8000") as client:
    for p in client.uncertainty("fashion-cnn", images, samples=100, seed=0).predictions:
        print(p.label, p.agreement, p.votes, round(p.mutual_information, 3), p.abstain)
