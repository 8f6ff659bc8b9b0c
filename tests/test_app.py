"""The Gradio app (`app.py`, the Space's entry point): served by `python app.py` on 127.0.0.1 and driven through
gradio_client and through a real headless Chromium (Selenium with the system's chromium and chromedriver)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client", reason="the app tests need the app extra: pip install -e '.[app]'")

REPOSITORY = Path(__file__).resolve().parents[1]
# Startup imports torch, transformers and Gradio; on a loaded 2-core machine that can take a minute.
STARTUP_TIMEOUT = 240.0
# Chromium as root on a closed network: no sandbox, and nothing that phones home (or it hangs waiting for it).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(tmp_path: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY / "src"), environment.get("PYTHONPATH")]))
    environment["GRADIO_TEMP_DIR"] = str(tmp_path / "gradio")  # uploads and results stay in the test's folder
    environment["GRADIO_ANALYTICS_ENABLED"] = "False"
    environment["HF_HUB_OFFLINE"] = "1"
    return environment


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """`python app.py --host 127.0.0.1 --port N` (the embedded demo model), until the module's tests are done."""
    tmp_path = tmp_path_factory.mktemp("app")
    port = _free_port()
    log = open(tmp_path / "app.log", "w+")
    process = subprocess.Popen(
        [sys.executable, str(REPOSITORY / "app.py"), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        cwd=tmp_path, env=_environment(tmp_path), stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"app.py exited with status {process.returncode}: {log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url} within {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """An unseen synthetic scene that is not square (so "at the image's size" is checked), saved as PNG."""
    from magnet_hf.data.synthetic import generate_scene
    from magnet_hf.demo.segmentation import DEMO_SCENE_SEED

    scene = generate_scene(DEMO_SCENE_SEED, 7, (120, 168))
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    scene.image.save(path)
    expression = scene.expressions[sorted(scene.expressions)[0]][0]
    return path, expression


@pytest.fixture(scope="module")
def local_result(scene):
    """What the embedded model's pipeline gives in this process for the scene: the app must return the same."""
    from magnet_hf.demo.segmentation import load_segmenter

    path, expression = scene
    result = load_segmenter(None, device="cpu")(Image.open(path).convert("RGB"), text=expression)[0]
    return np.asarray(result["mask"]) > 127, result["score"]


def _load_app_module():
    spec = importlib.util.spec_from_file_location("magnet_app", REPOSITORY / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segment_endpoint_returns_overlay_mask_and_score_at_the_image_size(served_app, scene, local_result, tmp_path):
    from gradio_client import Client, handle_file

    from magnet_hf.demo.overlay import overlay_mask

    path, expression = scene
    client = Client(served_app, verbose=False, download_files=str(tmp_path))
    assert "/segment" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    overlay_file, mask_file, score = client.predict(handle_file(str(path)), expression, api_name="/segment")
    image = Image.open(path).convert("RGB")
    overlay, mask = Image.open(overlay_file), Image.open(mask_file)
    assert overlay.size == mask.size == image.size == (168, 120)
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
    expected_mask, expected_score = local_result
    assert expected_mask.any(), "the scene should give a non-empty mask for a meaningful comparison"
    assert np.mean((np.asarray(mask) > 127) != expected_mask) < 1e-3
    assert score == pytest.approx(expected_score, abs=1e-4)
    drawn = np.asarray(overlay_mask(image, expected_mask, f"{expression} ({expected_score:.2f})"), dtype=np.int16)
    assert np.mean(np.abs(np.asarray(overlay.convert("RGB"), dtype=np.int16) - drawn).max(-1) > 1) < 1e-2


def test_bad_input_comes_back_as_a_message(served_app, scene, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    path, expression = scene
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")
    client = Client(served_app, verbose=False, download_files=str(tmp_path))
    cases = [
        ((None, expression), "Upload an image first."),
        ((handle_file(str(path)), "   "), "Type an expression"),
        ((handle_file(str(broken)), expression), "broken.png' is not a readable image"),
    ]
    for arguments, message in cases:
        with pytest.raises(AppError) as error:
            client.predict(*arguments, api_name="/segment")
        assert message in str(error.value)
        assert "Traceback" not in str(error.value) and str(tmp_path / "gradio") not in str(error.value)


def test_page_says_it_uses_the_embedded_model_and_offers_synthetic_examples(served_app):
    with urllib.request.urlopen(served_app + "config", timeout=30) as response:
        config = json.loads(response.read())
    assert "embedded magnet-tiny demo model" in json.dumps(config)
    examples = [c for c in config["components"] if c.get("type") == "dataset"]
    assert examples and len(examples[0]["props"]["samples"]) == 6


def test_bad_arguments_end_with_a_one_line_error(tmp_path, capsys):
    app = _load_app_module()
    assert app.main(["--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: Model folder {str(tmp_path / 'missing')!r} does not exist."
    assert app.main(["--port", "70000"]) == 2
    assert "is not a TCP port" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:
        app.main(["--port", "zero"])
    assert exit_status.value.code == 2


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("Selenium is not installed (pip install -e '.[app]'); the real-browser test is skipped")
    if not browser or not driver:
        pytest.skip(
            "no Chromium or chromedriver installed (apt-get install chromium chromium-driver); the real-browser "
            "test is skipped"
        )
    return browser, driver


def test_real_browser_uploads_types_submits_and_gets_the_mask(served_app, scene, local_result, tmp_path):
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    path, expression = scene
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium would otherwise try to download a matching driver.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    screenshot = tmp_path / "app-screenshot.png"
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(served_app)
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        assert "embedded magnet-tiny demo model" in driver.find_element(By.CSS_SELECTOR, "#model-note").text
        driver.find_element(By.CSS_SELECTOR, "#segment").click()  # nothing uploaded yet: a message, not a traceback
        wait.until(lambda page: "Upload an image first." in page.find_element(By.TAG_NAME, "body").text)
        for close in driver.find_elements(By.CSS_SELECTOR, ".toast-close"):  # keep the screenshot clear of it
            close.click()
        upload.send_keys(str(path))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#image img")))
        driver.find_element(By.CSS_SELECTOR, "#expression textarea").send_keys(expression)
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        mask_image = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#mask img")))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
        wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#score input").get_attribute("value") not in ("", None))
        shown_score = float(driver.find_element(By.CSS_SELECTOR, "#score input").get_attribute("value"))
        mask_url = mask_image.get_attribute("src")
        driver.save_screenshot(str(screenshot))
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
    with urllib.request.urlopen(mask_url, timeout=30) as response:
        mask = np.asarray(Image.open(response).convert("L")) > 127
    expected_mask, expected_score = local_result
    assert mask.shape == expected_mask.shape == (120, 168)
    assert np.mean(mask != expected_mask) < 1e-3
    assert shown_score == pytest.approx(expected_score, abs=1e-4)
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width >= 800
    if os.environ.get("MAGNET_APP_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["MAGNET_APP_SCREENSHOT"])
    print(f"browser screenshot: {screenshot}")
