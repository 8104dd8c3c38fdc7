"""The web chat page served by `hypnos serve`, driven in headless Chromium (Debian's /usr/bin/chromium).

Skipped where Chromium is not installed (.ci/run installs it where it can).
"""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_page_streams_an_answer_from_the_selected_model(tiny_model_dir, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    from hypnos.serve.app import run_server

    with run_server({"tiny-a": str(tiny_model_dir), "tiny-b": str(tiny_model_dir)}) as url:
        root = url.removesuffix("v1")
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page()
            page.goto(root)
            page.wait_for_function("document.querySelectorAll('#model option').length == 2")
            assert page.locator(".disclaimer").inner_text().count("不能替代执业医师") == 1
            page.select_option("#model", "tiny-b")
            page.fill("#input", "全麻术后恶心呕吐如何预防？")
            page.click("#send")
            page.wait_for_function(
                "document.querySelector('.msg.assistant') && document.querySelector('.msg.assistant').innerText.length > 0"
                " && !document.querySelector('#send').disabled", timeout=60_000)
            assert page.locator(".msg.user").inner_text() == "全麻术后恶心呕吐如何预防？"
            assert len(page.locator(".msg.assistant").inner_text()) > 0
            assert page.locator(".msg.error").count() == 0
            page.screenshot(path=str(tmp_path / "chat.png"))
            browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 5000
