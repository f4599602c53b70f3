"""docs/images/page.png: the web page serving a checkpoint, its most uncertain test image chosen.

    .venv/bin/python -m scripts.page_screenshot [--model checkpoints/fashion-mlp.safetensors]

Run from the repository root (it uses tests/servers.py); needs Debian's chromium.
"""

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.servers import serve, wait_until_ready

ROOT = Path(__file__).parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "checkpoints/fashion-mlp.safetensors")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/page.png")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()

    with serve(args.model) as url, sync_playwright() as playwright:
        wait_until_ready(url)
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{url}/")
        expect(page.locator("#status")).to_contain_text("ready")
        page.get_by_label("Seed (optional)").fill(args.seed)
        page.get_by_role("button", name="Apply settings").click()
        expect(page.locator("#gallery-status")).to_contain_text(f"seed {args.seed}")
        page.locator("#gallery li").first.get_by_role("button").click()
        expect(page.locator("#status")).to_contain_text("Predicted")
        shot = page.screenshot(full_page=True)
        browser.close()
    # A palette of 64 shades keeps the file small; the page has few colours.
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {image.width} x {image.height}, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
