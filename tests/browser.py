"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4 out,
NUL-terminated JSON), with the standard library only: no port is opened, nothing is downloaded. Debian's ``chromium``
package is the browser; ``find_chromium`` says why none can be had.

``open_page`` loads a local file and returns what the report's browser test asserts on: every console error (calls to
console.error, uncaught exceptions, failed loads), every image's natural size and whether it decoded, and the
answers of a few DOM queries; it saves a screenshot of the first screen."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--mute-audio", "--window-size=1200,900", "--remote-debugging-pipe")
CANDIDATES = ("chromium", "chromium-browser", "/usr/lib/chromium/chromium")
# After load: each image's facts (img.decode() rejects an image that cannot be decoded) and the page's queries.
FACTS_JS = """
(async () => {
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(i => i.decode().then(() => true, () => false)));
  return {
    images: images.map((i, k) => ({alt: i.alt, naturalWidth: i.naturalWidth, decoded: decoded[k]})),
    claims_rows: document.querySelectorAll('#claims tbody tr').length,
    dashboards: document.querySelectorAll('section.dashboard').length,
    highlighted: document.querySelectorAll('section.dashboard .tok.peak').length,
  };
})()
"""


def find_chromium() -> tuple[str | None, str]:
    """The browser's path, or None and a one-line reason."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path, ""
    return None, "no Chromium on PATH (apt-get install chromium; .ci/run installs it)"


class Browser:
    """One Chromium process and its protocol pipe."""

    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def child_fds() -> None:  # between fork and exec: the pipe ends at fds 3 and 4 (dup2 clears close-on-exec)
            os.dup2(fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10), 3)
            os.dup2(fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10), 4)

        self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=child_fds, close_fds=False)
        os.close(to_browser)
        os.close(from_browser)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self.messages.put(json.loads(raw))
        self.messages.put(None)

    def _next(self, deadline: float) -> dict[str, Any]:
        try:
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("Chromium sent nothing in time") from None
        if message is None:
            raise RuntimeError("Chromium closed its protocol pipe")
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 20.0) -> dict[str, Any]:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, method: str, session: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method and e.get("sessionId") == session for e in self.events):
            self._next(deadline)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        os.close(self._to_browser)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def console_errors(events: list[dict[str, Any]], session: str) -> list[str]:
    errors = []
    for event in (e for e in events if e.get("sessionId") == session):
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in
                                                       params.get("args", [])))
        elif event["method"] == "Runtime.exceptionThrown":
            errors.append("exception: " + str(params.get("exceptionDetails", {}).get("text")))
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    return errors


def open_page(browser: Browser, page: Path, screenshot: Path) -> dict[str, Any]:
    """Load ``page``; return its facts (``FACTS_JS``) and console errors; save the first screen as a PNG."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
        browser.call(domain, session=session)
    navigation = browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
    if navigation.get("errorText"):
        raise RuntimeError(f"{page}: {navigation['errorText']}")
    browser.wait_for("Page.loadEventFired", session)
    facts = browser.call("Runtime.evaluate", {"expression": FACTS_JS, "awaitPromise": True, "returnByValue": True},
                         session=session)
    if "exceptionDetails" in facts:
        raise RuntimeError(f"the facts script failed: {facts['exceptionDetails']}")
    image = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(image))
    return {**facts["result"]["value"], "console_errors": console_errors(browser.events, session)}
