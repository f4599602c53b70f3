from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_shows_the_httpx_example_as_it_is() -> None:
    code = (ROOT / "docs/examples/client.py").read_text()
    body = code.split('"""', 2)[2].strip()  # the example without its docstring
    assert f"```python\n{body}\n```" in (ROOT / "README.md").read_text()
