"""The web dashboard in a real browser: Debian's headless Chromium, driven by Selenium
through Debian's chromedriver, against `provisioner serve` on loopback.

What a user sees: every page loads with no console error; a node's state change made
by another process appears in the open table without a reload (server-sent events); an
action without a login is refused; after a login, an action works and says so; the
cluster page draws its smoke history; Swagger UI renders from the appliance's own files
(no network beyond loopback: the cluster network is often offline). Screenshots of each
page are kept in ``$PROVISIONER_TEST_OUTPUT`` (default: test-output/ in the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.records import Cluster, Engine, EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent
from tests.integration.conftest import ROOT, Appliance, need

pytestmark = pytest.mark.root  # serve on loopback (fast tier: no namespaces)

MAC = "52:54:00:d0:00:01"
WORKER = "52:54:00:d0:00:02"
OUTPUT = Path(os.environ.get("PROVISIONER_TEST_OUTPUT", ROOT / "test-output")) / "dashboard"


def seed(registry: Registry) -> None:
    """Two nodes with a boot on record, a cluster of them with three smoke runs."""
    now = time.time()
    for mac, name in ((MAC, "gpu0"), (WORKER, "gpu1")):
        registry.touch_node(mac, ip=f"127.0.0.{10 + int(mac[-1])}")
        registry.set_hostname(mac, name)
        registry.add_event(mac, EventKind.POWER, {"op": "cycle", "ok": True}, ts=now - 60)
        registry.add_event(mac, EventKind.DHCP, {"msg": "discover"}, ts=now - 52)
        registry.add_event(mac, EventKind.DHCP_REPLY, {}, ts=now - 51)
        registry.add_event(mac, EventKind.SCRIPT, {"boot": "image"}, ts=now - 50)
        registry.add_event(mac, EventKind.HTTP_FILE, {"file": "images/d@1/vmlinuz"}, ts=now - 45)
        registry.add_event(mac, EventKind.HTTP_FILE, {"file": "images/d@1/initrd"}, ts=now - 40)
        registry.add_event(mac, EventKind.KEYS, {}, ts=now - 30)
        for event in (NodeEvent.INVENTORY, NodeEvent.MATCH, NodeEvent.ENROLL):
            registry.transition(mac, event, reason="seeded")
    registry.add_step("pi-1", WORKER, "driver", "failed", 1, "dkms: build failed", 12.0)
    cluster = Cluster("smol", Engine.LLAMA_RPC, "smollm2", "gpu0", ("gpu1",))
    registry.save_cluster("smol", cluster.to_json())
    for i, (ttft, tps) in enumerate([(0.52, 88.0), (0.41, 97.5), (0.47, 93.1)]):
        for step, value in (("smoke:ttft_s", ttft), ("smoke:decode_tokens_per_s", tps)):
            registry.add_step(f"smoke-{1000 + i}", MAC, step, "ok", None,
                              json.dumps({"value": value}), 0.0)  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    need("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-dev-shm-usage",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver",
                      log_output=str(tmp_path / "chromedriver.log"))  # fmt: skip
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], object], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver: Any, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(OUTPUT / f"{name}.png"))


def test_the_dashboard_in_chromium(loopback_appliance: Appliance, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    app = loopback_appliance
    text = app.config.read_text().replace("[http]\n", "[http]\nopen_reads = true\n")
    app.config.write_text(text)  # Swagger UI readable without a token, as on a lab network
    app.start()
    registry = Registry(app.state / "registry.sqlite3")
    seed(registry)
    driver = browser

    # The node table, then a state change from another process, shown live.
    driver.get(app.base + "/")
    wait_for("the live feed", lambda: driver.find_element(By.ID, "live").text == "live")
    driver.execute_script("window.notReloaded = true;")
    row = wait_for("gpu0's row", lambda: driver.find_elements(By.ID, f"node-{MAC}"))[0]
    assert "enrolled" in row.text and "gpu0" in row.text
    worker = driver.find_element(By.ID, f"node-{WORKER}")
    assert "driver failed" in worker.text and "failed" in worker.get_attribute("class")
    shot(driver, "nodes")
    started = time.monotonic()
    registry.transition(MAC, NodeEvent.FAIL, reason="a test failed it")

    selector = "#node-" + MAC.replace(":", "\\:") + ' [data-col="state"]'

    def state_cell() -> str:
        return str(driver.find_element(By.CSS_SELECTOR, selector).text)

    wait_for("the row to say failed", lambda: state_cell() == "failed", timeout=10)
    live_s = time.monotonic() - started
    assert driver.execute_script("return window.notReloaded === true;"), "the page reloaded"
    shot(driver, "nodes-after-change")
    print(f"state change shown live in {live_s:.2f} s")
    assert console_errors(driver) == []

    # A node page: its last boot drawn, and no actions without a login.
    driver.get(f"{app.base}/nodes/gpu0")
    bars = driver.find_elements(By.CSS_SELECTOR, "#timeline g.bar")
    assert len(bars) >= 6, len(bars)
    assert driver.find_elements(By.CSS_SELECTOR, "#timeline g.bar.failed")  # the FAIL above
    assert not driver.find_elements(By.ID, "action-boot-local")
    shot(driver, "node")

    # The cluster page: members and the smoke history charted.
    driver.get(f"{app.base}/clusters/smol")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chart-ttft circle.dot")) == 3
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chart-tps circle.dot")) == 3
    shot(driver, "cluster")

    # Swagger UI, from the appliance's own files.
    driver.get(f"{app.base}/api/docs")
    wait_for("Swagger UI's operations", lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock"),
             timeout=20)  # fmt: skip
    shot(driver, "api-docs")
    assert console_errors(driver) == []

    # An action without a login: refused, nothing changed.
    driver.get(f"{app.base}/nodes/gpu1")
    status = driver.execute_script(
        "return fetch('/nodes/gpu1/actions/boot-local', {method: 'POST', body: 'csrf=x',"
        " headers: {'content-type': 'application/x-www-form-urlencoded'}}).then(r => r.status);"
    )
    assert status == 401
    node = registry.node(WORKER)
    assert node is not None and node.state.value == "enrolled"
    driver.get_log("browser")  # the 401 above is logged as a failed load: expected

    # Log in with the API token, then act.
    driver.get(f"{app.base}/login?next=/nodes/gpu1")
    driver.find_element(By.ID, "key").send_keys(app.api_token)
    shot(driver, "login")
    driver.find_element(By.ID, "login").click()
    wait_for("the node page", lambda: driver.find_elements(By.ID, "action-boot-local"))
    driver.find_element(By.ID, "action-boot-local").click()
    flash = wait_for("the outcome", lambda: driver.find_elements(By.ID, "flash"))[0]
    assert "gpu1: boots from local next" in flash.text
    node = registry.node(WORKER)
    assert node is not None and node.state.value == "local"
    shot(driver, "node-after-action")
    assert console_errors(driver) == []
    registry.close()
