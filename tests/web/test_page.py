"""The page at / in Chromium: what it shows must be what the API answers."""

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.servers import serve, wait_until_ready
from tests.web.conftest import artifacts

FIELDS = [
    "Model",
    "Passes N",
    "Seed (optional)",
    "API key (if the server needs one)",
    "Upload a PNG or JPEG",
]
BUTTONS = [
    "Apply settings",
    "Random test image",
    "Run again",
    "Clear canvas",
    "Classify drawing",
    "Recompute gallery",
]


def open_page(page: Page, url: str) -> None:
    page.goto(f"{url}/")
    expect(page.locator("#status")).to_contain_text("Model tiny ready")


def run_id(page: Page) -> str:
    return str(page.evaluate("document.getElementById('answer').dataset.run ?? 'none'"))


def wait_for_new_result(page: Page, previous: str) -> None:
    page.wait_for_function(
        "previous => (document.getElementById('answer').dataset.run ?? 'none') !== previous",
        arg=previous,
    )


def shown(page: Page, selector: str, attribute: str = "data-value") -> str:
    value = page.locator(selector).get_attribute(attribute)
    assert value is not None, selector
    return value


def bar_values(page: Page, table: str) -> list[float]:
    cells = page.locator(f"#{table} td.value").all()
    return [float(cell.get_attribute("data-value") or "nan") for cell in cells]


def assert_shows(page: Page, mc: dict[str, Any], ev: dict[str, Any]) -> None:
    """The page's numbers (exact, from data-value) and text (rounded) equal the API's."""
    expect(page.locator("#label")).to_have_text(mc["label"])
    assert float(shown(page, "#agreement")) == mc["agreement"]
    assert page.locator("#agreement").inner_text().startswith(f"{mc['agreement']:.3f}"[:4])
    low, high = mc["agreement_interval"]
    assert float(shown(page, "#agreement-interval", "data-low")) == low
    assert float(shown(page, "#agreement-interval", "data-high")) == high
    for name in ("predictive_entropy", "expected_entropy", "mutual_information"):
        selector = "#" + name.replace("_", "-")
        assert float(shown(page, selector)) == mc[name], name
        text = page.locator(selector).inner_text().removesuffix(" nats")
        assert float(text) == pytest.approx(mc[name], abs=5.1e-5), name
    assert shown(page, "#abstain") == "null"
    assert mc["abstain"] is None
    assert bar_values(page, "votes-bars") == mc["votes"]
    assert bar_values(page, "mc-bars") == mc["mean_probabilities"]
    assert bar_values(page, "eval-bars") == ev["probabilities"]
    assert shown(page, "#eval-label") == str(ev["class_index"])


def test_the_page_loads_with_labelled_controls(page: Page, server: str) -> None:
    open_page(page, server)
    expect(page).to_have_title("MC dropout: see the uncertainty")
    for name in FIELDS:
        expect(page.get_by_label(name, exact=True)).to_have_count(1)
    for name in BUTTONS:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(1)
    canvas = page.get_by_role("img", name="Drawing canvas: draw with the mouse, a finger or a pen")
    expect(canvas).to_have_attribute("tabindex", "0")
    card = httpx.get(f"{server}/v1/models/tiny").json()
    samples = page.get_by_label("Passes N")
    expect(samples).to_have_value(str(card["samples"]["default"]))
    expect(samples).to_have_attribute("max", str(card["samples"]["maximum"]))
    expect(page.locator("#status")).to_have_attribute("aria-live", "polite")


def test_an_upload_shows_the_api_numbers(page: Page, server: str, tmp_path: Path) -> None:
    rgb = np.full((60, 45, 3), 235, np.uint8)  # a dark object on a light background
    rgb[10:50, 12:33] = (70, 40, 20)
    file = tmp_path / "coat.png"
    Image.fromarray(rgb).save(file)
    open_page(page, server)
    page.get_by_label("Passes N").fill("37")
    page.get_by_label("Seed (optional)").fill("123")
    before = run_id(page)
    page.get_by_label("Upload a PNG or JPEG").set_input_files(file)
    wait_for_new_result(page, before)

    route = f"{server}/v1/models/tiny"
    upload = {"file": ("coat.png", file.read_bytes(), "image/png")}
    mc = httpx.post(f"{route}/uncertainty/image", files=upload, data={"samples": 37, "seed": 123})
    assert mc.status_code == 200, mc.text
    pixels = httpx.post(f"{route}/preprocess/image", files=upload).json()["pixels"]
    ev = httpx.post(f"{route}/predict", json={"instances": [pixels]}).json()
    assert shown(page, "#run", "data-samples") == "37"
    assert shown(page, "#run", "data-seed") == "123"
    assert_shows(page, mc.json()["predictions"][0], ev["predictions"][0])
    expect(page.locator("#source")).to_contain_text("light background, so inverted")
    page.screenshot(path=artifacts() / "page.png", full_page=True)


def test_drawing_on_the_canvas_gives_a_result(page: Page, server: str) -> None:
    open_page(page, server)
    canvas = page.locator("#draw")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    before = run_id(page)
    x, y = box["x"], box["y"]
    page.mouse.move(x + 0.3 * box["width"], y + 0.2 * box["height"])
    page.mouse.down()
    for t in np.linspace(0, 1, 12):
        page.mouse.move(x + (0.3 + 0.4 * t) * box["width"], y + (0.2 + 0.6 * t) * box["height"])
    page.mouse.up()
    wait_for_new_result(page, before)
    expect(page.locator("#source")).to_contain_text("the drawing")
    votes = bar_values(page, "votes-bars")
    assert sum(votes) == 20  # the default N of tests/servers.py's limits
    expect(page.locator("#label")).not_to_be_empty()
    # What the model saw is the stroke: light pixels on black.
    preview = page.evaluate(
        "Array.from(document.getElementById('preview').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))"
    )
    assert max(preview) > 100
    assert preview[0] == 0


def test_the_gallery_is_sorted_most_uncertain_first(page: Page, server: str) -> None:
    open_page(page, server)
    page.get_by_label("Seed (optional)").fill("5")
    page.get_by_role("button", name="Apply settings").click()
    expect(page.locator("#gallery-status")).to_contain_text("20 passes each, seed 5")
    expect(page.locator("#gallery")).to_have_attribute("data-ready", "true")
    items = page.locator("#gallery li")
    expect(items).to_have_count(60)
    agreements = [float(item.get_attribute("data-agreement") or "nan") for item in items.all()]
    assert agreements == sorted(agreements)
    before = run_id(page)
    items.first.get_by_role("button").click()
    wait_for_new_result(page, before)
    assert float(shown(page, "#agreement")) == agreements[0]


def test_everything_is_reachable_by_keyboard(page: Page, server: str) -> None:
    open_page(page, server)
    focused: list[str] = []
    for _ in range(14):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    for control in ("samples", "seed", "file", "random", "draw", "clear", "analyze-drawing"):
        assert control in focused, focused
    assert focused.index("file") < focused.index("draw")
    # Draw with the keyboard: pen down, a stroke to the right, pen up (which classifies).
    page.locator("#draw").focus()
    before = run_id(page)
    page.keyboard.press("Space")
    for _ in range(6):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    wait_for_new_result(page, before)
    expect(page.locator("#source")).to_contain_text("the drawing")
    # And a random test image, by Enter on its button.
    page.get_by_role("button", name="Random test image").focus()
    before = run_id(page)
    page.keyboard.press("Enter")
    wait_for_new_result(page, before)
    expect(page.locator("#source")).to_contain_text("test image #")


def test_the_page_asks_for_the_api_key(page: Page, model_dir: Path) -> None:
    with serve(model_dir, {"API_KEY": "sesame"}) as url:
        wait_until_ready(url)
        page.goto(f"{url}/")
        expect(page.locator("#error")).to_contain_text("401: missing or invalid API key")
        page.get_by_label("API key (if the server needs one)").fill("sesame")
        page.get_by_role("button", name="Apply settings").click()
        expect(page.locator("#status")).to_contain_text("Model tiny ready")
        expect(page.locator("#error")).to_be_hidden()
        before = run_id(page)
        page.get_by_role("button", name="Random test image").click()
        wait_for_new_result(page, before)


def test_a_bad_file_shows_the_reason(page: Page, server: str, tmp_path: Path) -> None:
    file = tmp_path / "notes.png"
    file.write_bytes(b"not an image at all")
    open_page(page, server)
    page.get_by_label("Upload a PNG or JPEG").set_input_files(file)
    expect(page.locator("#error")).to_contain_text("422: file: not an image")
    page.get_by_label("Passes N").fill("100000")
    page.get_by_role("button", name="Random test image").click()
    expect(page.locator("#error")).to_contain_text("samples: 100000 exceeds the maximum of 500")
