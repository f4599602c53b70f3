"""AsyncClient against a real server: the same answers as Client, also when calls overlap."""

import asyncio

import numpy as np
import pytest

from mcdropout_client import (
    AsyncClient,
    Client,
    InvalidInputError,
    ModelCard,
    NotFoundError,
    PredictResult,
    UncertaintyResult,
)


def test_every_method_answers_as_the_sync_client(server: str) -> None:
    x = np.random.default_rng(3).random((2, 784))
    with Client(server) as sync:
        card = sync.model("tiny")
        predicted = sync.predict("tiny", x)
        seeded = [sync.uncertainty("tiny", x, samples=50, seed=s) for s in range(4)]

    async def run() -> tuple[ModelCard, PredictResult, list[UncertaintyResult]]:
        async with AsyncClient(server, timeout=30) as client:
            assert (await client.live()).status == "live"
            assert (await client.ready()).ready
            assert (await client.wait_ready(timeout=1)).ready
            assert await client.models() == [card]
            with pytest.raises(NotFoundError, match="model 'nope' not found"):
                await client.model("nope")
            with pytest.raises(InvalidInputError, match="outside \\[0, 1\\]") as bad:
                await client.predict("tiny", x * 2)
            assert bad.value.status == 422
            calls = [client.uncertainty("tiny", x, samples=50, seed=s) for s in range(4)]
            return (
                await client.model("tiny"),
                await client.predict("tiny", x),
                list(await asyncio.gather(*calls)),
            )

    got_card, got_predicted, got_seeded = asyncio.run(run())
    assert got_card == card
    assert got_predicted == predicted
    assert got_seeded == seeded
    assert seeded[0] != seeded[1]
