"""The viewer page driven in headless Chromium against the local stack: it asks for the key, draws the
frame's hands in sync with the video, seeks from the timeline and plays the annotated video."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from handpipe.client import Client
from tests.support.paths import IN_CI, data_path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _browser_or_skip() -> Any:
    if not CHROMIUM.exists():
        message = (
            "the viewer's browser test needs /usr/bin/chromium (apt-get install chromium; ./setup.sh does it as root)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("playwright is missing: ./setup.sh installs requirements-dev.txt")
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    return sync_playwright


def until_true(page: Any, expression: str, arg: Any = None, timeout_s: float = 10) -> None:
    """Polls `expression` with page.evaluate, which the page's Content-Security-Policy allows; Playwright's
    wait_for_function polls by evaluating strings inside the page, which the policy's script-src forbids."""
    for _ in range(int(timeout_s / 0.05)):
        if page.evaluate(expression, arg):
            return
        time.sleep(0.05)
    raise AssertionError(f"{expression} ({arg!r}) stayed false for {timeout_s} s")


def test_the_viewer_draws_hands_in_sync_with_the_video_in_chromium(tmp_path: Path) -> None:
    from handpipe.local.stack import LocalStack

    sync_playwright = _browser_or_skip()
    clip = data_path("videos/asl_thanks_two_hands.mkv")
    with LocalStack(port=0, data_dir=tmp_path, workers=1, bucket="viewer-e2e", prefix="viewer") as stack:
        assert stack.info is not None
        api_key = getattr(stack.info, "api_key", None)
        client = Client(stack.info.api_url, api_key=api_key)
        job = client.wait(client.submit(clip, {"annotated_video": True})["id"], poll_s=0.2, timeout_s=300)
        assert job["status"] == "SUCCEEDED", job
        assert client.download_pictures(job["id"], tmp_path / "pictures", wait_s=120), "the worker drew no pictures"
        frames = list(client.frames(job["id"]))
        two_hands = [f for f in frames if len(f["hands"]) == 2]
        target = two_hands[len(two_hands) // 2]
        assert api_key, "handpipe up always protects its API with a key"
        viewer_url = f"{stack.info.api_url}/jobs/{job['id']}/viewer"

        allowed = {
            urllib.parse.urlsplit(stack.info.api_url).netloc,
            urllib.parse.urlsplit(stack.info.aws_endpoint_url).netloc,
        }
        requested: list[str] = []
        problems: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                # opened from a plain link, the page asks for the key, and again when one is refused
                page.goto(viewer_url)
                page.wait_for_selector("#key-form:not([hidden])")
                page.fill("#key-input", "wrong-key-0123456789")
                page.click("#key-form button")
                page.locator("#status.error", has_text="refused").wait_for()
                page.wait_for_selector("#key-form:not([hidden])")
                page.fill("#key-input", api_key)
                page.click("#key-form button")
                assert page.evaluate("async () => { await window.handpipeViewer.ready; return true; }") is True
                assert page.is_hidden("#key-form")

                # with the key in the fragment (never sent to a server) a new tab opens straight away
                page.close()
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(viewer_url + "#key=" + urllib.parse.quote(api_key))
                assert page.evaluate("async () => { await window.handpipeViewer.ready; return true; }") is True
                assert "key=" not in page.url and page.is_hidden("#key-form")  # dropped from the address bar
                assert page.evaluate("document.getElementById('video').readyState") >= 1  # the video loaded

                # seek to a frame with two hands: its 42 landmarks are drawn, on a canvas that is not empty
                drawn = page.evaluate("ms => window.handpipeViewer.seek(ms)", target["timestamp_ms"])
                assert drawn == target["index"] == page.evaluate("window.handpipeViewer.drawnFrameIndex")
                assert page.evaluate("window.handpipeViewer.landmarksDrawn") == 42
                painted = page.evaluate(
                    """() => {
                        const c = document.getElementById('overlay');
                        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let n = 0;
                        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
                        return n;
                    }"""
                )
                assert painted > 1000, painted
                current = page.evaluate("document.getElementById('video').currentTime")
                assert current * 1000 == pytest.approx(target["timestamp_ms"], abs=1)
                # the skeleton is where the frame's wrist is: a painted pixel near it
                wrist = target["hands"][0]["landmarks"][0]
                near = page.evaluate(
                    """([x, y]) => {
                        const c = document.getElementById('overlay');
                        const cx = Math.round(x * c.width), cy = Math.round(y * c.height), r = 6;
                        const d = c.getContext('2d').getImageData(cx - r, cy - r, 2 * r + 1, 2 * r + 1).data;
                        let n = 0;
                        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                        return n;
                    }""",
                    [wrist[0], wrist[1]],
                )
                assert near > 0

                # a click a quarter of the way along a track's lane seeks the video to a quarter of its length
                lane = page.locator(".lane[data-track='0']")
                box = lane.bounding_box()
                assert box is not None
                duration = page.evaluate("window.handpipeViewer.durationMs")
                assert duration == pytest.approx(1700, abs=1)
                lane.click(position={"x": box["width"] * 0.25, "y": box["height"] / 2})
                expected_ms = duration * 0.25
                for _ in range(200):  # the seek lands asynchronously
                    current = page.evaluate("document.getElementById('video').currentTime")
                    if abs(current * 1000 - expected_ms) < 20:
                        break
                    time.sleep(0.05)
                assert current * 1000 == pytest.approx(expected_ms, abs=20)
                nearest = min(frames, key=lambda f: abs(f["timestamp_ms"] - current * 1000))
                until_true(page, "i => window.handpipeViewer.drawnFrameIndex === i", nearest["index"])

                # the worker's annotated video (H.264, whatever the source's codec) plays in the same place
                assert page.is_visible("#annotated-toggle")
                page.check("#annotated-input")
                until_true(page, "() => document.getElementById('video').dataset.showing === 'annotated'", None)
                until_true(page, "() => document.getElementById('video').readyState >= 2", None)
                assert "annotated.mp4" in page.evaluate("document.getElementById('video').currentSrc")
                assert page.evaluate("document.getElementById('video').videoWidth") == job["video"]["width"]
                assert page.is_hidden("#overlay")
                played = page.evaluate(
                    """async () => {
                        const v = document.getElementById('video');
                        v.currentTime = 0;
                        await v.play();
                        while (v.currentTime < 0.3 && !v.ended) await new Promise((r) => setTimeout(r, 50));
                        v.pause();
                        return [v.currentTime, v.error ? v.error.code : 0];
                    }"""
                )
                assert played[0] >= 0.3 and played[1] == 0, played
            finally:
                browser.close()
        # the browser reports the refused key's 401/403 answers on the console; nothing else may appear
        assert not [p for p in problems if "status of 401" not in p and "status of 403" not in p], problems
        outside = [url for url in requested if urllib.parse.urlsplit(url).netloc not in allowed]
        assert not outside, outside
        assert any("/frames?" in url for url in requested) and any("/insights" in url for url in requested)
        assert not any(api_key in url for url in requested), "the key never travels in an address"
