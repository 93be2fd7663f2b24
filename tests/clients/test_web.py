"""The browser page (web/): headless Chromium computes the sample's map with onnxruntime-web (wasm), and it equals
the Python runtime's.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on
fds 3/4), so nothing beyond the standard library is needed. Skips when node/npm, the npm install of web/,
Chromium (``chromium``/``chromium-browser``/``google-chrome`` on PATH) or the embedded sample is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import pathlib
import queue
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
SAMPLE_MODEL = WEB / "sample" / "shapes_cnn.cam.onnx"
SAMPLE_IMAGE = WEB / "sample" / "sample.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _npm_install(folder: pathlib.Path, marker: str) -> None:
    """``npm ci`` in ``folder`` when its node_modules lack ``marker``; skip if npm or the registry is missing."""
    if (folder / "node_modules" / marker).exists():
        return
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node/npm are not on PATH")
    env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")
    try:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm ci` in {folder.relative_to(ROOT)} timed out")
    if done.returncode != 0 or not (folder / "node_modules" / marker).exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        pytest.skip(f"`npm ci` in {folder.relative_to(ROOT)} failed: {tail[0]}")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium on PATH (chromium, chromium-browser or google-chrome)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serve(folder: pathlib.Path):
    """A static server for ``folder`` on 127.0.0.1 (a free port), in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Chromium:
    """Headless Chromium with one page, spoken to over the DevTools protocol on a pipe."""

    def __init__(self, executable: str, profile: pathlib.Path) -> None:
        to_child, self._send = os.pipe()
        self._recv, from_child = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        # the protocol pipe must be fds 3 (commands in) and 4 (replies out) in the browser (bash: dash's
        # redirections take one-digit fds only)
        launch = f'exec "$0" "$@" 3<&{high[0]} 4>&{high[1]}'
        self.proc = subprocess.Popen([shutil.which("bash") or "bash", "-c", launch, *args],
                                     pass_fds=high, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        for fd in high:
            os.close(fd)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.console: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr.read().decode(errors="replace")
                                                              .splitlines()), daemon=True).start()
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, timeout=60)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Runtime.enable", session=self.session)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._recv, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)
                elif message.get("method") == "Runtime.consoleAPICalled":
                    params = message["params"]
                    self.console.append(params["type"] + ": " + " ".join(
                        str(a.get("value", a.get("description", ""))) for a in params["args"]))
                elif message.get("method") == "Runtime.exceptionThrown":
                    details = message["params"]["exceptionDetails"]
                    self.console.append("exception: " + details.get("exception", {}).get("description",
                                                                                        details.get("text", "")))
        with self._lock:
            for box in self._replies.values():
                box.put({"error": {"message": "the browser closed the protocol pipe"}})

    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 30) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            box: queue.Queue = queue.Queue()
            self._replies[ident] = box
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        try:
            reply = box.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"Chromium did not answer {method} within {timeout} s; "
                                 f"stderr: {self._stderr[-5:]}") from None
        finally:
            with self._lock:
                self._replies.pop(ident, None)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error'].get('message')}; stderr: {self._stderr[-5:]}")
        return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session=self.session)
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=self.session)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._send, self._recv):
            with contextlib.suppress(OSError):
                os.close(fd)


PAGE_STATE = """(() => {
  const status = document.getElementById('status');
  const prediction = document.getElementById('prediction');
  return JSON.stringify({href: location.href, state: status && status.dataset.state,
                         text: status && status.textContent, prediction: prediction && prediction.textContent,
                         result: window.onnxcamResult || null});
})()"""


def _wait(browser: Chromium, url: str, states: tuple[str, ...], timeout: float = 90) -> dict:
    """The page's state once the document at ``url`` reaches one of ``states``."""
    deadline = time.monotonic() + timeout
    page: dict = {}
    while time.monotonic() < deadline:
        raw = browser.evaluate(PAGE_STATE)
        page = json.loads(raw) if raw else {}
        if page.get("href") == url and page.get("state") in states:
            return page
        time.sleep(0.2)
    raise AssertionError(f"the page did not reach {states} within {timeout} s: {page}; "
                         f"console: {browser.console[-10:]}")


def _run_page(browser: Chromium, url: str, timeout: float = 90) -> dict:
    browser.open(url)
    return _wait(browser, url, ("done", "error"), timeout)


def _choose_file(browser: Chromium, selector: str, path: pathlib.Path) -> None:
    """Pick ``path`` in the page's file input ``selector`` (fires its change event, as a user's choice does)."""
    root = browser.call("DOM.getDocument", {"depth": 0}, session=browser.session)["root"]["nodeId"]
    node = browser.call("DOM.querySelector", {"nodeId": root, "selector": selector}, session=browser.session)
    browser.call("DOM.setFileInputFiles", {"files": [str(path)], "nodeId": node["nodeId"]}, session=browser.session)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not SAMPLE_MODEL.exists() or not SAMPLE_IMAGE.exists():
        pytest.skip("web/sample/ is missing; run `python web/make_sample.py`")
    _npm_install(WEB, "onnxruntime-web/dist/ort.wasm.min.mjs")
    executable = _browser()
    if not shutil.which("bash"):
        pytest.skip("bash is not on PATH (it hands Chromium its DevTools pipe)")
    try:
        chromium = Chromium(executable, tmp_path_factory.mktemp("chromium-profile"))
    except (AssertionError, OSError) as err:
        pytest.skip(f"{executable} did not start headless: {str(err).splitlines()[0]}")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def page_url():
    with _serve(WEB) as url:
        yield url + "/index.html"


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_page_sample_map_equals_python(browser, page_url, method):
    from onnxcam.runtime import Explainer

    page = _run_page(browser, f"{page_url}?autorun=sample&method={method}")
    assert page["state"] == "done", f"{page['text']}; console: {browser.console[-10:]}"
    result = page["result"]
    assert result["method"] == method
    expected = Explainer(SAMPLE_MODEL, providers="cpu").explain([SAMPLE_IMAGE], method=method, embedded=False)
    assert result["classIndex"] == int(expected.class_index[0])
    assert result["label"] == expected.labels[0]
    assert abs(result["probability"] - float(expected.scores[0])) < 1e-4
    got = np.asarray(result["map"], np.float32).reshape(result["height"], result["width"])
    diff = float(np.abs(got - expected.cams[0]).max())
    print(f"web {method}: class {result['classIndex']} ({result['label']}), max |page − python| = {diff:.3g}")
    assert diff <= 1e-4
    assert expected.labels[0] in page["prediction"]


def test_page_unknown_method_is_one_line_error(browser, page_url):
    page = _run_page(browser, f"{page_url}?autorun=sample&method=nosuchcam")
    assert page["state"] == "error"
    assert "unknown method 'nosuchcam'" in page["text"] and "\n" not in page["text"]
    assert page["result"] is None


def test_page_file_inputs(browser, page_url):
    """The user's route: pick the model and a photo in the file inputs; the page explains the predicted class."""
    from onnxcam.runtime import Explainer

    image = ROOT / "sample_models" / "images" / "circle_2.png"
    url = f"{page_url}?via=file-inputs"
    browser.open(url)
    _wait(browser, url, ("idle",))
    _choose_file(browser, "#model", SAMPLE_MODEL)
    _choose_file(browser, "#image", image)
    page = _wait(browser, url, ("done", "error"))
    assert page["state"] == "done", f"{page['text']}; console: {browser.console[-10:]}"
    result = page["result"]
    expected = Explainer(SAMPLE_MODEL, providers="cpu").explain([image], method=result["method"], embedded=False)
    assert result["method"] == "gradcam"  # the first embedded method
    assert result["classIndex"] == int(expected.class_index[0])
    got = np.asarray(result["map"], np.float32).reshape(result["height"], result["width"])
    diff = float(np.abs(got - expected.cams[0]).max())
    print(f"web file inputs ({image.name}): class {result['classIndex']} ({result['label']}), "
          f"max |page − python| = {diff:.3g}")
    assert diff <= 1e-4
