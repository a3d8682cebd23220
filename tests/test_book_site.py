"""The book's website, built by `python book/build.py`, read in a real browser.

The site is built (incrementally) once for this file, served from book/_build/html/ by a local
HTTP server on 127.0.0.1, and opened in headless Chromium (Debian's `chromium`, driven by
Playwright's Python package; Playwright's own browser download is not used). Every chapter page,
the landing page (the README) and the book's README page must load with

- no console error and no uncaught exception;
- no request to anything but the local server (they are blocked and reported), none that fails;
- every image loaded (naturalWidth > 0), and at least as many images as the notebook has figures,
  every code cell's listing, and an output block for every cell that has outputs;
- the mathematics typeset by MathJax from the site itself: every math element rendered, no
  MathJax error, and no TeX left in the text a reader sees ($$, \\frac, ...);
- every link into the site resolving to a page of the site, and to an element of that page when
  it names one (#anchor).

A screenshot of each page goes to book/_build/screenshots/. The search page finds a word of the
book. Without the browser (`apt-get install chromium`) or Playwright (the `dev` extra) the browser
test is skipped, except under CI (CI=true), where it fails. Solutions of the exercises never reach
the site: checked on the built files, without the browser.
"""

import functools
import html
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import nbformat
import pytest

from tests.notebook_runner import ROOT

try:
    from playwright.sync_api import Error as PlaywrightError
except ImportError:                     # the browser test skips (or fails under CI) below
    PlaywrightError = Exception

BOOK = ROOT / "book"
SITE = BOOK / "_build" / "html"
SHOTS = BOOK / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
PAGES = ["index.html", "book/README.html"] + [f"book/{p.stem}.html" for p in CHAPTERS]
SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.DOTALL)


@pytest.fixture(scope="module")
def site():
    """book/_build/html, built now by `python book/build.py` (incremental: fast when current)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(BOOK / "build.py")], cwd=ROOT, text=True,
                          capture_output=True, timeout=900, check=False)
    assert done.returncode == 0, f"python book/build.py failed:\n{done.stdout}\n{done.stderr}"
    print(f"\nbook/build.py: {time.perf_counter() - start:.1f} s")
    assert (SITE / "index.html").exists()
    return SITE


# --- without the browser --------------------------------------------------------------------------

def visible_text(page_html):
    """The text of an HTML page without its tags (pygments splits code into spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page_html))


def test_the_site_has_every_chapter_and_only_the_student_exercises(site):
    """The exercise pages are the student version: every solution region became `raise
    NotImplementedError`, and no line of any solution is on any of them. (The chapters do show
    the package's own code, which the solutions resemble: that is the book, not a leak.)"""
    for page in PAGES:
        assert (site / page).exists(), f"the site has no {page}"
    pages = {p: visible_text(p.read_text(encoding="utf-8"))
             for p in (site / "book" / "exercises").glob("*.html")}
    solutions = {}
    for path in sorted((BOOK / "exercises").glob("*.ipynb")):
        page = site / "book" / "exercises" / f"{path.stem}.html"
        assert page in pages, f"the site has no student version of {path.name}"
        code = "\n".join(c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code")
        regions = SOLUTION.findall(code)
        assert regions, f"{path.name}: no solution region found (has the marker changed?)"
        assert pages[page].count("raise NotImplementedError") >= len(regions), page
        assert not any(m in pages[page] for m in ("BEGIN SOLUTION", "END SOLUTION")), page
        # the lines of its solutions that the student version does not hold anyway
        solutions[path.name] = {ln.strip() for r in regions for ln in r.splitlines()
                                if len(ln.strip()) >= 12 and ln.strip() not in pages[page]}
        assert solutions[path.name], f"{path.name}: its solutions are too short to check"
    for page, text in pages.items():
        for name, lines in solutions.items():
            leaked = sorted(ln for ln in lines if ln in text)
            assert not leaked, f"{page.relative_to(site)} shows a solution of {name}: {leaked[:3]}"


def test_the_site_holds_no_teacher_answer(site):
    """book/teacher/ (the worked answers to the chapters' questions) never reaches the site: no
    file or folder of that name, and no line of an answer in any text file of the site (pages,
    the search index, the copies of the sources)."""
    lines = [ln.strip() for p in sorted((BOOK / "teacher").glob("[0-9][0-9]_*.md"))
             for ln in p.read_text(encoding="utf-8").splitlines()
             if len(ln.strip()) >= 40 and not ln.startswith("## Answer")]
    assert lines, "no teacher answers to look for"
    assert not [p for p in site.rglob("*") if "teacher" in p.name.lower()]
    for path in sorted(site.rglob("*")):
        if path.is_file() and path.suffix in (".html", ".js", ".txt", ".md", ".ipynb", ".json"):
            text = html.unescape(path.read_text(encoding="utf-8", errors="replace"))
            leaked = [ln[:60] for ln in lines if ln in text]
            assert not leaked, f"{path.relative_to(site)} holds a teacher's answer: {leaked[:3]}"


# --- in the browser -------------------------------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    """The site served on 127.0.0.1 (a free port); yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(server):
    """A Chromium context with a fresh profile; every request not to the server is blocked and
    recorded in `browser.outside`."""
    why = None
    if not Path(CHROMIUM).exists():
        why = f"no {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = why or "no playwright (pip install -e '.[dev]')"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run under CI: {why}")
        pytest.skip(why)
    profile = tempfile.mkdtemp(prefix="uvit-chromium-")
    outside = []

    def route(r):
        url = r.request.url
        if url.startswith((server, "data:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        context.route("**/*", route)
        context.outside = outside
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


WAIT_FOR_MATH = """() => !document.querySelector('.math')
    || (window.MathJax && MathJax.startup && MathJax.startup.promise)"""

INSPECT = r"""async () => {
    await document.fonts.ready;                     // MathJax's fonts, the theme's icons
    const article = document.querySelector('article') || document.body;
    const images = await Promise.all([...document.images].map(async img => {
        img.loading = 'eager';
        try { await img.decode(); } catch (e) {}
        return [img.getAttribute('src'), img.naturalWidth, !!img.closest('.cell_output')];
    }));
    const maths = [...article.querySelectorAll('.math')];
    const clone = article.cloneNode(true);
    clone.querySelectorAll('pre, code, mjx-container, script, style, .highlight')
         .forEach(e => e.remove());
    return {
        images: images,
        maths: maths.length,
        rendered: maths.filter(m => m.querySelector('mjx-container')).length,
        unrendered: maths.filter(m => !m.querySelector('mjx-container'))
                         .map(m => m.textContent.slice(0, 80)),
        errors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
        mathjax: (window.MathJax && MathJax.version) || null,   // null: configured, not loaded
        text: clone.textContent,
        inputs: article.querySelectorAll('.cell_input').length,
        outputs: article.querySelectorAll('.cell_output').length,
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    };
}"""

RAW_TEX = re.compile(r"\$\$|\\(frac|sqrt|mathbf|mathrm|begin|end|sum|left|right|[a-zA-Z]+\{)|"
                     r"\\[()\[\]]|\$[^$\n]{1,80}\$")


def notebook_counts(path):
    """(code cells with source, code cells with outputs, figures) of a committed chapter."""
    code = [c for c in nbformat.read(path, 4).cells if c.cell_type == "code" and c.source.strip()]
    figures = sum(any(k.startswith("image/") for k in o.get("data", {}))
                  for c in code for o in c.outputs)
    return len(code), sum(bool(c.outputs) for c in code), figures


TABS = 2       # pages loading at once: Chromium renders each in its own process, one per core


def open_pages(context, base, pages):
    """Open `pages` of the site, TABS at a time; yield (page, what INSPECT found, console errors,
    failed requests, seconds)."""
    for first in range(0, len(pages), TABS):
        tabs = []
        for page in pages[first:first + TABS]:
            tab = context.new_page()
            errors, failed = [], []
            tab.on("console", lambda m, errors=errors: m.type == "error" and errors.append(
                f"{m.text} ({m.location.get('url', '')})"))
            tab.on("pageerror", lambda e, errors=errors: errors.append(f"uncaught: {e}"))
            tab.on("response", lambda r, failed=failed: r.status >= 400 and failed.append(
                f"{r.status} {r.url}"))
            tab.on("requestfailed", lambda r, failed=failed: r.url.startswith(base) and
                   failed.append(f"{r.failure} {r.url}"))
            response = tab.goto(base + page, wait_until="commit")   # the rest loads meanwhile
            assert response is not None and response.ok, f"{page}: {response and response.status}"
            tabs.append((page, tab, errors, failed, time.perf_counter()))
        for page, tab, errors, failed, start in tabs:
            try:
                tab.wait_for_load_state("load")
                try:
                    tab.wait_for_function(WAIT_FOR_MATH, timeout=30_000)
                    tab.evaluate("() => window.MathJax && MathJax.startup.promise.then(() => 1)")
                except PlaywrightError as exc:  # a time-out: MathJax never loaded or never ended
                    errors.append(f"MathJax did not start or finish: {str(exc)[:200]}")
                found = tab.evaluate(INSPECT)
                SHOTS.mkdir(parents=True, exist_ok=True)    # the first screen: a full page of a
                tab.screenshot(path=str(SHOTS / (page.replace("/", "_")[:-5] + ".png")))  # long
            finally:                                        # chapter takes seconds
                tab.close()
            yield page, found, errors, failed, time.perf_counter() - start


def test_every_page_renders_offline_in_chromium(browser, server, site):
    problems, links, seconds = [], set(), {}
    for page, found, errors, failed, took in open_pages(browser, server, PAGES):
        seconds[page] = took
        problems += [f"{page}: console error: {e}" for e in errors]
        problems += [f"{page}: request failed: {f}" for f in failed]
        broken = [src for src, width, _ in found["images"] if width == 0]
        problems += [f"{page}: image not loaded: {src}" for src in broken]
        if found["maths"]:
            if found["mathjax"] is None:
                problems.append(f"{page}: {found['maths']} math elements but no MathJax")
            problems += [f"{page}: math not typeset: {t!r}" for t in found["unrendered"][:5]]
            problems += [f"{page}: MathJax error: {t!r}" for t in found["errors"][:5]]
        raw = RAW_TEX.search(found["text"])
        if raw:
            around = found["text"][max(0, raw.start() - 60):raw.end() + 60].replace("\n", " ")
            problems.append(f"{page}: raw TeX in the text a reader sees: ...{around}...")
        chapter = BOOK / (page[len("book/"):-len(".html")] + ".ipynb")
        if chapter in CHAPTERS:
            inputs, outputs, figures = notebook_counts(chapter)
            shown = sum(1 for _, _, in_output in found["images"] if in_output)
            if shown < figures:
                problems.append(f"{page}: {shown} figures, its notebook has {figures}")
            if found["inputs"] != inputs:
                problems.append(f"{page}: {found['inputs']} code listings, notebook {inputs}")
            if found["outputs"] != outputs:
                problems.append(f"{page}: {found['outputs']} output blocks, notebook {outputs}")
            if not found["maths"]:
                problems.append(f"{page}: no mathematics at all")
        links.update(url for url in found["links"] if url.startswith(server))
    problems += [f"request to outside the site: {url}" for url in sorted(set(browser.outside))]
    problems += broken_links(links, server, site)
    print("\n" + ", ".join(f"{p} {s:.1f} s" for p, s in seconds.items()))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])


def broken_links(urls, base, site):
    """Links into the site whose page does not exist, or whose #anchor is not on that page."""
    problems, pages = [], {}
    for url in sorted(urls):
        address, anchor = urldefrag(url)
        path = unquote(urlparse(address).path).lstrip("/")
        file = site / path
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file():
            problems.append(f"broken link: {url} (no {path})")
            continue
        if anchor and file.suffix == ".html":
            if file not in pages:
                pages[file] = file.read_text(encoding="utf-8", errors="replace")
            if not re.search(rf"""\bid=["']{re.escape(unquote(anchor))}["']""", pages[file]):
                problems.append(f"broken link: {url} (no id {anchor!r} in {path})")
    return problems


def test_search_finds_a_word_of_the_book(browser, server):
    tab = browser.new_page()
    try:
        tab.goto(server + "search.html?q=patchify", wait_until="load")
        tab.wait_for_selector("#search-results ul.search li", timeout=30_000)
        hits = tab.locator("#search-results ul.search li a").evaluate_all(
            "links => links.map(a => a.getAttribute('href'))")
    finally:
        tab.close()
    assert any("02_tokens" in h for h in hits), hits
