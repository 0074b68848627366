"""The local demo, walked in a real browser: `jit-bot demo` as a process, headless Chromium (Debian's
``chromium``, which scripts/test installs) driven by Playwright.

The story: Alice requests access, Bob approves on the card, Alice opens the pickup link and sees the
token, the short grant ends and the card says it was revoked, and the link's second visit says it was
used. Then the request form: a validation error shown beside the field, and a request made from it.
Screenshots go to ``test-screenshots/`` (or ``JIT_TEST_SCREENSHOTS``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.processes import JIT_BOT, assert_no_traceback, base_env
from tests.world import eventually

CHROMIUM = os.environ.get("JIT_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("JIT_TEST_SCREENSHOTS", Path(__file__).resolve().parent.parent / "test-screenshots"))
# What the machine's closed network needs: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"
WORKSPACE_URL = re.compile(r"open (http://127\.0\.0\.1:\d+/) in your browser")


class Demo:
    def __init__(self, workdir: Path, log_name: str = "demo.log") -> None:
        self.workdir = workdir
        self.log = workdir / log_name
        self._out = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(JIT_BOT), "demo", "--port", "0", "--dir", str(workdir / "data")],
            cwd=workdir,
            env=base_env(workdir),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = eventually(self._url, timeout=60, what="the demo to print its URL")

    def _url(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"jit-bot demo exited with {self.proc.returncode}:\n{self.output()}")
        found = WORKSPACE_URL.search(self.output())
        return found.group(1) if found else None

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=30)
        finally:
            self._out.close()
        return code


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = Demo(tmp_path_factory.mktemp("demo"))
    try:
        yield running
    finally:
        code = running.stop()
        assert_no_traceback(running.output())
        assert code == 0, running.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package (as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, demo: Demo) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.goto(demo.url)
    expect(opened.locator("body[data-ready='1']")).to_have_count(1)
    yield opened
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def be(page: Page, person: str, channel: str | None = None) -> None:
    """Switch to ``person`` and open ``channel`` (their DM with the bot when None)."""
    page.select_option("#person", person)
    target = channel or "D" + person[1:]
    page.locator(f"#sidebar button[data-channel='{target}']").click()
    expect(page.locator(f"#sidebar button[data-channel='{target}']")).to_have_attribute("aria-current", "true")


def type_command(page: Page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    expect(page.locator("#composer-input")).to_have_value("")


def card(page: Page, request_id: str) -> object:
    return page.locator(".msg", has_text=f"Access request {request_id}")


def test_request_approve_pickup_expiry_in_the_browser(page: Page) -> None:
    type_command(page, "/jit request prod-db read 20s checking INC-1234")
    answer = page.locator(".msg.ephemeral", has_text="was sent to")
    expect(answer).to_contain_text("#db-approvers")
    request_id = answer.locator("code").first.inner_text()
    assert re.fullmatch(r"R[0-9A-Z]+", request_id), request_id
    shot(page, "1-requested")

    be(page, BOB, "C0DBAPPROVE")
    the_card = page.locator(".msg", has_text=f"Access request {request_id}")
    expect(the_card).to_contain_text("checking INC-1234")
    expect(the_card.locator("button.bk.primary", has_text="Approve")).to_be_visible()
    expect(the_card.locator("button.bk.danger", has_text="Deny")).to_be_visible()
    shot(page, "2-card")
    the_card.locator("button", has_text="Approve").click()
    expect(the_card).to_contain_text("approved by @Bob Okafor")
    expect(the_card.locator("button", has_text="Revoke now")).to_be_visible()
    shot(page, "3-approved")

    be(page, ALICE)
    link = page.locator(".msg a[href*='/pickup/']")
    expect(link).to_have_count(1)
    shot(page, "4-dm-with-link")
    pickup_url = link.get_attribute("href")
    assert pickup_url is not None
    with page.context.expect_page() as opened:
        link.click()
    pickup = opened.value
    expect(pickup.locator("h1")).to_have_text("Your access token")
    token = pickup.locator("#token").inner_text().strip()
    assert len(token) >= 20, token
    shot(pickup, "5-pickup")
    # The token is on the pickup page only: never in what Slack (the workspace) holds.
    assert token not in page.content()

    # The grant is 20 s long: the card changes to revoked once the IdP confirmed it.
    be(page, BOB, "C0DBAPPROVE")
    expect(the_card).to_contain_text(re.compile(r"[Rr]evoked"), timeout=90_000)
    expect(the_card.locator("button", has_text="Revoke now")).to_have_count(0)
    shot(page, "6-revoked")

    pickup.goto(pickup_url)
    expect(pickup.locator("h1")).to_have_text("Link not available")
    expect(pickup.locator("body")).to_contain_text("already used")
    assert token not in pickup.content()
    shot(pickup, "7-pickup-used")


def test_the_request_form_shows_errors_beside_fields_and_submits(page: Page) -> None:
    be(page, CAROL)
    type_command(page, "/jit request")
    modal = page.locator("#modal")
    expect(modal.locator("#modal-title")).to_have_text("Request access")
    # Slack's own check: a required field left empty is named before anything is sent.
    modal.locator("#modal-submit").click()
    expect(modal.locator(".input.has-error .error").first).to_have_text("Please complete this required field.")
    # Choosing a resource redraws the form with its scopes and durations (dispatch_action).
    modal.locator(".input[data-block-id='resource'] select").select_option("billing-api")
    expect(modal.locator(".input[data-block-id='scopes:billing-api']")).to_be_visible()
    modal.locator(".input[data-block-id='scopes:billing-api'] label", has_text="refund").click()
    modal.locator(".input[data-block-id='duration:billing-api'] select").select_option(index=1)
    # A reason of nothing but spaces passes Slack's check; the bot's own check answers beside the field.
    modal.locator(".input[data-block-id='reason'] textarea").fill("   ")
    modal.locator("#modal-submit").click()
    reason_error = modal.locator(".input[data-block-id='reason'] .error")
    expect(reason_error).to_be_visible()
    shot(page, "8-form-error")
    message = reason_error.inner_text()
    assert "reason" in message.lower(), message
    modal.locator(".input[data-block-id='reason'] textarea").fill("refund for ticket CS-991")
    modal.locator("#modal-submit").click()
    expect(page.locator("#modal-backdrop")).to_be_hidden()
    be(page, CAROL, "C0PAYAPPROVE")
    expect(page.locator(".msg", has_text="refund for ticket CS-991")).to_contain_text("billing-api")
    shot(page, "9-form-card")


def test_the_sidebar_is_not_rebuilt_under_the_pointer(page: Page) -> None:
    """A button replaced between mouse-down and mouse-up swallows the click (a new user lost one in
    twenty): the page polls every 600 ms, and the sidebar stays the same nodes while nothing in it
    changed."""
    button = page.locator("#sidebar button[data-channel='C0JITAUDIT']").element_handle()
    assert button is not None
    polls = "() => performance.getEntriesByType('resource').filter(e => e.name.includes('/workspace/state')).length"
    before = page.evaluate(polls)
    eventually(lambda: page.evaluate(polls) >= before + 4 or None, timeout=30, what="four more polls")
    assert button.evaluate("el => el.isConnected"), "the sidebar was rebuilt although nothing in it changed"


def test_each_run_starts_fresh_and_its_output_is_what_matters(tmp_path: Path) -> None:
    """The workspace's messages and the dev IdP's tokens are gone when the demo stops, so a request
    kept from an earlier run could never be approved or revoked: each run starts with an empty
    database. Its output is the URL and the requests' lifecycle lines, no warnings about keys a
    deployment must manage nor each migration."""
    import sqlite3

    import httpx

    database = tmp_path / "data" / "jit-demo.db"

    def requests_stored() -> int:
        with sqlite3.connect(database) as connection:
            return int(connection.execute("SELECT count(*) FROM access_request").fetchone()[0])

    first = Demo(tmp_path)
    try:
        typed = httpx.post(
            f"{first.url}workspace/command",
            json={"person": ALICE, "channel": "D" + ALICE[1:], "text": "/jit request prod-db read 2m INC-7"},
            timeout=30,
        )
        assert typed.json() == {"ok": True}, typed.text
        eventually(lambda: requests_stored() == 1 or None, timeout=30, what="the request to be stored")
        eventually(lambda: "submitted: request=" in first.output() or None, timeout=30, what="its lifecycle line")
    finally:
        assert first.stop() == 0, first.output()

    second = Demo(tmp_path, log_name="second.log")
    try:
        assert requests_stored() == 0, "the second run starts with an empty database"
    finally:
        assert second.stop() == 0, second.output()

    for run in (first, second):
        output = run.output()
        assert_no_traceback(output)
        assert " WARNING " not in output, output
        assert "alembic" not in output and "uvicorn" not in output, output
