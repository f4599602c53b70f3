"""The docs show their examples as the files in docs/examples/ hold them, with the command that
runs them (the output beside it comes from a run)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    ("example", "document"),
    [
        ("client.py", "docs/api.md"),
        ("kserve_v2.py", "docs/kserve-v2.md"),
        ("python_client.py", "docs/client.md"),
        ("quickstart.py", "README.md"),
    ],
)
def test_docs_show_the_example_as_it_is(example: str, document: str) -> None:
    code = (ROOT / "docs/examples" / example).read_text()
    body = code.split('"""', 2)[2].strip()  # the example without its docstring
    text = (ROOT / document).read_text()
    assert f"```python\n{body}\n```" in text
    assert f"$ .venv/bin/python docs/examples/{example}\n" in text
