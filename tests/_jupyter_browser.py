"""A real JupyterLab on 127.0.0.1 and a headless Chromium driven by Selenium, for the notebook annotator's browser
test and for ``docs/make_notebook_figures.py`` (the README's screenshot and the latency figures).

JupyterLab runs in its own process with the repository first on ``PYTHONPATH`` (the kernel imports this checkout)
and its settings, workspaces and runtime files in a temporary folder; the app object is exposed in the page
(``expose_app_in_browser``), so the notebook is run and the kernel is read through JupyterLab's own API.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")


def browser_paths() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = next((p for p in map(shutil.which, DRIVER) if p), None)
    return (browser, driver) if browser and driver else None


def require_browser() -> None:
    """Skip the calling test module unless Selenium, anywidget, JupyterLab, Chromium and chromedriver are there."""
    import pytest

    for module in ("selenium", "anywidget", "jupyterlab"):
        pytest.importorskip(module)
    if browser_paths() is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                    allow_module_level=True)


def write_notebook(path: Path, cells: list[str]) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


class JupyterLab:
    """``with JupyterLab(folder) as lab:`` a server on a free port of 127.0.0.1 serving ``folder``."""

    def __init__(self, folder: Path, timeout: float = 90.0) -> None:
        self.folder = Path(folder)
        self.timeout = timeout
        self.token = secrets.token_hex(16)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def __enter__(self) -> JupyterLab:
        state = self.folder / ".jupyter-state"
        state.mkdir(parents=True, exist_ok=True)
        notices = state / "settings" / "@jupyterlab" / "apputils-extension"
        notices.mkdir(parents=True, exist_ok=True)  # no "get news?" toast over the page
        (notices / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "QT_", "NAPARI", "PYQT"))}
        env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   JUPYTER_RUNTIME_DIR=str(state / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"), JUPYTER_CONFIG_DIR=str(state / "config"),
                   MPLBACKEND="Agg")
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.folder}",
                   "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
                   "jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            command.append("--allow-root")
        self.log = open(state / "server.log", "wb")
        self.process = subprocess.Popen(command, cwd=self.folder, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.server_log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as reply:
                    json.loads(reply.read())
                    return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise TimeoutError(f"JupyterLab did not start within {self.timeout} s: {self.server_log()[-3000:]}")

    def server_log(self) -> str:
        return (self.folder / ".jupyter-state" / "server.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def chromium(width: int = 1300, height: int = 1100):
    """A headless Chromium (Debian's ``chromium`` + ``chromium-driver``) under Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1", "--no-first-run",
                     "--disable-extensions", "--disable-background-timer-throttling",
                     "--disable-renderer-backgrounding"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


# JavaScript run in the page: JupyterLab's app is window.jupyterapp
_PANEL = """
const app = window.jupyterapp;
const panel = app.shell.currentWidget;
"""
RUN_ALL = _PANEL + """
const done = arguments[arguments.length - 1];
(async () => {
  await panel.context.ready; await panel.sessionContext.ready;
  while (!panel.sessionContext.session || !panel.sessionContext.session.kernel)
    await new Promise(r => setTimeout(r, 100));
  await app.commands.execute('notebook:run-all-cells');
  done('ok');
})().catch(e => done('error: ' + e));
"""
EXECUTE = _PANEL + """
const done = arguments[arguments.length - 1];
(async () => {
  const kernel = panel.sessionContext.session.kernel;
  const future = kernel.requestExecute({code: arguments[0], store_history: false});
  let out = '';
  future.onIOPub = (msg) => {
    const c = msg.content;
    if (msg.header.msg_type === 'stream') out += c.text;
    else if (msg.header.msg_type === 'error') out += 'ERROR ' + c.ename + ': ' + c.evalue;
    else if (msg.header.msg_type === 'execute_result') out += c.data['text/plain'];
  };
  await future.done;
  done(out);
})().catch(e => done('ERROR js: ' + e));
"""
RESTART = _PANEL + """
const done = arguments[arguments.length - 1];
panel.sessionContext.session.kernel.restart().then(() => done('ok'), e => done('error: ' + e));
"""
APP_READY = "return !!(window.jupyterapp && window.jupyterapp.shell.currentWidget && " \
            "window.jupyterapp.shell.currentWidget.sessionContext);"


class NotebookPage:
    """One notebook open in JupyterLab in the browser, with the helpers the tests need."""

    def __init__(self, lab: JupyterLab, driver, name: str, timeout: float = 120.0) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.timeout = driver, timeout
        driver.set_script_timeout(timeout)
        driver.get(lab.url(f"lab/tree/{name}"))
        WebDriverWait(driver, timeout).until(lambda d: d.execute_script(APP_READY))

    def run_all(self) -> None:
        result = self.driver.execute_async_script(RUN_ALL)
        assert result == "ok", result

    def execute(self, code: str) -> str:
        """Run ``code`` in the notebook's kernel (not as a cell) and return what it printed."""
        return self.driver.execute_async_script(EXECUTE, code)

    def restart_kernel(self) -> None:
        result = self.driver.execute_async_script(RESTART)
        assert result == "ok", result

    def widgets(self):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, ".focsam")

    def wait_for(self, predicate, what: str, timeout: float | None = None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise TimeoutError(f"timed out waiting for {what}")

    def output_texts(self) -> list[str]:
        """The text of every output of the notebook's cells, as shown."""
        from selenium.webdriver.common.by import By

        return [o.text for o in self.driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]


class WidgetDriver:
    """Mouse and buttons on one annotator widget in the page; pixels are image (y, x)."""

    def __init__(self, page: NotebookPage, root) -> None:
        from selenium.webdriver.common.by import By

        self.page, self.root = page, root
        self.canvas = root.find_element(By.CSS_SELECTOR, "canvas.focsam-prompts")
        self.by = By

    def data(self, key: str) -> str | None:
        return self.root.get_attribute(f"data-{key}")

    def status(self) -> str:
        return self.root.find_element(self.by.CSS_SELECTOR, ".focsam-status").text

    def settled(self) -> bool:
        return self.data("pending") in (None, "0") and self.data("busy") == "0"

    def wait_settled(self, what: str = "the widget to settle") -> None:
        self.page.wait_for(self.settled, what)

    def _point(self, y: float, x: float) -> tuple[int, int]:
        """The whole CSS pixel of the viewport inside image pixel (y, x) at scale 1 (the canvas scrolled into the
        middle of the page first)."""
        left, top = self.page.driver.execute_script(
            "arguments[0].scrollIntoView({block: 'center', inline: 'nearest'});"
            "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top];", self.canvas)
        return math.ceil(left + x), math.ceil(top + y)

    def _chain(self, y: float, x: float):
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.page.driver, duration=0)
        return self._move(chain, y, x)

    def _move(self, chain, y: float, x: float):
        px, py = self._point(y, x)
        chain.w3c_actions.pointer_action.move_to_location(px, py)
        chain.w3c_actions.key_action.pause()
        return chain

    def click(self, y: float, x: float, *, negative: bool = False) -> None:
        from selenium.webdriver.common.keys import Keys

        chain = self._chain(y, x)
        if negative:
            chain = chain.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT)
        else:
            chain = chain.click()
        chain.perform()

    def drag(self, y0: float, x0: float, y1: float, x1: float) -> None:
        chain = self._chain(y0, x0).click_and_hold()
        chain = self._move(chain, (y0 + y1) / 2, (x0 + x1) / 2)
        self._move(chain, y1, x1).release().perform()

    def button(self, name: str) -> None:
        self.root.find_element(self.by.CSS_SELECTOR, f"button.focsam-{name}").click()


def measure_latency(page: NotebookPage, widget: WidgetDriver, points: list[tuple[int, int]]) -> list[dict]:
    """Click ``points`` one after the other (each once the previous mask is shown) and return the browser's
    measurements: ``applied_ms`` (click event to the overlay's pixels written), ``painted_ms`` (to the next frame),
    ``model_ms`` (the job's own time in the kernel)."""
    driver = page.driver
    driver.execute_script("window.focsamLatencies = [];")
    for y, x in points:
        before = len(driver.execute_script("return window.focsamLatencies;"))
        widget.click(y, x)
        page.wait_for(lambda: len(driver.execute_script("return window.focsamLatencies;")) > before,  # noqa: B023
                      f"the mask of the click at {(y, x)}")
    widget.wait_settled()
    return driver.execute_script("return window.focsamLatencies;")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
