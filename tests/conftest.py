"""Tests by speed. Each test gets one marker at collection, from what it reaches: its own code,
the functions and classes of tests/ that it names, and its fixtures, never a hand-set mark.

- e2e: starts another program (a real server through tests/servers.py, a command line, a tool, a
  browser): what it reaches names `subprocess` or `playwright`.
- integration: driven from this process, but with processes of the project's own (the inference
  process, training ranks): it reaches `multiprocessing`, `InferenceProcess`, or `create_app` and
  a Settings built without `inference="thread"` (Settings' default is the inference process).
- unit: the rest, in this process alone. `make test-fast` runs these. A unit test that starts a
  process through multiprocessing fails, saying that the rule missed it.

The soak (marker soak, ~30 s) runs only when asked: --soak or `-m soak` (`make test` passes --soak).
"""

import inspect
import multiprocessing.process
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Any

import pytest

from tests.helpers import write_tiny_checkpoint
from tests.servers import LIMITS, serve, wait_until_ready

PROGRAMS = ("subprocess", "playwright")  # what starts another program
GUARD = "_guard"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the soak test too (~30 s)")


def _codes(function: Callable[..., Any], seen: set[CodeType]) -> Iterator[tuple[CodeType, Any]]:
    """(code, its globals) of `function`, its nested functions, and what of tests/ it names."""
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return
    namespace: dict[str, Any] = function.__globals__
    stack = [code]
    while stack:
        code = stack.pop()
        seen.add(code)
        yield code, namespace
        stack += [c for c in code.co_consts if isinstance(c, CodeType) and c not in seen]
        for name in code.co_names:
            value = namespace.get(name)
            if not _module(value).startswith("tests."):
                continue
            members = vars(value).values() if isinstance(value, type) else [value]
            for member in members:
                if isinstance(member, FunctionType):
                    yield from _codes(member, seen)


def _module(value: object) -> str:
    """The module that `value` is, or that defines it."""
    name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", "")
    return name if isinstance(name, str) else ""


def _root(value: object) -> str:
    return _module(value).partition(".")[0]


def _is(value: object, package: str, name: str) -> bool:
    """`value` is `package`'s `name`, wherever in the package it lives."""
    return _root(value) == package and getattr(value, "__qualname__", None) == name


def tier(item: pytest.Function) -> str:
    info = item._fixtureinfo  # the fixtures the item uses, as --fixtures-per-test lists them
    functions = [item.function]
    for name in info.names_closure:
        if name == GUARD:  # it names multiprocessing, for every test
            continue
        # The definition that applies is the last; the one before it only where that one asks
        # for its own name (an override that extends it).
        for definition in reversed(info.name2fixturedefs.get(name, ())):
            functions.append(definition.func)
            if name not in definition.argnames:
                break
    seen: set[CodeType] = set()
    codes = [c for f in functions for c in _codes(f, seen)]
    values = [(code, namespace.get(name)) for code, namespace in codes for name in code.co_names]
    if any(_root(value) in PROGRAMS for _, value in values):
        return "e2e"
    builds_an_app = any(_is(value, "service", "create_app") for _, value in values)
    with_a_process = any(
        _is(value, "service", "Settings") and "thread" not in code.co_consts
        for code, value in values
    )
    spawns = any(
        _root(value) == "multiprocessing" or _is(value, "service", "InferenceProcess")
        for _, value in values
    )
    return "integration" if spawns or (builds_an_app and with_a_process) else "unit"


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function):
            item.add_marker(tier(item))
    if config.option.soak or "soak" in config.option.markexpr:
        return
    soaks = [item for item in items if item.get_closest_marker("soak")]
    if soaks:
        config.hook.pytest_deselected(items=soaks)
        items[:] = [item for item in items if item not in soaks]


@pytest.fixture(autouse=True)
def _guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*_: object) -> None:
        raise AssertionError(
            f"{request.node.nodeid} is marked unit but starts a process: "
            "tests/conftest.py's rule missed it (see its docstring)"
        )

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


# What every folder shares: the tiny model, and a real server of it.


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one tiny checkpoint, served as the model "tiny"."""
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder / "tiny.safetensors")
    return folder


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[str]:
    """The URL of a real server of model_dir with tests/servers.py's LIMITS, once ready."""
    with serve(model_dir, LIMITS) as url:
        wait_until_ready(url)
        yield url
