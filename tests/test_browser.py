"""The web page of `rtmo serve` in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven
by Selenium; nothing is downloaded at test time): upload a shared image, wait for the drawn result, check the
people shown equal the JSON's; webcam mode with Chromium's fake camera; Swagger UI rendered offline.

The screenshot goes to the test's tmp folder, and to $RTMO_SERVE_SCREENSHOT when set (docs/serve.png was
made with `RTMO_SERVE_SCREENSHOT=docs/serve.png pytest tests/test_browser.py`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("Chromium not installed: apt-get install chromium chromium-driver (.ci/run does this)",
                allow_module_level=True)
pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from .conftest import data_images  # noqa: E402
from .test_serve import _start_server  # noqa: E402


@pytest.fixture(scope="module")
def server():
    proc, url = _start_server()
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to fetch a driver or a browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream"):  # a synthetic camera, permission granted
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(driver, condition, seconds: float = 60):
    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: d.execute_script(condition))


def test_upload_draws_the_people_of_the_json(server, browser, tmp_path):
    image = data_images()[2]
    browser.get(server + "/")
    _wait(browser, "return document.body.dataset.ready === '1'")
    browser.find_element(By.ID, "threshold").send_keys("0.6")  # fewer boxes from the random-weight fixture
    browser.find_element(By.ID, "file").send_keys(str(image))
    _wait(browser, "return document.getElementById('canvas').dataset.state === 'done'")

    answer = json.loads(browser.find_element(By.ID, "json").text)
    canvas = browser.find_element(By.ID, "canvas")
    shown = int(canvas.get_attribute("data-people"))
    assert shown == len(answer["detections"]) > 0
    assert f"{shown} people" in browser.find_element(By.ID, "status").text or shown == 1
    h, w = cv2.imread(str(image)).shape[:2]
    assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (w, h)
    # skeletons are on the canvas: pixels in exactly the limb colours of draw.py (left orange, right blue)
    counts = browser.execute_script("""
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let left = 0, right = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i] === 255 && d[i + 1] === 165 && d[i + 2] === 0) left++;
          if (d[i] === 0 && d[i + 1] === 128 && d[i + 2] === 255) right++;
        }
        return [left, right];""")
    assert min(counts) > 20, counts

    shot = tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    png = cv2.imread(str(shot))
    assert png is not None and png.shape[1] >= 1000
    target = os.environ.get("RTMO_SERVE_SCREENSHOT")
    if target:  # a small PNG for the README
        small = cv2.resize(png, (png.shape[1] * 3 // 4, png.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
        cv2.imwrite(target, small, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def test_bad_file_shows_the_server_error(server, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    browser.get(server + "/")
    _wait(browser, "return document.body.dataset.ready === '1'")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait(browser, "return document.getElementById('canvas').dataset.state === 'error'")
    assert "not a JPEG, PNG or WebP image" in browser.find_element(By.ID, "status").text


def test_webcam_streams_over_websocket(server, browser):
    browser.get(server + "/")
    _wait(browser, "return document.body.dataset.ready === '1'")
    browser.find_element(By.ID, "tab-webcam").click()
    browser.find_element(By.ID, "webcam-toggle").click()
    _wait(browser, "return Number(document.getElementById('ws-frames').textContent) >= 4")
    fps = browser.find_element(By.ID, "ws-fps").text
    latency = browser.find_element(By.ID, "ws-latency").text
    assert float(fps) > 0 and float(latency) > 0
    assert browser.find_element(By.ID, "ws-status").text == "streaming"
    browser.find_element(By.ID, "webcam-toggle").click()


def test_swagger_docs_render_offline(server, browser):
    browser.get(server + "/docs")
    _wait(browser, "return document.querySelectorAll('.opblock-summary-path').length >= 3")
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/predict", "/predict/image", "/health"} <= paths
