"""The web page in headless Chromium (Selenium): enrol, unlock, reject, identify, unknown, error.

A screenshot of each state goes to the test's tmp folder (and to $BIOMATCH_SCREENSHOTS if set).
Skips cleanly when selenium, chromium or chromedriver is not installed
(Debian: `apt-get install -y chromium chromium-driver`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from biomatch.gallery.service import GalleryService
from biomatch.gallery.store import SQLiteStore
from biomatch.gallery.toy import PixelEmbedder, pattern_images
from biomatch.server import create_app
from biomatch.server.background import background_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def driver():  # noqa: ANN201
    webdriver = pytest.importorskip("selenium.webdriver")
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium / chromedriver not installed")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,900"):
        opts.add_argument(arg)
    try:
        drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start means "no browser here"
        pytest.skip(f"chromium did not start: {exc}")
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def test_web_page_states(driver, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    svc = GalleryService(PixelEmbedder(), SQLiteStore(tmp_path / "g.db"), threshold=0.5)
    paths = {}
    for ident, name in [(1, "alice"), (2, "bob")]:
        for i, img in enumerate(pattern_images(ident, 4, seed=0)):
            paths[f"{name}{i}"] = tmp_path / f"{name}{i}.png"
            img.save(paths[f"{name}{i}"])
    shots_dir = Path(os.environ.get("BIOMATCH_SCREENSHOTS", tmp_path / "shots"))
    shots_dir.mkdir(parents=True, exist_ok=True)

    def el(id_: str):  # noqa: ANN202
        return driver.find_element(By.ID, id_)

    def act(button: str, files: list[str], shot: str) -> str:
        el("file").clear()
        el("file").send_keys("\n".join(str(paths[f]) for f in files))
        el(button).click()
        WebDriverWait(driver, 15).until(lambda d: el("status").get_attribute("class") != "busy"
                                        and "…" not in el("status").text)
        driver.save_screenshot(str(shots_dir / f"{shot}.png"))
        return el("status").text

    with background_server(create_app(svc, token="tok")) as url:
        driver.get(url + "/")
        WebDriverWait(driver, 15).until(lambda d: "0 user(s) enrolled" in el("health").text)
        driver.save_screenshot(str(shots_dir / "1_start.png"))
        el("user").send_keys("alice")
        assert act("enroll-btn", ["alice0"], "2_enrol_refused").startswith("Enrolment failed:")  # no token
        assert svc.users() == []
        assert "enter the admin token" in act("identify-btn", ["alice0"], "2b_identify_needs_token")  # 401 → asks
        el("token").send_keys("tok")
        assert act("enroll-btn", ["alice0", "alice1"], "3_enrolled") == "Enrolled alice: 2 image(s) added, 2 template(s) in total."
        assert el("status").get_attribute("class") == "ok"
        WebDriverWait(driver, 10).until(lambda d: el("health").text.startswith("1 user(s) enrolled"))
        assert act("verify-btn", ["alice3"], "4_unlocked").startswith("Unlocked: alice")
        assert act("verify-btn", ["bob0"], "5_rejected").startswith("Rejected: alice")
        assert el("status").get_attribute("class") == "no"
        assert act("identify-btn", ["alice2"], "6_identified") == "Identified: alice"
        assert "alice" in el("result").text
        assert act("identify-btn", ["bob1"], "7_unknown") == "Unknown person"
        el("user").clear()
        el("user").send_keys("ghost")
        assert "unknown user 'ghost'" in act("verify-btn", ["bob1"], "8_error")
    assert [u.user for u in svc.users()] == ["alice"]
    assert len(list(shots_dir.glob("*.png"))) >= 9
