"""Organising work in a real browser: notes written on the page and drawn from Markdown without
ever becoming markup (a hostile note stays text, a `javascript:` link is no link), read-only on
a share link; tags added and removed on the page, shown in the list and filtering it; archive
and unarchive; the list searched by name, tag and optimizer and sorted by every column both
ways; and screenshots of the shared page and the compare page in light and dark.

Experiments are seeded straight into the store (no training); each test marks its own with a
random word and looks only at those.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from backend.store.db import session_scope
from backend.store.organise import set_notes, set_tags
from backend.store.queries import get_experiment
from backend.store.writes import claim_run, create_experiment, set_status
from tests.browser.support import PageWatch, Screenshots, Server, wait_until_held
from tests.browser.test_comparison import seed_experiment, wait_for_legend

SAME_ORDER_JS = """wanted => {
  const ids = [...document.querySelectorAll('#experiments tr')].map((row) => row.dataset.id);
  return JSON.stringify(ids) === JSON.stringify(wanted);
}"""

pytestmark = pytest.mark.browser

HOSTILE_NOTES = """# Findings

K-FAC reaches *tuned* SGD's loss **early**; `damping=150` matters, sgd_momentum did not.

<img src=x onerror="window.__pwned = 1; alert('pwned')">

- [the paper](https://arxiv.org/abs/1503.05671)
- [click me](javascript:window.__pwned=2)
- [the list](/)

1. first
2. second

```
<script>window.__pwned = 3</script>
```
"""


def seed(server: Server, name: str, optimizers=("kfac",), loss=None, preset=None) -> str:
    """A finished experiment of one run per optimizer (final train_loss `loss` if given)."""
    runs = [
        {"label": o, "optimizer": {"name": o}, "seed": 0, "spec": {}, "total_steps": 10}
        for o in optimizers
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name=name, spec={}, runs=runs, preset=preset)
        for run in experiment.runs:
            claim_run(session, run.id, "organise-test")
            metrics = None if loss is None else {"train_loss": loss}
            set_status(session, run.id, "succeeded", step=10, final_metrics=metrics)
        return experiment.id


def api(page: Page, method: str, path: str) -> dict:
    return page.evaluate(
        """([method, path]) => fetch(path, { method, headers: { Authorization:
             `Bearer ${localStorage.getItem("kfac-lab.token")}` } }).then((r) => r.json())""",
        [method, path],
    )


@pytest.fixture
def stranger(browser: Browser, browser_context_args: dict) -> Iterator[BrowserContext]:
    """A browser without the lab's token."""
    context = browser.new_context(**browser_context_args)
    yield context
    context.close()


def test_notes_are_drawn_from_markdown_safely_and_read_only_on_a_share_link(
    owner_page: tuple[Page, PageWatch], server: Server, stranger: BrowserContext
) -> None:
    page, _ = owner_page
    experiment_id = seed(server, f"notes {secrets.token_hex(3)}")
    page.goto(f"/experiments/{experiment_id}")
    expect(page.locator("#notes")).to_contain_text("No notes yet")
    page.click("#edit-notes")
    page.fill("#notes-input", HOSTILE_NOTES)
    expect(page.locator("#notes-count")).to_contain_text(f"{len(HOSTILE_NOTES)} / 20,000")
    page.click("#notes-save")
    expect(page.locator("#notes-editor")).to_be_hidden()

    def check(view: Page) -> None:
        notes = view.locator("#notes")
        expect(notes.locator("h3")).to_have_text("Findings")
        expect(notes.locator("em")).to_have_text("tuned")
        expect(notes.locator("strong")).to_have_text("early")
        expect(notes.locator("p code")).to_have_text("damping=150")
        expect(notes.locator("p").first).to_contain_text("sgd_momentum did not")
        expect(notes.locator("ul li")).to_have_count(3)
        expect(notes.locator("ol li")).to_have_text(["first", "second"])
        expect(notes.locator("pre code")).to_have_text("<script>window.__pwned = 3</script>")
        # The hostile HTML is text; the javascript: link is the text its author typed.
        expect(notes).to_contain_text("<img src=x onerror=")
        expect(notes).to_contain_text("[click me](javascript:window.__pwned=2)")
        assert notes.locator("img, script, iframe").count() == 0
        hrefs = notes.locator("a").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
        assert hrefs == ["https://arxiv.org/abs/1503.05671", "/"], hrefs
        assert notes.locator("a").first.get_attribute("rel") == "noopener noreferrer"
        assert view.evaluate("() => window.__pwned") is None

    check(page)
    page.reload()
    check(page)

    link = page.evaluate(
        """id => fetch(`/api/experiments/${id}/share`, { method: "POST", headers: {
             Authorization: `Bearer ${localStorage.getItem("kfac-lab.token")}` } })
             .then((r) => r.json())""",
        experiment_id,
    )
    watch = PageWatch()
    shared = watch.attach(stranger.new_page())
    shared.goto(link["url"])
    check(shared)
    for control in ("#edit-notes", "#notes-editor", "#tag-input", "#archive"):
        assert shared.locator(control).count() == 0, f"{control} on a shared page"
    watch.assert_clean()


def test_tags_are_added_and_removed_on_the_page_and_filter_the_list(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    page, watch = owner_page
    word = f"t{secrets.token_hex(3)}"
    tagged = seed(server, f"{word} tagged")
    other = seed(server, f"{word} other")
    page.goto(f"/experiments/{tagged}")
    page.fill("#tag-input", f"  {word} Study ")
    page.keyboard.press("Enter")
    chips = page.locator("#experiment-tags .tag")
    expect(chips).to_have_text([f"{word}-study×"])
    page.fill("#tag-input", "baseline")
    page.click("#tag-add")
    expect(chips).to_have_text(["baseline×", f"{word}-study×"])
    page.fill("#tag-input", "no <b>tags</b>")  # the API refuses it; the page says why
    page.click("#tag-add")
    expect(page.locator("#tag-error")).to_contain_text("A tag is a letter")
    expect(page.locator("#tag-input")).to_have_value("no <b>tags</b>")
    expect(chips).to_have_text(["baseline×", f"{word}-study×"])
    watch.errors[:] = [e for e in watch.errors if "status of 422" not in e]
    page.click('#experiment-tags [aria-label="remove tag baseline"]')
    expect(chips).to_have_text([f"{word}-study×"])
    page.reload()
    expect(chips).to_have_text([f"{word}-study×"])

    page.goto("/")
    page.fill("#search", word)
    rows = page.locator("#experiments tr")
    expect(rows).to_have_count(2)
    page.locator(f'#experiments tr[data-id="{tagged}"] .tag').click()
    expect(page.locator("#tag-filters .tag")).to_contain_text(f"tag: {word}-study")
    expect(rows).to_have_count(1)
    expect(page.locator(f'#experiments tr[data-id="{other}"]')).to_have_count(0)
    page.click("#tag-filters .tag-remove")
    expect(rows).to_have_count(2)
    page.fill("#search", f"{word}-study")  # the search box finds tags too
    expect(rows).to_have_count(1)


def test_archive_hides_an_experiment_from_the_list_and_a_filter_shows_it(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    page, _ = owner_page
    word = f"a{secrets.token_hex(3)}"
    experiment_id = seed(server, f"{word} to archive")
    page.goto(f"/experiments/{experiment_id}")
    expect(page.locator("#archived-badge")).to_be_hidden()
    page.click("#archive")
    expect(page.locator("#archived-badge")).to_be_visible()
    expect(page.locator("#archive")).to_have_text("Unarchive")

    page.goto("/")
    page.fill("#search", word)
    expect(page.locator("#list-message")).to_have_text("No experiment matches.")
    page.select_option("#archived-filter", "only")
    row = page.locator(f'#experiments tr[data-id="{experiment_id}"]')
    expect(row.locator(".badge.archived")).to_be_visible()
    page.select_option("#archived-filter", "include")
    expect(row).to_have_count(1)

    page.goto(f"/experiments/{experiment_id}")
    page.click("#archive")
    expect(page.locator("#archived-badge")).to_be_hidden()
    page.goto("/")
    page.fill("#search", word)
    expect(page.locator(f'#experiments tr[data-id="{experiment_id}"]')).to_have_count(1)


def test_the_list_is_searched_by_name_tag_and_optimizer_and_sorted_by_every_column(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    page, _ = owner_page
    word = f"s{secrets.token_hex(3)}"
    optimizer = f"opt{word}"
    ids = {
        "bravo": seed(server, f"{word} bravo", ("kfac", "sgd"), loss=0.3, preset="smoke"),
        "alpha": seed(server, f"{word} alpha", (optimizer,), loss=0.9),
        "charlie": seed(server, f"{word} charlie", ("adam", "sgd", "kfac"), preset="race"),
    }
    with session_scope(server.database_url) as session:
        set_tags(session, get_experiment(session, ids["charlie"]), [f"{word}-z", "first"])
        set_notes(session, get_experiment(session, ids["alpha"]), "not searched")

    page.goto("/")
    page.fill("#search", word)
    rows = page.locator("#experiments tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#page")).to_have_text("1–3 of 3")

    def order() -> list[str]:
        return rows.evaluate_all("rows => rows.map((r) => r.dataset.id)")

    def expect_order(wanted: list[str], key: str) -> None:
        """Wait for the rows in `wanted` order: the list redraws when the sort's answer comes,
        after the header has changed, and the old first row may be the new one too."""
        try:
            page.wait_for_function(SAME_ORDER_JS, arg=wanted)
        except PlaywrightTimeoutError:
            assert order() == wanted, key

    def names(*keys: str) -> list[str]:
        return [ids[key] for key in keys]

    expected = {  # descending; ascending is the reverse but for missing values (last)
        "name": (names("charlie", "bravo", "alpha"), names("alpha", "bravo", "charlie")),
        "tags": (names("charlie", "alpha", "bravo"), names("charlie", "alpha", "bravo")),
        "preset": (names("bravo", "charlie", "alpha"), names("charlie", "bravo", "alpha")),
        "runs": (names("charlie", "bravo", "alpha"), names("alpha", "bravo", "charlie")),
        "best_loss": (names("alpha", "bravo", "charlie"), names("bravo", "alpha", "charlie")),
        "created": (names("charlie", "alpha", "bravo"), names("bravo", "alpha", "charlie")),
    }
    for key, (descending, ascending) in expected.items():
        header = page.locator(f'#list-head th[data-sort="{key}"]')
        header.locator("button").click()
        expect(header).to_have_attribute("aria-sort", "descending")
        expect_order(descending, key)
        header.locator("button").click()
        expect(header).to_have_attribute("aria-sort", "ascending")
        expect_order(ascending, key)
        assert page.locator("#list-head th[aria-sort]").count() == 1
    for key in ("status", "progress"):  # all equal here: a tie goes newest first
        page.locator(f'#list-head th[data-sort="{key}"] button').click()
        expect(page.locator(f'#list-head th[data-sort="{key}"]')).to_have_attribute(
            "aria-sort", "descending"
        )
        expect_order(names("charlie", "alpha", "bravo"), key)

    page.fill("#search", optimizer)
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", ids["alpha"])
    page.fill("#search", f"{word}-z")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", ids["charlie"])
    page.fill("#search", "not searched")  # notes are not searched
    expect(page.locator("#list-message")).to_have_text("No experiment matches.")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_of_the_shared_page_and_the_compare_page(
    owner_page: tuple[Page, PageWatch],
    server: Server,
    stranger: BrowserContext,
    screenshots: Screenshots,
    scheme: str,
) -> None:
    page, _ = owner_page
    word = secrets.token_hex(3)
    first = seed_experiment(server, f"K-FAC vs SGD, wide {word}", 10)
    second = seed_experiment(server, f"K-FAC vs SGD, narrow {word}", 20)
    with session_scope(server.database_url) as session:
        experiment = get_experiment(session, first)
        set_tags(session, experiment, ["autoencoder", "baseline"])
        set_notes(
            session,
            experiment,
            "## What we saw\n\nK-FAC reaches SGD's final loss in **a third** of the steps; "
            "see [the paper, §13](https://arxiv.org/abs/1503.05671).\n\n"
            "- damping adapts from `150` down\n- rerun with `block_tridiagonal`",
        )
    page.emulate_media(color_scheme=scheme)
    page.goto(f"/compare?ids={first},{second}")
    wait_for_legend(page, 4)
    screenshots.save(f"compare-{scheme}", page)

    link = api(page, "POST", f"/api/experiments/{first}/share")
    shared = stranger.new_page()
    shared.emulate_media(color_scheme=scheme)
    shared.goto(link["url"])
    expect(shared.locator("#notes h4")).to_have_text("What we saw")
    shared.wait_for_function(
        "() => performance.getEntriesByName('kfac:curves-drawn').length > 0", timeout=30_000
    )
    screenshots.save(f"shared-{scheme}", shared)


MARKDOWN_CASES = [
    ("plain <b>text</b> & more", "<p>plain &lt;b&gt;text&lt;/b&gt; &amp; more</p>"),
    ("# One\n## Two\n#### Four", "<h3>One</h3><h4>Two</h4><h6>Four</h6>"),
    (
        "**bold _and em_** then *em*",
        "<p><strong>bold <em>and em</em></strong> then <em>em</em></p>",
    ),
    (
        "sgd_momentum_run and __init__ stay",
        "<p>sgd_momentum_run and <strong>init</strong> stay</p>",
    ),
    ("`<img src=x>` code", "<p><code>&lt;img src=x&gt;</code> code</p>"),
    ("- a\n- b\n\n1. c\n2) d", "<ul><li>a</li><li>b</li></ul><ol><li>c</li><li>d</li></ol>"),
    ("```\n# not a heading\n**raw**", "<pre><code># not a heading\n**raw**</code></pre>"),
    ("line one\nline two\n\nnext", "<p>line one\nline two</p><p>next</p>"),
    ("[rel](./runs?x=1#y)", '<p><a href="./runs?x=1#y">rel</a></p>'),
    ("[frag](#notes)", '<p><a href="#notes">frag</a></p>'),
    (
        "[ext](https://example.org/a)",
        '<p><a href="https://example.org/a" target="_blank" rel="noopener noreferrer">ext</a></p>',
    ),
    ("[x](JavaScript:alert(1))", "<p>[x](JavaScript:alert(1))</p>"),
    ("[x](javascript:alert`1`)", "<p>[x](javascript:alert`1`)</p>"),
    ("[x](data:text/html,<script>)", "<p>[x](data:text/html,&lt;script&gt;)</p>"),
    ("[x](vbscript:msgbox)", "<p>[x](vbscript:msgbox)</p>"),
    ("[x](JaVaScRiPt:void)", "<p>[x](JaVaScRiPt:void)</p>"),
    # No scheme (a scheme has no `%`): a path under the page, which runs nothing.
    ("[x](%6Aavascript:void)", '<p><a href="%6Aavascript:void">x</a></p>'),
]


def test_the_markdown_subset_builds_nodes_and_links_only_to_http_or_relative_targets(
    owner_page: tuple[Page, PageWatch],
) -> None:
    """markdown.js run as the page loads it: what each case becomes, read back as HTML."""
    page, _ = owner_page
    page.goto("/new")
    drawn = page.evaluate(
        """cases => import('/static/js/markdown.js').then((m) => cases.map((text) => {
             const box = document.createElement('div');
             box.append(m.renderMarkdown(text));
             return box.innerHTML;
           }))""",
        [text for text, _ in MARKDOWN_CASES],
    )
    for (text, expected), html in zip(MARKDOWN_CASES, drawn, strict=True):
        assert html == expected, text


def test_the_owner_s_controls_wait_for_the_experiment(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    """Tags, notes, archiving and renaming change the experiment starting from its answer:
    until it has come they are disabled (a tag typed at once, on a busy machine, read a null
    experiment: a TypeError and no tag), then they work."""
    page, watch = owner_page
    word = f"w{secrets.token_hex(3)}"
    experiment = seed(server, f"{word} early")
    read = re.compile(rf"/api/experiments/{experiment}$")
    held = []
    page.route(read, lambda route: held.append(route))
    page.goto(f"/experiments/{experiment}")
    wait_until_held(page, held)
    for control in ("#tag-input", "#tag-add", "#archive", "#edit-notes", "#rename"):
        expect(page.locator(control)).to_be_disabled()
    held[0].continue_()
    page.unroute(read)  # the tag's PATCH goes to the same path
    page.fill("#tag-input", word)  # waits until it is enabled
    page.keyboard.press("Enter")
    expect(page.locator("#experiment-tags .tag")).to_have_text([f"{word}×"])
    for control in ("#archive", "#edit-notes", "#rename"):
        expect(page.locator(control)).to_be_enabled()
    watch.assert_clean()
