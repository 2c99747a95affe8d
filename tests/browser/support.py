"""What the browser tests share besides fixtures: the server's address, a watch over a page's
errors and dialogs, signing in as the start-up URL does, and screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tests.worker.labs import WORKER_WAIT_S

ROOT = Path(__file__).resolve().parents[2]
WORKER_WAIT_MS = int(WORKER_WAIT_S * 1000)  # what a page waits for a worker's training run
LIVE_UPDATES_JS = "performance.getEntriesByName('kfac:live-update').length"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


@dataclass
class Server:
    url: str
    token: str
    home: Path

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'kfac.db'}"

    def post(self, path: str, body: dict) -> dict:
        """POST `body` to the API as the owner (a script's client would); the answer's JSON."""
        response = httpx.post(
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code in (200, 201), response.text
        return response.json()


@dataclass
class PageWatch:
    """What a page reported that a person would call broken: console errors, uncaught
    exceptions, and JavaScript dialogs (an injected `alert` would be one)."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("dialog", self._dialog)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "favicon" not in message.text:
            self.errors.append(f"{message.text} ({message.location.get('url', '')})")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self) -> None:
        assert not self.dialogs, f"unexpected dialogs: {self.dialogs}"
        assert not self.errors, "console errors:\n" + "\n".join(self.errors)


@dataclass
class Launched:
    """An experiment launched from the form, and the page of it the form opened."""

    id: str
    page: Page
    watch: PageWatch
    context: BrowserContext


def sign_in(context: BrowserContext, server: Server) -> None:
    """What the start-up URL does: the page keeps the token (localStorage) and hides it."""
    page = context.new_page()
    page.goto(f"/?token={server.token}")
    page.wait_for_function("() => localStorage.getItem('kfac-lab.token') !== null")
    assert "token=" not in page.url
    page.close()


def smoke_form(
    browser: Browser,
    context_args: dict,
    server: Server,
    fields: dict[str, str],
    permissions: tuple[str, ...] = (),
) -> tuple[BrowserContext, PageWatch, Page]:
    """A new signed-in context (granted `permissions`) and its watched page on /new, the smoke
    preset chosen and `fields` (path → value) filled in."""
    context = browser.new_context(**context_args)
    context.grant_permissions(list(permissions))
    sign_in(context, server)
    watch = PageWatch()
    page = watch.attach(context.new_page())
    page.goto("/new")
    expect(page.locator('.preset[data-name="smoke"]')).to_have_attribute("aria-pressed", "true")
    for path, value in fields.items():
        page.locator(f'[name="{path}"]').fill(value)
    return context, watch, page


def launch(context: BrowserContext, watch: PageWatch, page: Page) -> Launched:
    """Launch the form's experiment and follow the page it opens: at once, as soon as the API
    has stored and queued it, long before any run has started."""
    page.click("#launch")
    page.wait_for_url("**/experiments/*", wait_until="commit", timeout=60_000)
    return Launched(page.url.rstrip("/").split("/")[-1], page, watch, context)


class Screenshots:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, target: Page | object) -> Path:
        path = self.folder / f"{name}.png"
        if isinstance(target, Page):
            target.screenshot(path=str(path), full_page=True)
        else:
            target.screenshot(path=str(path))
        if os.environ.get("KFAC_UPDATE_SCREENSHOTS") == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS_SCREENSHOTS / path.name)
        return path


def write_then_await_live_update(page: Page, write: Callable[[], None]) -> None:
    """`write()` new points to the store, then wait until the open page has applied a live
    update since (each update is the measure "kfac:live-update"): paced by the page rather than
    by a sleep, so a loaded machine delays the updates but never merges them into fewer."""
    seen = page.evaluate(LIVE_UPDATES_JS)
    write()
    page.wait_for_function(f"() => {LIVE_UPDATES_JS} > {seen}", polling=100, timeout=60_000)


def wait_until_held(page: Page, held: list, count: int = 1) -> None:
    """Until `count` requests the page sent with the others are held by a route."""
    for _ in range(600):  # they went out together; their route handlers run as we wait
        if len(held) >= count:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"the page sent {len(held)} of the {count} requests held back")
