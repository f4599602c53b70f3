"""The same calls through mcdropout_client. Run from the repository root while `make run` serves."""

import asyncio
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mcdropout_client import AsyncClient, Client, InvalidInputError, NotFoundError

body = json.loads(Path("docs/examples/uncertainty.json").read_text())
images = np.array(body["instances"])  # [2, 784] floats in [0, 1]: the boot and the coat

with Client("http://127.0.0.1:8000", timeout=30, retries=3) as client:
    print(client.ready().ready)
    card = client.model("fashion-cnn")
    print(card.version, card.architecture.layer_sizes, card.samples.maximum)

    pred = client.predict("fashion-cnn", images[0]).predictions[0]  # one image, or a batch
    print(pred.label, round(pred.confidence, 4))

    answer = client.uncertainty("fashion-cnn", images, samples=100, seed=0)
    for p in answer.predictions:
        print(p.label, f"{p.agreement:.2f}", p.votes, round(p.mutual_information, 4))

    coat = Image.fromarray((images[1].reshape(28, 28) * 255).round().astype(np.uint8))
    print(client.uncertainty("fashion-cnn", coat, samples=100, seed=0).predictions[0].votes)

    for call in (
        lambda: client.model("nope"),
        lambda: client.predict("fashion-cnn", [[0.5] * 783]),
    ):
        try:
            call()
        except (NotFoundError, InvalidInputError) as e:
            print(type(e).__name__, e.status, e.message)


async def main() -> None:
    async with AsyncClient("http://127.0.0.1:8000") as client:
        calls = [client.uncertainty("fashion-cnn", images, samples=100, seed=s) for s in range(3)]
        for answer in await asyncio.gather(*calls):
            print(answer.seed, [f"{p.agreement:.2f}" for p in answer.predictions])


asyncio.run(main())
