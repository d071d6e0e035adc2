"""Keep a dashboard page open in headless chromium for a while (the benchmark measures what
the gateway spends meanwhile): log in, go to PAGE, stay SECONDS, quit.

Usage: open.py URL TOKEN PAGE SECONDS. Prints `OPEN` once the page shows data, `DONE` at the end.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, token, page, seconds = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3], float(sys.argv[4])
options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--window-size=1400,1000"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                          options=options)
try:
    driver.get(url + "/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "who").text)
    driver.get(f"{url}/#{page}")
    ready = {"overview": "#chart-messages[data-points]", "clients": "#clients-table tr[data-id]",
             "banned": "#banned-table tr[data-who]", "offenders": "#offenders-table tr[data-clientid]"}
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ready[page]))
    print("OPEN", flush=True)
    time.sleep(seconds)  # the measurement window: the page refreshes itself meanwhile
    if len(sys.argv) > 5:
        driver.save_screenshot(sys.argv[5])
    print("DONE", flush=True)
finally:
    driver.quit()
