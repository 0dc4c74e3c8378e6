"""app.py, the web demo, on the toy world (`--toy`: tiny random Llama and CLIP, PyAV example videos), served
in this process: through gradio_client (every request kind, bad uploads as messages and deleted at once,
a follow-up question that decodes nothing) and in a real headless Chromium (the first click on an example
answers; a refusal is one message; one font per heading; readable frame captions; upload, ask, see
answer, chart and frames; a screenshot; a closed page's files deleted). tests/test_app_service.py runs
app.py as a user does (a process: signals, ports, rapid requests, sessions).

Needs `pip install -e ".[demo]"` and Debian's `chromium` (.ci/run installs both); no download."""
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

import app as app_script
from toyworld.videos import write_video

pytest.importorskip("gradio_client")   # under TOPA_CI=1 a skip fails the run (tests/conftest.py)
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """The app as app.py's main serves it (a private temporary folder, the page's files sealed), here."""
    from engine.serve import ServeConfig
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_HEARTBEAT_INTERVAL", "1")   # a closed page is noticed within a second or two
        args = app_script.get_args(["--toy", "--device", "cpu"])
        with app_script.running(args, ServeConfig(toy=True, port=free_port())) as (app, url, _):
            client = Client(url, verbose=False)
            yield app, url, client
            client.close()


def ask(client, video, mode, question="", options=(), memory="protocol", frames="protocol", max_new=0,
        history=()):
    opts = list(options) + [""] * (app_script.N_OPTIONS - len(options))
    video = video if isinstance(video, dict) else handle_file(str(video))
    return client.predict(video, mode, question, *opts, memory, frames, max_new, list(history),
                          api_name="/ask")


def on_server(path) -> dict:
    """A file already on the server, as the page sends it after its first upload."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def text_of(message) -> str:
    c = message["content"]
    return c if isinstance(c, str) else "".join(part.get("text", "") for part in c)


def files_named(root, name: str):
    return [p for p in Path(root).rglob(name) if p.is_file()]


def test_every_request_kind(served):
    app, _, client = served
    video = app.examples[0]
    hist, answer, chart, gallery = ask(client, video, "Multiple choice", "What moves?", ["a ball", "a cat", "a car"])
    want = app.qa.choose(video, "What moves?", ["a ball", "a cat", "a car"])
    assert answer == f"({want.letter}) {want.option}"
    assert chart["visible"] is True
    probs = [row[1] for row in chart["value"]["data"]]
    assert [row[0] for row in chart["value"]["data"]] == ["(A) a ball", "(B) a cat", "(C) a car"]
    assert abs(sum(probs) - 1) < 1e-6 and max(abs(p - q) for p, q in zip(probs, want.probabilities)) < 1e-6
    assert [g["caption"] for g in gallery] == [f"#{i} · {t:.1f} s" for i, t in
                                               zip(want.frames.indices, want.frames.times)]
    hist, answer, chart, gallery = ask(client, video, "Describe", history=hist)
    assert answer == f"{app.qa.describe(video).text}" and chart["visible"] is False
    assert len(gallery) == 10 and len(hist) == 4
    hist, answer, _, _ = ask(client, video, "Open question", "where is it", max_new=5, history=hist)
    assert answer == f"{app.qa.answer(video, 'where is it', max_new_tokens=5).text}"
    hist, answer, _, _ = ask(client, video, "Multiple choice (MVBench letters)", "What moves?", ["a ball", "a cat"],
                             memory="off", frames="strided", history=hist)
    a = app.qa.mvbench(video, "What moves?", ["a ball", "a cat"], memory=False, frames="strided")
    assert answer.startswith(f"({a.letter}) {['a ball', 'a cat'][a.choice]}")
    assert [m["role"] for m in hist] == ["user", "assistant"] * 4
    assert text_of(hist[-2]).startswith("What moves?") and text_of(hist[-1]) == answer


def test_a_follow_up_question_decodes_nothing(served, tmp_path):
    """The page uploads a video once and sends its server path with every question (as here after the
    first one): the second and third questions are answered from the features of the first decoding."""
    app, _, client = served
    video = shutil.copy(app.examples[1], tmp_path / "upload.mp4")
    before = dict(app.qa.stats)
    ask(client, video, "Open question", "what is it")
    assert app.qa.stats["decoded"] == before["decoded"] + 1
    (uploaded,) = files_named(app.files.root, "upload.mp4")
    ask(client, on_server(uploaded), "Multiple choice", "which color", ["green", "red"])
    ask(client, on_server(uploaded), "Describe")
    assert app.qa.stats["decoded"] == before["decoded"] + 1
    assert app.qa.stats["cache_hits"] == before["cache_hits"] + 2


def test_bad_uploads_are_messages_and_deleted_at_once(served, tmp_path):
    app, _, client = served
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    with pytest.raises(AppError, match="broken.mp4: unreadable"):
        ask(client, broken, "Describe")
    short = write_video(tmp_path / "short.mp4", 4, 25, (64, 48))   # fewer frames than T: answered (the API's rule)
    assert ask(client, short, "Describe")[1] == app.qa.describe(str(short)).text
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AppError, match="notes.txt is a '.txt' file, not a video"):
        ask(client, text, "Describe")
    for name in ("broken.mp4", "notes.txt"):   # refused uploads: gone from the server at once
        assert files_named(app.files.root, name) == [], name
    # a video, however short: kept for the session's next requests
    (kept,) = files_named(app.files.root, "short.mp4")
    ask(client, on_server(kept), "Multiple choice", "What?", ["a", "b"])
    with pytest.raises(AppError, match="at least two options"):
        ask(client, app.examples[0], "Multiple choice", "What?", ["only"])
    with pytest.raises(AppError, match="Type a question"):
        ask(client, app.examples[0], "Open question", "  ")
    limit, app.max_upload_mb = app.max_upload_mb, 0.001
    try:
        with pytest.raises(AppError, match="over the 0.001 MB limit"):
            ask(client, app.examples[0], "Describe")
    finally:
        app.max_upload_mb = limit
    # the page's own example stays, and the app still answers
    assert ask(client, app.examples[0], "Describe")[1] == app.qa.describe(app.examples[0]).text


def browser(p):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium"
    return p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def playwright_api():
    return pytest.importorskip("playwright.sync_api")   # under TOPA_CI=1 a skip fails the test (tests/conftest.py)


def fonts_of(page, selector: str):
    """The fonts Chromium drew the element's text with (DevTools' platform fonts)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    return [f["familyName"] for f in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]]


def test_the_first_minute_in_a_real_browser(served):
    """A new user's first clicks: an example, then Ask, answers; a refusal is one message (no red badges
    on the answer panels); the settings say what they do; every heading is drawn in one font; the frame
    captions are not cut."""
    sync_api = playwright_api()
    app, url, _ = served
    with sync_api.sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_text("This is a random toy model", exact=False).wait_for()
        assert page.locator("#question textarea").input_value() == app_script.DEFAULT_QUESTION
        for heading in ("h1", "#toy-note strong"):
            assert len(set(fonts_of(page, heading))) == 1, (heading, fonts_of(page, heading))
        page.locator("[data-testid='dataset-cell-0-0']").click()   # the first example's video
        page.locator("#video video").wait_for(timeout=60_000)
        page.locator("#ask").click()
        box = page.locator("#answer textarea")
        page.wait_for_function("e => e.value.length > 0", arg=box.element_handle(), timeout=120_000)
        want = app.qa.answer(app.examples[0], app_script.DEFAULT_QUESTION)
        assert box.input_value() == want.text
        page.locator("#gallery img").first.wait_for()
        captions = page.locator("#gallery .caption-label, #gallery figcaption, #gallery [class*=caption]")
        assert captions.count() >= len(want.frames.indices)
        texts = [c.inner_text() for c in captions.all()]
        shown = [f"#{i} · {t:.1f} s" for i, t in zip(want.frames.indices, want.frames.times)]
        assert texts[:len(shown)] == shown
        assert all(c.evaluate("e => e.scrollWidth <= e.clientWidth") for c in captions.all()), "a caption is cut"
        # a refusal: one message, no "Error" badge on the answer, the frames or the chat
        page.get_by_label("Multiple choice", exact=True).check()
        page.locator("#ask").click()
        page.get_by_text("Multiple choice needs at least two options.").wait_for(timeout=60_000)
        badges = page.locator("[data-testid='status-tracker'] .error")
        assert sum(b.is_visible() for b in badges.all()) == 0
        assert page.locator("#answer textarea").input_value() == want.text   # the last answer stays
        # the settings name what they do
        page.get_by_role("button", name="Settings ▼").click()
        page.locator("#memory").get_by_text(app_script.PROTOCOL).wait_for(timeout=10_000)
        assert "protocol's" not in page.locator("body").inner_text()
        assert "memory off" in page.locator("#protocol").inner_text()   # multiple choice follows NExT-QA
        b.close()


def test_in_a_real_browser(served, tmp_path):
    sync_api = playwright_api()
    app, url, _ = served
    video = shutil.copy(app.examples[0], tmp_path / "my clip.mp4")
    shots = Path(os.environ.get("TOPA_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    sessions_before = set(app.files.uploads)
    with sync_api.sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_text("This is a random toy model", exact=False).wait_for()
        page.locator("#video input[type=file]").set_input_files(str(video))
        page.locator("#video video").wait_for(timeout=60_000)
        for _ in range(600):   # the upload is the page's session's as soon as it arrives, before any question
            if set(app.files.uploads) - sessions_before:
                break
            time.sleep(0.1)
        assert set(app.files.uploads) - sessions_before
        page.get_by_label("Multiple choice", exact=True).check()
        page.locator("#question textarea").fill("What moves across the picture?")
        for k, o in enumerate(["a red ball", "a green square", "yellow stripes"]):
            page.locator(f"#option-{k} textarea").fill(o)
        page.locator("#ask").click()
        box = page.locator("#answer textarea")
        page.wait_for_function("e => e.value.length > 0", arg=box.element_handle(), timeout=120_000)
        answer = box.input_value()
        options = ["a red ball", "a green square", "yellow stripes"]
        want = app.qa.choose(str(video), "What moves across the picture?", options)
        assert f"({want.letter}) {want.option}" in answer
        page.locator("#chart canvas, #chart svg").first.wait_for(timeout=60_000)
        page.locator("#gallery img").first.wait_for()
        assert page.locator("#gallery img").count() == len(want.frames.indices)
        assert "What moves across the picture?" in page.locator("#chat").inner_text()
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "demo.png"), full_page=True)
        (session,) = set(app.files.uploads) - sessions_before
        uploads = set(app.files.uploads[session])
        frames = list(app.files.session_folder(session).rglob("*.webp"))
        assert uploads and frames and all(os.path.exists(u) for u in uploads)
        page.close()   # the session ends: its upload and the frames it was shown are deleted
        b.close()
    for _ in range(600):   # Gradio notices the closed page by its heartbeat
        if not any(os.path.exists(u) for u in list(uploads) + frames):
            break
        time.sleep(0.1)
    assert not any(os.path.exists(u) for u in list(uploads) + frames)
    assert all(os.path.exists(e) for e in app.files.keep)   # the page's examples stay
    assert (shots / "demo.png").stat().st_size > 10_000
