"""The dashboard in a real browser (Debian's chromium, driven through chromium-driver by
selenium), against a real gateway that tests/dashboard.rs started with a real device on it.

The Rust test and this script take turns: at each `STEP name` line printed here the script
waits for a line on stdin (the Rust side checks the device's side of things, says `GO`).
Any failure exits non-zero with what was expected and what the page showed.

Environment: PORTCULLIS_ADMIN_URL, PORTCULLIS_ADMIN_TOKEN, PORTCULLIS_DEVICE (its client ID),
PORTCULLIS_SCREENSHOTS (a directory, or empty for none); CHROMIUM and CHROMEDRIVER (paths).
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                        TimeoutException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["PORTCULLIS_ADMIN_URL"].rstrip("/")
TOKEN = os.environ["PORTCULLIS_ADMIN_TOKEN"]
DEVICE = os.environ["PORTCULLIS_DEVICE"]
# A second device whose client ID is HTML: it must show as text and run nothing.
HOSTILE = os.environ["PORTCULLIS_HOSTILE_DEVICE"]
SHOTS = os.environ.get("PORTCULLIS_SCREENSHOTS", "")
WAIT = 30


def step(name):
    """Tell the Rust side where we are and wait for its go-ahead."""
    print(f"STEP {name}", flush=True)
    line = sys.stdin.readline().strip()
    if line != "GO":
        sys.exit(f"the test said {line!r} after step {name}")


def shot(driver, name):
    if SHOTS:
        driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def until(driver, what, cond, timeout=WAIT):
    try:
        # The pages re-render their tables every few seconds: an element found a moment ago
        # may be gone; the condition is simply asked again.
        ignored = (StaleElementReferenceException, NoSuchElementException)
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(cond)
    except TimeoutException:
        for card in driver.find_elements(By.CSS_SELECTOR, ".chart"):
            print(card.get_attribute("id"), card.get_attribute("data-points"), card.get_attribute("data-max"),
                  file=sys.stderr)
        status = driver.find_element(By.ID, "status").text if driver.find_elements(By.ID, "status") else ""
        sys.exit(f"never saw {what} (at {driver.current_url}; status line {status!r})")


def click(driver, selector):
    until(driver, f"{selector} to click", lambda d: d.find_element(By.CSS_SELECTOR, selector).click() or True)


def text_of(driver, selector):
    return until(driver, selector, lambda d: d.find_element(By.CSS_SELECTOR, selector).text)


def css(selector):
    return lambda d: d.find_elements(By.CSS_SELECTOR, selector) or False


def gone(selector):
    return lambda d: not d.find_elements(By.CSS_SELECTOR, selector)


def quoted(value):
    return json.dumps(value)


def go(driver, page):
    driver.find_element(By.CSS_SELECTOR, f"nav a[data-page={page}]").click()
    until(driver, f"the {page} page", lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == page)


def fetch_status(driver, method, path, headers=None):
    """A request from the page itself (its cookie goes with it): the status answered."""
    script = """
        const [method, path, headers, done] = arguments;
        fetch(path, {method, headers, credentials: 'same-origin',
                     body: method === 'GET' ? undefined : JSON.stringify({as: 'clientid', who: 'csrf-victim'})})
          .then(r => done(r.status), e => done(String(e)));
    """
    return driver.execute_async_script(script, method, path, headers or {})


def chart(driver, name):
    card = driver.find_element(By.ID, f"chart-{name}")
    return int(card.get_attribute("data-points") or 0), json.loads(card.get_attribute("data-max") or "{}")


def main():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(WAIT)
    try:
        run(driver)
    finally:
        driver.quit()


def run(d):
    # Without a session, every page leads to the login; a wrong token is refused there.
    d.get(URL + "/")
    until(d, "the login page", lambda d: d.current_url.endswith("/login"))
    d.find_element(By.ID, "token").send_keys("not-a-token-of-ours-0123456789")
    d.find_element(By.ID, "login").click()
    refusal = until(d, "the refusal", css(".refusal"))[0].text
    assert "not one of admin.tokens_file" in refusal, refusal
    assert d.get_cookie("portcullis_session") is None, "a wrong token got a session"
    assert fetch_status(d, "GET", "/api/v1/stats") == 401, "the API answered without a session"
    shot(d, "login")

    d.find_element(By.ID, "token").send_keys(TOKEN)
    d.find_element(By.ID, "login").click()
    until(d, "the overview", lambda d: d.find_element(By.ID, "who").text == "admin ops")
    cookie = d.get_cookie("portcullis_session")
    assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
    assert TOKEN not in d.current_url
    # The session reads; a change without the CSRF header is refused.
    assert fetch_status(d, "GET", "/api/v1/stats") == 200
    assert fetch_status(d, "POST", "/api/v1/banned", {"content-type": "application/json"}) == 403
    until(d, "the first chart", css("#chart-connections[data-points]"))
    points_at_login = chart(d, "connections")[0]

    # Clients: the device is there; banned from its row.
    go(d, "clients")
    row = f"#clients-table tr[data-clientid={quoted(DEVICE)}]"
    until(d, f"{DEVICE} in Clients", css(row))
    hostile = f"#clients-table tr[data-clientid={quoted(HOSTILE)}]"
    until(d, "the hostile client ID in Clients", css(hostile))
    assert text_of(d, f"{hostile} td").startswith(HOSTILE), "shown as text"
    assert d.execute_script("return window.pwned === undefined && !document.querySelector('#clients-table img')")
    shot(d, "clients")
    click(d, f"{row} button.ban")
    until(d, "the ban dialog", lambda d: d.find_element(By.ID, "ban-dialog").get_attribute("open") is not None)
    assert Select(d.find_element(By.ID, "ban-as")).first_selected_option.text == "clientid"
    assert d.find_element(By.ID, "ban-who").get_attribute("value") == DEVICE
    Select(d.find_element(By.ID, "ban-duration")).select_by_visible_text("1 day")
    d.find_element(By.ID, "ban-reason").send_keys("flooding, seen on the dashboard")
    d.find_element(By.ID, "ban-submit").click()
    until(d, f"{DEVICE} gone from Clients (kicked)", gone(row))
    step("banned")

    # Banned: the ban, from this admin; removed from its row.
    go(d, "banned")
    Select(d.find_element(By.NAME, "by")).select_by_value("admin:")
    d.find_element(By.CSS_SELECTOR, "#banned-filter button[type=submit]").click()
    row = f"#banned-table tr[data-as=clientid][data-who={quoted(DEVICE)}]"
    until(d, f"the ban on {DEVICE} in Banned", css(row))
    found = text_of(d, row)
    assert "admin ops" in found and "flooding" in found, found
    shot(d, "banned")
    click(d, f"{row} button.remove")
    until(d, "the confirmation", EC.alert_is_present()).accept()
    until(d, f"the ban on {DEVICE} gone", gone(row))

    # Added from the form, with an exact end (a datetime-local field), then removed.
    d.find_element(By.CSS_SELECTOR, "details.add summary").click()
    Select(d.find_element(By.CSS_SELECTOR, "#ban-add select[name=as]")).select_by_visible_text("username")
    d.find_element(By.CSS_SELECTOR, "#ban-add input[name=who]").send_keys("dash-user")
    end = d.find_element(By.CSS_SELECTOR, "#ban-add input[name=until]")
    d.execute_script("arguments[0].value = arguments[1]", end, "2030-01-02T03:04")
    click(d, "#ban-add button[type=submit]")
    added = "#banned-table tr[data-as=username][data-who='dash-user']"
    until(d, "the added ban", css(added))
    assert "2030-01-02" in text_of(d, added), text_of(d, added)
    click(d, f"{added} button.remove")
    until(d, "the confirmation", EC.alert_is_present()).accept()
    until(d, "the added ban gone", gone(added))
    step("unbanned")

    # Overview: the charts moved: new samples, the device's publishes and discards, the ban.
    go(d, "overview")

    def moved(d):
        points, _ = chart(d, "connections")
        _, messages = chart(d, "messages")
        _, bans = chart(d, "bans")
        return (points > points_at_login and messages.get("forwarded", 0) > 0
                and messages.get("discarded early", 0) > 0 and bans.get("in force", 0) >= 1)
    until(d, "the charts move (samples, forwarded, discarded early, a ban in force)", moved)
    forwarded = d.find_element(By.CSS_SELECTOR, "#tile-forwarded .big").text
    assert forwarded not in ("0", ""), forwarded
    shot(d, "overview")

    # Devices and classes: the device's class, overridden live and cleared.
    go(d, "devices")
    until(d, "the classes", css("#classes-table tr"))
    box = d.find_element(By.CSS_SELECTOR, "#device-lookup input[name=clientid]")
    box.send_keys(DEVICE)
    d.find_element(By.CSS_SELECTOR, "#device-lookup button").click()
    until(d, "the device's class", lambda d: d.find_elements(By.ID, "device-class")
          and d.find_element(By.ID, "device-class").text == "meters")
    Select(d.find_element(By.ID, "override-class")).select_by_value("tight")
    d.find_element(By.ID, "override-set").click()
    until(d, "the override", lambda d: d.find_element(By.ID, "device-class").text == "tight"
          and d.find_elements(By.CSS_SELECTOR, f"#overrides-table tr[data-clientid={quoted(DEVICE)}]"))
    shot(d, "devices")
    d.find_element(By.ID, "override-clear").click()
    until(d, "the override cleared", lambda d: d.find_element(By.ID, "device-class").text == "meters"
          and not d.find_elements(By.CSS_SELECTOR, f"#overrides-table tr[data-clientid={quoted(DEVICE)}]"))

    # Top offenders: the device, with its early publish and the strike for it.
    go(d, "offenders")
    row = f"#offenders-table tr[data-clientid={quoted(DEVICE)}]"
    until(d, f"{DEVICE} among the offenders", css(row))
    cells = until(d, "its cells", lambda d: [c.text for c in d.find_elements(By.CSS_SELECTOR, f"{row} td")])
    assert int(cells[2]) >= 1 and int(cells[6]) >= 1, cells  # early, strikes
    shot(d, "offenders")

    # Logout ends the session: the pages lead to the login again.
    d.find_element(By.ID, "logout").click()
    until(d, "the login page after logout", lambda d: d.current_url.endswith("/login"))
    d.get(URL + "/")
    until(d, "the login page again", lambda d: d.current_url.endswith("/login"))
    print("STEP done", flush=True)


if __name__ == "__main__":
    main()
