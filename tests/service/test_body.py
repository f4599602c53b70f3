"""The body budget (service/edge/body.py): bytes taken as they arrive, the oldest request
always able to finish, small asks served first, and every byte given back."""

import asyncio

import pytest

from service.edge.body import BodyBudget


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_oldest_can_always_finish_while_the_others_wait() -> None:
    async def run() -> list[str]:
        budget, order = BodyBudget(limit=100, largest=60), []
        a, b, c = object(), object(), object()
        await budget.take(a, 30)  # a: the oldest
        await budget.take(b, 30)  # the others together: at most 100 - 60 = 40

        async def take(holder: object, n: int, name: str) -> None:
            await budget.take(holder, n)
            order.append(name)

        waiting = asyncio.create_task(take(c, 20, "c"))
        await settle()
        assert order == []  # 30 + 20 > 40: c waits, though 80 of 100 would fit
        await take(a, 30, "a")  # the rest of the oldest's body: never waits
        assert budget.used == 90
        budget.release(a)  # a answered: b is now the oldest, c fits among the others
        await settle()
        await waiting
        assert budget.used == 50
        return order

    assert asyncio.run(run()) == ["a", "c"]


def test_half_read_bodies_never_wait_for_each_other_forever() -> None:
    # Three bodies of 60 arriving in turns, 100 in all: without the oldest's right to the whole
    # budget, each would hold 30-odd and wait for the others. Here the oldest finishes first.
    async def run() -> list[str]:
        budget, done = BodyBudget(limit=100, largest=60), []

        async def body(name: str) -> None:
            holder = object()
            for _ in range(6):
                await budget.take(holder, 10)
                await asyncio.sleep(0)
            done.append(name)
            await asyncio.sleep(0.01)  # answered a little later
            budget.release(holder)

        await asyncio.wait_for(asyncio.gather(body("a"), body("b"), body("c")), 5)
        assert (budget.used, budget.held) == (0, {})
        return done

    assert asyncio.run(run())[0] == "a"


def test_small_asks_are_served_first_and_partial_returns_keep_the_place() -> None:
    async def run() -> list[str]:
        budget, order = BodyBudget(limit=100, largest=50), []
        first, big, small = object(), object(), object()
        await budget.take(first, 100)

        async def take(holder: object, n: int, name: str) -> None:
            await budget.take(holder, n)
            order.append(name)

        tasks = [
            asyncio.create_task(take(big, 40, "big")),
            asyncio.create_task(take(small, 5, "small")),
        ]
        await settle()
        budget.release(first, 42)  # a partial return (first stays the oldest): room for one
        await settle()
        assert order == ["small"]  # asked after big: served first, and big no longer fits
        assert next(iter(budget.held)) is first
        budget.release(first)
        await asyncio.gather(*tasks)
        assert budget.used == 45
        return order

    assert asyncio.run(run()) == ["small", "big"]


def test_a_wait_that_times_out_leaves_nothing_behind() -> None:
    async def run() -> None:
        budget, first, late = BodyBudget(limit=10, largest=10), object(), object()
        await budget.take(first, 10)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await budget.take(late, 1)
        budget.release(late)
        budget.release(first)
        assert (budget.used, budget.held) == (0, {})

    asyncio.run(run())


def test_the_budget_must_hold_the_largest_body() -> None:
    with pytest.raises(ValueError, match=r"largest \(20\) must not exceed the limit \(10\)"):
        BodyBudget(limit=10, largest=20)
