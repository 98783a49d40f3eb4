"""The web pages in a real browser: drawing a search region, a search end to end with its
match lines, the catalog page's thumbnails, the jobs page updating itself, the admin
upload. Real Chromium, the live server, the real Celery worker, real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from retrieval import services
from retrieval.models import Catalog, CatalogImage
from tests.browser.conftest import wait_for
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory

pytestmark = [pytest.mark.browser]

CATALOG_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


@pytest.fixture
def indexed_catalog(celery_worker: object) -> Catalog:
    """Three real photos, each its own landmark, indexed by the worker."""
    catalog = services.catalog_get_or_create(name="demo")
    for name in CATALOG_PHOTOS:
        landmark = services.landmark_get_or_create(catalog=catalog, name=name.split(".")[0])
        services.image_ingest(
            catalog=catalog, data=encode(load_photo(name), quality=92), filename=name, landmark=landmark
        )
    wait_for(
        lambda: not catalog.images.exclude(status=CatalogImage.Status.INDEXED).exists(),
        timeout=300,
        message="the worker did not index the catalog",
    )
    return catalog


@pytest.fixture
def staff_password(django_user_model: type) -> str:
    django_user_model.objects.create_superuser("boss", "boss@example.org", "a-long-test-password")
    return "a-long-test-password"


def _sign_in(browser: WebDriver, live_server: object, password: str, next_path: str) -> None:
    browser.get(f"{live_server.url}{next_path}")  # staff-only: the admin login comes first
    assert "/admin/login/" in browser.current_url
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(lambda: "/admin/login/" not in browser.current_url, message="sign-in did not leave the login page")


def _file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _rotated_chelsea() -> bytes:
    """Chelsea stored 451x300 with EXIF orientation 6: upright it is 300 wide, 451 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(load_photo("chelsea.png")), exif=exif, quality=90)


def _bbox(browser: WebDriver) -> list[float]:
    value = browser.find_element(By.NAME, "bbox").get_attribute("value") or ""
    return [float(v) for v in value.split(",")] if value else []


def _preview(browser: WebDriver) -> WebElement:
    wait_for(
        lambda: browser.execute_script("return document.getElementById('preview').dataset.ready === '1'"),
        message="the preview did not load",
    )
    return browser.find_element(By.ID, "region")


def _offsets(element: WebElement, fx: float, fy: float) -> tuple[int, int]:
    """Offsets from the element's centre (Selenium 4) to the fraction (fx, fy) of its box."""
    return round((fx - 0.5) * element.rect["width"]), round((fy - 0.5) * element.rect["height"])


def test_drawing_on_the_preview_of_a_rotated_photo_fills_the_bbox_in_upright_photo_pixels(
    browser: WebDriver, live_server: object, transactional_db: None, tmp_path: Path, artifacts_dir: Path
) -> None:
    CatalogFactory(name="demo")
    browser.get(live_server.url + "/")
    browser.find_element(By.NAME, "image").send_keys(_file(tmp_path, "cat.jpg", _rotated_chelsea()))
    region = _preview(browser)
    assert browser.find_element(By.ID, "preview-size").text == "300 × 451 px"
    ActionChains(browser).move_to_element_with_offset(
        region, *_offsets(region, 0.25, 0.2)
    ).click_and_hold().move_to_element_with_offset(region, *_offsets(region, 0.75, 0.8)).release().perform()
    x1, y1, x2, y2 = _bbox(browser)
    # The upright photo's pixels (300x451), whatever the preview's displayed size.
    assert x1 == pytest.approx(75, abs=4) and x2 == pytest.approx(225, abs=4)
    assert y1 == pytest.approx(90, abs=5) and y2 == pytest.approx(361, abs=5)
    assert float(browser.find_element(By.CSS_SELECTOR, ".region-rect").get_attribute("width")) == pytest.approx(
        x2 - x1, abs=1.5
    )
    browser.save_screenshot(str(artifacts_dir / "search-region-desktop.png"))
    browser.find_element(By.ID, "region-clear").click()
    assert _bbox(browser) == []


def test_the_search_page_fits_a_phone_and_a_finger_draws_the_region(
    browser: WebDriver, live_server: object, transactional_db: None, tmp_path: Path, artifacts_dir: Path
) -> None:
    CatalogFactory(name="demo")
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 1})
    browser.get(live_server.url + "/")
    browser.find_element(By.NAME, "image").send_keys(
        _file(tmp_path, "astronaut.jpg", encode(load_photo("astronaut.png")))
    )
    region = _preview(browser)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    assert region.rect["width"] <= 390
    finger = PointerInput(interaction.POINTER_TOUCH, "finger")
    actions = ActionChains(browser, devices=[finger])
    actions.w3c_actions.pointer_action.move_to(region, *_offsets(region, 0.2, 0.1)).pointer_down().move_to(
        region, *_offsets(region, 0.5, 0.3)
    ).move_to(region, *_offsets(region, 0.8, 0.6)).pointer_up()
    actions.perform()
    x1, y1, x2, y2 = _bbox(browser)  # astronaut.png is 512x512
    assert (x1, y1, x2, y2) == pytest.approx((102, 51, 410, 307), abs=6)
    browser.save_screenshot(str(artifacts_dir / "search-phone-390x844.png"))


QUERY_ANGLE, QUERY_CROP, QUERY_SIDE = 7.0, (40, 30, 490, 480), 400


def _query_photo() -> bytes:
    """The astronaut (512x512) rotated, cropped and rescaled: another photo of the scene."""
    photo = Image.fromarray(load_photo("astronaut.png")).rotate(QUERY_ANGLE, resample=Image.Resampling.BICUBIC)
    cropped = photo.crop(QUERY_CROP).resize((QUERY_SIDE, QUERY_SIDE), Image.Resampling.LANCZOS)
    return encode(cropped, quality=85)


def _catalog_to_query(points: np.ndarray) -> np.ndarray:
    """(N, 2) astronaut pixels -> the query's pixels (PIL turns counterclockwise, y down)."""
    theta = np.deg2rad(QUERY_ANGLE)
    rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    turned = (points - 256) @ rotation.T + 256
    return (turned - QUERY_CROP[:2]) * QUERY_SIDE / (QUERY_CROP[2] - QUERY_CROP[0])


def test_a_search_from_the_page_names_the_landmark_and_draws_the_match_lines(
    browser: WebDriver, live_server: object, indexed_catalog: Catalog, tmp_path: Path, artifacts_dir: Path
) -> None:
    browser.set_window_size(1280, 1400)
    browser.get(live_server.url + "/")
    browser.find_element(By.NAME, "image").send_keys(_file(tmp_path, "query.jpg", _query_photo()))
    _preview(browser)
    Select(browser.find_element(By.NAME, "catalog")).select_by_value("demo")
    browser.find_element(By.ID, "search-submit").click()
    verdict = wait_for(
        lambda: "/searches/" in browser.current_url and browser.find_elements(By.CSS_SELECTOR, ".landmark.found"),
        timeout=120,
        message="no landmark shown on the results page",
    )
    assert "astronaut" in verdict[0].text
    # The lines results.js drew: many, each from the query panel (x < 490) to the catalog
    # photo's panel (x >= 510), inside the 1000x400 drawing.
    lines = browser.execute_script(
        "return Array.from(document.querySelectorAll('li.verified g.matches line')).map(function (l) {"
        " return ['x1', 'y1', 'x2', 'y2'].map(function (a) { return +l.getAttribute(a); }); });"
    )
    assert len(lines) >= 20
    points = np.array(lines)
    assert (points[:, 0] >= 0).all() and (points[:, 0] <= 490).all() and (points[:, 2] >= 510).all()
    assert (points[:, 2] <= 1000).all() and (points[:, [1, 3]] >= 0).all() and (points[:, [1, 3]] <= 400).all()
    assert points[:, 0].std() > 20  # spread over the photo, not one point repeated
    # And each joins the right places: back in photo pixels (query 400x400 drawn at scale 1
    # from x=45; catalog 512x512 at 400/512 from x=555), the catalog end maps onto the
    # query end by the transform that made the query.
    query_end = points[:, :2] - [45, 0]
    catalog_end = (points[:, 2:] - [555, 0]) / (400 / 512)
    assert np.median(np.linalg.norm(_catalog_to_query(catalog_end) - query_end, axis=1)) < 4
    browser.execute_script("document.querySelector('li.verified').scrollIntoView({block: 'center'})")
    browser.save_screenshot(str(artifacts_dir / "results-with-matches.png"))


def test_the_catalog_page_shows_each_landmark_with_thumbnails_not_originals(
    browser: WebDriver, live_server: object, indexed_catalog: Catalog, artifacts_dir: Path
) -> None:
    browser.get(f"{live_server.url}/catalogs/demo/")
    assert [h.text.split("\n")[0] for h in browser.find_elements(By.CSS_SELECTOR, ".landmark-card h2")] == [
        "astronaut 1 photo", "chelsea 1 photo", "coffee 1 photo",
    ]  # fmt: skip
    sizes = wait_for(
        lambda: browser.execute_script(
            "var imgs = Array.from(document.querySelectorAll('img.thumb'));"
            "return imgs.every(function (i) { return i.complete && i.naturalWidth; }) &&"
            " imgs.map(function (i) { return [i.naturalWidth, i.naturalHeight]; });"
        ),
        message="the thumbnails did not load",
    )
    assert len(sizes) == 3 and max(max(size) for size in sizes) == 480  # astronaut.png is 512x512
    assert "3 indexed" in browser.find_element(By.CSS_SELECTOR, ".status-counts").text
    browser.save_screenshot(str(artifacts_dir / "catalog-page.png"))


def test_the_jobs_page_follows_a_running_import_without_reloading(
    browser: WebDriver, live_server: object, transactional_db: None, staff_password: str, artifacts_dir: Path
) -> None:
    catalog = services.catalog_get_or_create(name="demo")
    job = services.import_job_start(catalog=catalog, source="test", submitted=3)
    images = [
        services.image_ingest(
            catalog=catalog, data=encode(load_photo(name)), filename=name, import_job=job, enqueue=False
        ).image
        for name in CATALOG_PHOTOS
    ]
    services.import_job_finish(job=job, duplicates=0, refused=[])
    _sign_in(browser, live_server, staff_password, "/jobs/")
    percent = browser.find_element(By.CSS_SELECTOR, f"#import-{job.pk} .percent")
    assert percent.text == "0.0%"
    browser.execute_script("window.notReloaded = true;")

    def shown() -> str:
        return browser.find_element(By.CSS_SELECTOR, f"#import-{job.pk} .percent").text

    services.image_index(image_id=images[0].pk)
    wait_for(lambda: shown() == "33.3%", timeout=15, message="the page did not show 33.3%")
    for image in images[1:]:
        services.image_index(image_id=image.pk)
    wait_for(lambda: shown() == "100.0%", timeout=15, message="the page did not show 100.0%")
    assert browser.execute_script("return window.notReloaded === true")
    row = browser.find_element(By.ID, f"import-{job.pk}")
    assert "3 of 3 indexed" in row.text and "finished" in (row.get_attribute("class") or "")
    browser.save_screenshot(str(artifacts_dir / "jobs-page.png"))


def test_the_admin_upload_lands_on_the_jobs_page_which_shows_the_photos_indexed(
    browser: WebDriver, live_server: object, celery_worker: object, staff_password: str, tmp_path: Path
) -> None:
    _sign_in(browser, live_server, staff_password, "/admin/retrieval/catalogimage/upload/")
    browser.get(f"{live_server.url}/admin/retrieval/catalogimage/upload/")
    browser.find_element(By.NAME, "new_catalog").send_keys("museum")
    browser.find_element(By.NAME, "landmark").send_keys("Rocket")
    paths = [
        _file(tmp_path, f"{n}.jpg", encode(load_photo(f"{n}.{ext}")))
        for n, ext in (("rocket", "jpg"), ("coffee", "png"))
    ]
    browser.find_element(By.NAME, "files").send_keys("\n".join(paths))
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(lambda: "/jobs/" in browser.current_url, message="the upload did not go to the jobs page")
    assert "2 image(s) added to museum" in browser.find_element(By.CSS_SELECTOR, ".messages").text
    job_id = browser.current_url.rsplit("#import-", 1)[1]
    wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, f"#import-{job_id} .percent").text == "100.0%",
        timeout=120,
        message="the jobs page did not show the upload indexed",
    )
    assert Catalog.objects.get(name="museum").images.filter(status="indexed").count() == 2
