from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("example", ["python_client.py", "kserve_v2.py"])
def test_readme_shows_the_example_as_it_is(example: str) -> None:
    code = (ROOT / "docs/examples" / example).read_text()
    body = code.split('"""', 2)[2].strip()  # the example without its docstring
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{body}\n```" in readme
    assert f"$ .venv/bin/python docs/examples/{example}\n" in readme
