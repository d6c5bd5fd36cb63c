"""JupyterLab in a real browser: start a server, open a page, run a notebook, use the explorer.

Test and figure tooling, not library code: the browser test (``tests/test_browser.py``) and the
README's widget screenshot (``benchmarks/make_figures.py``) drive headless Debian Chromium
(``/usr/bin/chromium``) with Python Playwright, a development dependency: it is imported only
when a page is opened. Both
open a small prepared notebook (``write_explorer_notebook``: a saved checkpoint and index, then
the explorer), not a training notebook.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vcb_utils.distributed import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (``apt-get install chromium``), the browser the helpers drive."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}
"""No autosave (the notebook file stays as committed), no windowing (every cell in the page),
no news."""
EXPLORER_NOTEBOOK = "notebooks/05_interactive_maxsim_explorer.ipynb"
RUN_ALL_TIMEOUT_S = 240
"""Run All of a notebook (the explorer notebook of the browser test runs in a few seconds)."""
KERNEL_START_S = 90
"""JupyterLab opening a notebook and starting its kernel (about 5 s on an idle 2-core machine)."""
RUN_STARTS_S = 30
"""From the Run All click to the first cell queued (instant when idle)."""
WIDGET_UPDATE_S = 30
"""A query or a click to the updated widget in the page (well under a second when idle)."""


@contextlib.contextmanager
def jupyter_lab(root: Path, state: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """JupyterLab serving ``root`` on 127.0.0.1 (free port, no token); yields its URL.

    Settings, workspaces and runtime files live under ``state``; ``env`` is added to the
    server's (and its kernels') environment. On exit the kernels are shut down through the
    server's API and the server is stopped by its PID.
    """
    port = free_port()
    _write_settings(state / "settings")
    command = [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.token=",
        "--ServerApp.password=",
        "--ServerApp.open_browser=False",
        "--ServerApp.disable_check_xsrf=True",
        f"--LabApp.user_settings_dir={state / 'settings'}",
        f"--LabApp.workspaces_dir={state / 'workspaces'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    environment = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        **(env or {}),
    }
    url = f"http://127.0.0.1:{port}"
    log_path = state / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(url, server, log_path)
            yield url
        finally:
            _shut_down_kernels(url)
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _write_settings(folder: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/api/status") as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} in {timeout_s} s:\n{log.read_text()}")


def _shut_down_kernels(url: str) -> None:
    """Stop the server's kernels through its API, so that none outlives the server."""
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(f"{url}/api/kernels", timeout=5) as response:
            kernels = json.load(response)
        for kernel in kernels:
            request = urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE")
            urllib.request.urlopen(request, timeout=10).close()


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 2400) -> Iterator[Page]:
    """A page of headless Debian Chromium (tall, so that the whole widget is in view)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def run_all_cells(
    page: Page, url: str, notebook: str = EXPLORER_NOTEBOOK, timeout_s: float = RUN_ALL_TIMEOUT_S
) -> None:
    """Open ``notebook`` (a path under the server's root) in JupyterLab, Run > Run All Cells,
    and wait until every cell has run.

    Raises RuntimeError with the tracebacks when a cell fails.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{url}/lab/tree/{notebook}?reset")
    page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=KERNEL_START_S * 1000
    )
    for _attempt in range(3):  # a menu click can be lost while the page is still settling
        page.locator(".jp-NotebookPanel .jp-Cell").first.click()  # the notebook is current
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        run_all = page.locator(".lm-Menu-item:not(.lm-mod-disabled)", has_text="Run All Cells")
        run_all.first.click()
        try:
            page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""",
                timeout=RUN_STARTS_S * 1000,
            )
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    else:
        raise RuntimeError(f"Run All Cells did not start {notebook}")
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            const done = prompts.length && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
            const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
            return done || outputs.some(o => o.innerText.includes('Traceback'));
        }""",
        timeout=timeout_s * 1000,
        polling=500,
    )
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    errors = [text for text in outputs if "Traceback" in text]
    if errors:
        raise RuntimeError(f"a cell of {notebook} failed:\n" + "\n".join(errors))


def watch_busy(page: Page) -> None:
    """Record in the page whether the explorer ever shows its busy state (``vcb-busy``), however
    briefly: read it back with ``saw_busy``."""
    page.evaluate(
        """() => {
            window.vcbSawBusy = false;
            const explorer = document.querySelector('.vcb-explorer');
            new MutationObserver(() => {
                if (explorer.classList.contains('vcb-busy')) window.vcbSawBusy = true;
            }).observe(explorer, {attributes: true, attributeFilter: ['class']});
        }"""
    )


def saw_busy(page: Page) -> bool:
    return bool(page.evaluate("() => window.vcbSawBusy"))


def search_in_widget(page: Page, query: str, timeout_s: float = WIDGET_UPDATE_S) -> None:
    """Type ``query`` into the explorer's text box, press Enter, and wait until the ranking and
    the heatmap show its results (or a message, for a query that has none)."""
    box = page.locator(".vcb-query input")
    box.fill(query)
    box.press("Enter")
    page.wait_for_function(
        """(query) => {
            const explorer = document.querySelector('.vcb-explorer');
            if (!explorer || explorer.classList.contains('vcb-busy')) return false;
            const title = explorer.querySelector('.vcb-heatmap .vcb-hm-title');
            const warning = explorer.querySelector('.vcb-message .vcb-warning');
            return (title && title.textContent.includes(query.slice(0, 40)))
                || (warning && warning.textContent.includes(query.trim().slice(0, 20)));
        }""",
        arg=query,
        timeout=timeout_s * 1000,
    )


def click_result(
    page: Page, rank: int, part: str = ".vcb-row img", timeout_s: float = WIDGET_UPDATE_S
) -> None:
    """Click the hit at ``rank`` (on ``part`` of its row: by default its thumbnail strip) and
    wait until the heatmap shows it."""
    target = page.locator(f".vcb-hit-{rank} {part}").first
    target.scroll_into_view_if_needed()
    box = target.bounding_box()  # a click where a user would click: the row's button takes it
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(
        """(rank) => {
            const title = document.querySelector('.vcb-explorer .vcb-heatmap .vcb-hm-title');
            return title && title.textContent.includes(`(rank ${rank})`);
        }""",
        arg=rank,
        timeout=timeout_s * 1000,
    )


def broken_images(page: Page, selector: str = ".vcb-explorer") -> int:
    """How many visible images under ``selector`` failed to load or have no source."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector + ' img')]
            .filter(img => img.offsetParent !== null)
            .filter(img => !img.complete || img.naturalWidth === 0).length""",
        selector,
    )


def write_explorer_notebook(
    path: Path,
    checkpoint: Path,
    index_dir: Path,
    captions: dict[str, list[str]] | None = None,
    k: int = 10,
) -> Path:
    """A small notebook that loads a checkpoint and a saved index and shows a ``QueryExplorer``
    (what the browser test and the README screenshot drive, instead of running notebook 05)."""
    import nbformat

    source = f"""
import json
from vcb_utils.index import VideoIndex
from vcb_utils.model import load_checkpoint
from vcb_utils.widgets import QueryExplorer

model, _ = load_checkpoint({str(checkpoint)!r})
index = VideoIndex.load({str(index_dir)!r}, model.eval())
captions = json.loads({json.dumps(captions or {})!r})
explorer = QueryExplorer(index, model, k={k}, captions=captions)
explorer
"""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source.strip())]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
