"""Adaptive detection: MediaPipe re-runs its palm detector on every frame while it tracks fewer hands
than `num_hands`, which doubles the cost of a one-hand video. This module tracks the hands it has
with a landmarker sized to them and asks a detecting one only every interval, and (with no hand in
view) looks every few frames, going back over the frames between when it finds one. When the smaller
landmarker cannot take over at the seed, it is seeded again later and runs alongside the detecting
one, taking over once both give nearly the same landmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Hands = list[dict[str, Any]]
# One MediaPipe task of `num_hands`, in VIDEO mode (tracking) or IMAGE mode (palm detection on
# every call, no state): (run(image, timestamp_ms) -> hands[], close).
Task = tuple[Callable[[Any, int], Hands], Callable[[], None]]
MakeTask = Callable[[int, bool], Task]  # (num_hands, video) -> task

MASK_MARGIN = 0.1  # of a hand's landmark box, each side: enough to hide its palm from the detector
_BLANK_SIDE = 64  # a black picture makes a tracker drop what it tracks (MediaPipe finds no hand in it)
# A later hand-down (see AdaptiveDetector._follow): the smaller landmarker, seeded afresh, runs beside
# the landmarker of num_hands until their landmarks agree this closely (largest coordinate difference),
# a fifth of what the tests allow, for at most SHADOW_FRAMES frames an attempt.
HANDOVER_MATCH = 0.001
SHADOW_FRAMES = 12
MAX_BACKOFF = 8  # attempts that found no agreement wait up to this many intervals before the next one


@dataclass
class _Tracker:
    """One VIDEO-mode landmarker. MediaPipe tracks from the hands it returned for the last frame it
    saw, so its state is right only for the frame after that one, or when it tracks nothing: then
    the palm detector runs, whatever came before. Trackers not in use are kept tracking nothing."""

    run: Callable[[Any, int], Hands]
    close: Callable[[], None]
    count: int = 0  # hands it returned for the last frame it saw
    clock: int = 0  # its own timestamps: VIDEO mode needs them strictly increasing and uses nothing else

    def detect(self, image: Any) -> Hands:
        self.clock += 1
        hands = self.run(image, self.clock)
        self.count = len(hands)
        return hands


@dataclass
class _Kept:
    key: Any
    image: Any
    ms: float


@dataclass
class AdaptiveDetector:
    """Feed frames in order with `push`; hands come out in the same order, up to `scan_every` - 1
    frames later while no hand is in view (those frames are kept meanwhile). `finish` hands out the
    rest.

    The landmarker of `num_hands` (the exact mode's) seeds hands. When it finds some but fewer than
    num_hands on a frame where it tracked none, a landmarker of that many hands, which computes the
    same seeds from the same frame, tracks them without palm detection: the exact mode's landmarks.
    Every `interval_ms` an IMAGE-mode landmarker looks for a hand not tracked yet; a hand found
    hands all of them back to the landmarker of num_hands. A hand that tracking loses is lost on
    that frame as in exact mode (MediaPipe's own palm detection ignores detections overlapping a
    tracked hand's box), and hands the palm detector would find elsewhere on that frame are added.
    With no hand in view, only every `scan_every`-th frame is looked at until one is found.

    A hand-down can fail at the seed: on a hand at the frame's edge the landmarker of one hand can
    find nothing where the one of two finds it (presumably as fewer palm candidates reach its
    landmark model). And with two hands seeded and one gone, the landmarker of num_hands goes on with
    the other. Either way it runs its palm detector on every frame, so the smaller landmarker is
    seeded afresh (on the next frame after a failed hand-down, then every interval) and runs beside
    it (a shadow). It cannot start from the same state (MediaPipe tracks
    from the last frame's landmarks, which only the landmarker of num_hands has), so it takes over
    only once its landmarks agree with the other's within HANDOVER_MATCH; from then on they are
    close to exact mode's, not equal to them. A shadow that does not agree within SHADOW_FRAMES is
    dropped (a fresh seed can settle on another pose for good), and the next attempt waits longer."""

    make: MakeTask
    num_hands: int
    interval_ms: float
    # With no hand in view, look at every scan_every-th frame only and go back over the frames between
    # when one is found: a hand in view for fewer frames can be missed (docs/performance.md).
    scan_every: int = 1
    _trackers: dict[int, _Tracker] = field(default_factory=dict)
    _active: int = 0  # num_hands of the tracker in use
    _previous: Hands = field(default_factory=list)  # what the tracker in use returned last
    _last_check_ms: float = 0.0
    _kept: list[_Kept] = field(default_factory=list)
    _checker: Task | None = None
    _blank: Any = None
    _shadow: int = 0  # hands of the smaller landmarker running beside the one of num_hands (0: none)
    _shadowed: int = 0  # frames the current shadow has run
    _backoff: int = 1  # intervals to wait before the next later hand-down
    # Frames whose hands came from the landmarker of each number of hands, and hand-downs that worked
    # at the seed ("seeded") or later ("later"): what tests and benches read to see which one ran.
    frames_by: dict[int, int] = field(default_factory=dict)
    handovers: dict[str, int] = field(default_factory=lambda: {"seeded": 0, "later": 0, "failed": 0})

    def __post_init__(self) -> None:
        self._active = self.num_hands

    def _tracker(self, hands: int) -> _Tracker:
        if hands not in self._trackers:
            run, close = self.make(hands, True)
            self._trackers[hands] = _Tracker(run, close)
        return self._trackers[hands]

    def _check(self, image: Any, ms: float) -> Hands:
        """Every hand the palm detector finds on this frame, from no state (IMAGE mode)."""
        if self._checker is None:
            self._checker = self.make(self.num_hands, False)
        return self._checker[0](image, int(ms))

    def close(self) -> None:
        for tracker in self._trackers.values():
            tracker.close()
        self._trackers.clear()
        if self._checker is not None:
            self._checker[1]()
            self._checker = None

    # ------------------------------------------------------------------------------- frame by frame

    def push(self, key: Any, image: Any, ms: float) -> list[tuple[Any, Hands]]:
        """One frame in; (key, hands) of every frame whose hands are known now, in order."""
        if self.scan_every > 1 and self._active == self.num_hands and self._tracker(self.num_hands).count == 0:
            if self._tracker(self.num_hands).clock > 0:  # the first frame is always looked at
                self._kept.append(_Kept(key, image, ms))
                return self._scan() if len(self._kept) >= self.scan_every else []
        return [(key, self._frame(image, ms))]

    def finish(self) -> list[tuple[Any, Hands]]:
        """The hands of the frames still kept (the last ones, while no hand was in view)."""
        return self._scan() if self._kept else []

    def _scan(self) -> list[tuple[Any, Hands]]:
        """No hand was in view: look at the newest kept frame only. Nothing there, nothing before
        it; a hand there, and every kept frame goes through the landmarker of num_hands in order
        (tracking nothing, its state is right for the first of them)."""
        kept, self._kept = self._kept, []
        if not self._check(kept[-1].image, kept[-1].ms):
            return [(frame.key, []) for frame in kept]
        return [(frame.key, self._frame(frame.image, frame.ms)) for frame in kept]

    def _frame(self, image: Any, ms: float) -> Hands:
        if self._active < self.num_hands:
            self.frames_by[self._active] = self.frames_by.get(self._active, 0) + 1
            return self._tracked(image, ms)
        self.frames_by[self.num_hands] = self.frames_by.get(self.num_hands, 0) + 1
        full = self._tracker(self.num_hands)
        seeding = full.count == 0
        hands = full.detect(image)
        if seeding and 0 < len(hands) < self.num_hands:
            self._hand_down(image, ms, hands)
        elif not seeding and 0 < len(hands) < self.num_hands and len(hands) == len(self._previous):
            self._follow(image, ms, hands)
        else:
            self._drop_shadow()
        self._previous = hands
        return hands

    def _hand_down(self, image: Any, ms: float, hands: Hands) -> None:
        """Hands just seeded by the landmarker of num_hands go to the one of their number, which
        seeds the same hands from the same frame (both start from no state)."""
        self._backoff = 1  # a fresh seed: a later hand-down of it waits one interval
        smaller = self._tracker(len(hands))
        again = smaller.detect(image)
        if len(again) == len(hands) and all(any(_same_hand(a, b) for b in hands) for a in again):
            self._active = len(hands)
            self._last_check_ms = ms
            self._clear(self._tracker(self.num_hands))
            self.handovers["seeded"] += 1
        else:
            # Tried again by _follow, beside the landmarker of num_hands, from the next frame: on the
            # 1080p clip of docs/performance.md a seed one frame later ends up closest to exact mode's.
            self._clear(smaller)
            self._last_check_ms = ms - self.interval_ms
            self.handovers["failed"] += 1

    def _follow(self, image: Any, ms: float, hands: Hands) -> None:
        """The landmarker of num_hands tracks fewer hands than that (a failed hand-down, or hands gone):
        when due, seed the landmarker of their number on this frame and run it beside; hand over once
        both give nearly the same landmarks (the class docstring says why not at once)."""
        if not self._shadow:
            if ms - self._last_check_ms < self.interval_ms * self._backoff:
                return
            self._last_check_ms = ms
            self._shadow, self._shadowed = len(hands), 0
        shadow = self._tracker(self._shadow)
        again = shadow.detect(image)
        self._shadowed += 1
        if len(again) != len(hands) or not all(any(_same_hand(a, b) for b in hands) for a in again):
            self._drop_shadow(failed=True)
        elif max(min(_landmark_diff(a, b) for b in hands) for a in again) <= HANDOVER_MATCH:
            self._active, self._shadow, self._backoff = len(hands), 0, 1
            self._last_check_ms = ms
            self._clear(self._tracker(self.num_hands))
            self.handovers["later"] += 1
        elif self._shadowed >= SHADOW_FRAMES:
            self._drop_shadow(failed=True)

    def _drop_shadow(self, failed: bool = False) -> None:
        """Stop a later hand-down: the shadow is cleared; after one that failed, the next waits longer."""
        if self._shadow:
            self._clear(self._tracker(self._shadow))
            self._shadow = 0
            self._backoff = min(MAX_BACKOFF, self._backoff * 2) if failed else 1

    def _tracked(self, image: Any, ms: float) -> Hands:
        """1..num_hands-1 hands are tracked by the landmarker of their number."""
        tracker = self._tracker(self._active)
        hands = tracker.detect(image)
        if len(hands) < len(self._previous):
            # Lost as in exact mode; hands elsewhere on this frame exact mode's palm detector finds now.
            self._last_check_ms = ms
            gone = [hand for hand in self._previous if not any(_same_hand(hand, h) for h in hands)]
            new = [h for h in self._check(image, ms) if not any(_same_hand(h, k) for k in hands + gone)]
            hands = (hands + new)[: self.num_hands]
            if new:
                self._hand_up(image)
            elif not hands:
                self._active = self.num_hands  # tracking nothing, like the landmarker of num_hands
        elif ms - self._last_check_ms >= self.interval_ms:
            self._last_check_ms = ms
            # The tracked hands are blacked out, as MediaPipe's own detector ignores palms on them: the
            # look is then a palm detection alone unless another hand is there.
            masked = _masked(image, hands)
            new = [h for h in self._check(masked, ms) if not any(_same_hand(h, k) for k in hands)]
            if new:
                hands = (hands + new)[: self.num_hands]
                self._hand_up(image)
        self._previous = hands
        return hands

    def _hand_up(self, image: Any) -> None:
        """The landmarker of num_hands tracks from here: it seeds every hand on this frame afresh."""
        self._clear(self._tracker(self._active))
        self._active = self.num_hands
        self._tracker(self.num_hands).detect(image)

    def _clear(self, tracker: _Tracker) -> None:
        """Make a tracker drop what it tracks, so it seeds from no state when next used."""
        if self._blank is None:
            from mediapipe import Image, ImageFormat  # heavy import, deferred to first use

            self._blank = Image(image_format=ImageFormat.SRGB, data=np.zeros((_BLANK_SIDE, _BLANK_SIDE, 3), np.uint8))
        for _ in range(3):
            if not tracker.count:
                return
            tracker.detect(self._blank)


def _masked(image: Any, hands: Hands) -> Any:
    """A copy of the frame with each hand's landmark box, grown by MASK_MARGIN of its size each side,
    painted black."""
    from mediapipe import Image, ImageFormat

    pixels = np.array(image.numpy_view())
    height, width = pixels.shape[:2]
    for hand in hands:
        x0, y0, x1, y1 = _box(hand)
        grow_x, grow_y = (x1 - x0) * MASK_MARGIN, (y1 - y0) * MASK_MARGIN
        left, right = max(0, int((x0 - grow_x) * width)), min(width, int((x1 + grow_x) * width) + 1)
        top, bottom = max(0, int((y0 - grow_y) * height)), min(height, int((y1 + grow_y) * height) + 1)
        pixels[top:bottom, left:right] = 0
    return Image(image_format=ImageFormat.SRGB, data=pixels)


def _box(hand: dict[str, Any]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in hand["landmarks"]]
    ys = [p[1] for p in hand["landmarks"]]
    return min(xs), min(ys), max(xs), max(ys)


def _landmark_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest coordinate difference between two hands' landmarks (as the tests measure it)."""
    return float(np.abs(np.array(a["landmarks"]) - np.array(b["landmarks"])).max())


def _same_hand(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two results for one hand: their landmark boxes overlap by more than half of the smaller."""
    ax0, ay0, ax1, ay1 = _box(a)
    bx0, by0, bx1, by1 = _box(b)
    overlap = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
    return smaller > 0 and overlap > 0.5 * smaller
