"""AdaptiveDetector's later hand-down, with fake landmarkers: a hand-down that fails at the seed is
tried again beside the landmarker of num_hands and takes over only once both agree (the real
footage is in tests/integration/test_adaptive_detection.py)."""

from __future__ import annotations

from typing import Any

from handpipe_worker.detection import SHADOW_FRAMES, AdaptiveDetector, Hands, Task


def hand(shift: float = 0.0) -> dict[str, Any]:
    return {"landmarks": [[0.4 + shift, 0.4, 0.0], [0.6 + shift, 0.7, 0.0]]}


class Fakes:
    """Landmarkers whose answer each frame says: a frame is {num_hands: hands}; anything else (the
    black picture that clears a tracker) holds no hand. Records which landmarker saw which frame."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, int]] = []  # (num_hands, video, frame number)

    def make(self, num_hands: int, video: bool) -> Task:
        def run(image: Any, _ms: int) -> Hands:
            if not isinstance(image, dict):
                return []
            self.calls.append((num_hands, video, image["number"]))
            hands: Hands = image.get(num_hands, [])
            return hands

        return run, lambda: None


def frame(number: int, two: Hands, one: Hands) -> dict[Any, Any]:
    return {"number": number, 2: two, 1: one}


def test_a_failed_hand_down_is_tried_on_the_next_frame_and_hands_over_once_both_agree() -> None:
    fakes = Fakes()
    # An interval longer than the clip: only the retry right after the failed seed can happen.
    detector = AdaptiveDetector(fakes.make, num_hands=2, interval_ms=1e9)
    frames = [
        frame(0, [hand()], []),  # the seed: the landmarker of one finds nothing
        frame(1, [hand()], [hand(0.01)]),  # the shadow's own seed, 0.01 away: not yet
        frame(2, [hand()], [hand(0.0005)]),  # within HANDOVER_MATCH: it takes over
        frame(3, [hand()], [hand(0.0005)]),
        frame(4, [hand()], [hand(0.0005)]),
    ]
    out = [hands for number, image in enumerate(frames) for _, hands in detector.push(number, image, number * 40.0)]
    assert detector.handovers == {"seeded": 0, "later": 1, "failed": 1}
    assert detector.frames_by == {2: 3, 1: 2}
    # Until the hand-down every frame's hands are the landmarker of two's (exact mode's).
    assert out[:3] == [[hand()]] * 3 and out[3:] == [[hand(0.0005)]] * 2
    assert [(n, number) for n, video, number in fakes.calls if n == 2] == [(2, 0), (2, 1), (2, 2)]
    assert [number for n, _, number in fakes.calls if n == 1] == [0, 1, 2, 3, 4]


def test_a_shadow_that_never_agrees_is_dropped_and_the_landmarker_of_num_hands_goes_on() -> None:
    fakes = Fakes()
    detector = AdaptiveDetector(fakes.make, num_hands=2, interval_ms=1e9)
    frames = [frame(0, [hand()], [])] + [frame(n, [hand()], [hand(0.05)]) for n in range(1, 30)]
    out = [hands for number, image in enumerate(frames) for _, hands in detector.push(number, image, number * 40.0)]
    assert out == [[hand()]] * 30  # exact mode's hands throughout
    assert detector.handovers == {"seeded": 0, "later": 0, "failed": 1} and detector.frames_by == {2: 30}
    shadowed = [number for n, _, number in fakes.calls if n == 1]
    assert shadowed == list(range(SHADOW_FRAMES + 1))  # the seed, then SHADOW_FRAMES frames beside, no more
