"""The hand's pose from its landmarks, and the rules that name a gesture from it (handpipe's own
classifier, used when a job ran the HandLandmarker rather than a GestureRecognizer). Pure standard-library
Python, shared by the API and the worker like the rest of shared/."""

from __future__ import annotations

import math
from collections.abc import Sequence

GESTURES = ("open_palm", "closed_fist", "pointing_up", "thumb_up", "thumb_down", "victory", "i_love_you", "none")

Point = Sequence[float]

WRIST = 0
FINGERS = {"index": (5, 6, 7, 8), "middle": (9, 10, 11, 12), "ring": (13, 14, 15, 16), "pinky": (17, 18, 19, 20)}
TIPS = (4, 8, 12, 16, 20)


# ------------------------------------------------------------------------------------ geometry


# Points are [x, y, z] (the result's landmarks); these run per landmark, so they avoid generic loops.


def _dist(a: Point, b: Point) -> float:
    return math.dist(a, b)


def _angle(u: Sequence[float], v: Sequence[float]) -> float:
    """Angle between two 3-D vectors in degrees (0 when either is zero)."""
    nu, nv = math.hypot(u[0], u[1], u[2]), math.hypot(v[0], v[1], v[2])
    if nu == 0 or nv == 0:
        return 0.0
    cos = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / (nu * nv)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at `zero_at`, 1 at `one_at`, linear in between and clamped (either direction)."""
    if one_at == zero_at:
        return 1.0 if value >= one_at else 0.0
    return max(0.0, min(1.0, (value - zero_at) / (one_at - zero_at)))


def _bend(points: Sequence[Point], chain: Sequence[int]) -> float:
    """Sum of the bending angles along a chain of landmarks (0 for a straight chain), degrees."""
    total = 0.0
    previous = None
    for a, b in zip(chain, chain[1:], strict=False):
        pa, pb = points[a], points[b]
        segment = (pb[0] - pa[0], pb[1] - pa[1], pb[2] - pa[2])
        if previous is not None:
            total += _angle(previous, segment)
        previous = segment
    return total


def _palm_size(world: Sequence[Point]) -> float:
    return max(_dist(world[WRIST], world[9]), 1e-6)


# ------------------------------------------------------------------------------------ finger states


def finger_extension(world_landmarks: Sequence[Point]) -> dict[str, float]:
    """How extended each finger is, 0 (curled) to 1 (straight), from the 3-D world landmarks, so it
    does not depend on how the hand is turned.

    Index to pinky: the mean of two cues, the bending summed over the MCP, PIP and DIP joints
    (<= 90 degrees straight, >= 150 curled) and the tip's distance from the wrist over the PIP's
    (>= 1.25 straight, <= 1.0 curled: a curled fingertip comes back towards the wrist).
    Thumb: the mean of the tip's distance from the index PIP over the palm size (>= 0.45 away from the
    fingers, <= 0.25 folded onto them) and the tip's distance from the little finger's MCP over the
    IP joint's (>= 1.15: the tip points away from the palm, <= 1.0: it folds across it)."""
    w = world_landmarks
    states: dict[str, float] = {}
    palm = _palm_size(w)
    thumb_gap = _ramp(_dist(w[4], w[6]) / palm, 0.25, 0.45)
    thumb_out = _ramp(_dist(w[4], w[17]) / max(_dist(w[3], w[17]), 1e-6), 1.0, 1.15)
    states["thumb"] = (thumb_gap + thumb_out) / 2
    for name, (mcp, pip, _dip, tip) in FINGERS.items():
        bend = _bend(w, (WRIST, mcp, pip, _dip, tip))
        reach = _dist(w[tip], w[WRIST]) / max(_dist(w[pip], w[WRIST]), 1e-6)
        states[name] = (_ramp(bend, 150.0, 90.0) + _ramp(reach, 1.0, 1.25)) / 2
    return states


def openness(world_landmarks: Sequence[Point]) -> float:
    """0 (fist) to 1 (spread hand): the mean fingertip-to-wrist distance over the palm size (wrist to
    middle-finger MCP), mapped from about 0.8 (fist) to 1.8 (open hand)."""
    w = world_landmarks
    reach = sum(_dist(w[tip], w[WRIST]) for tip in TIPS) / len(TIPS) / _palm_size(w)
    return _ramp(reach, 0.8, 1.8)


def _image_points(landmarks: Sequence[Point], aspect_ratio: float) -> list[tuple[float, float]]:
    """Normalized landmarks in units of the frame height (x scaled by width/height), y downwards."""
    return [(p[0] * aspect_ratio, p[1]) for p in landmarks]


def _image_hand_size(points: Sequence[tuple[float, float]]) -> float:
    """The palm's largest extent in the image: survives the palm being seen edge-on in one direction."""
    pairs = ((0, 5), (0, 9), (0, 17), (5, 17))
    return max(max(math.dist(points[a], points[b]) for a, b in pairs), 1e-6)


def _thumb_direction(p: Sequence[tuple[float, float]], size: float) -> tuple[float, float]:
    finger_ys = [y for _, y in p[5:21]]
    tip_x, tip_y = p[4]
    dx, dy = tip_x - p[2][0], tip_y - p[2][1]
    length = max(math.hypot(dx, dy), 1e-6)
    up = _ramp((min(finger_ys) - tip_y) / size, 0.1, 0.35) * _ramp(-dy / length, 0.35, 0.6)
    down = _ramp((tip_y - max(finger_ys)) / size, 0.1, 0.35) * _ramp(dy / length, 0.35, 0.6)
    return up, down


def thumb_direction(landmarks: Sequence[Point], *, aspect_ratio: float = 1.0) -> tuple[float, float]:
    """(up, down), each 0-1: how clearly the thumb sticks out above (below) the rest of the hand in the
    upright image. It needs the thumb tip beyond every landmark of the four fingers by 0.1-0.35 hand
    sizes (a fist with the thumb tucked in has it level with the knuckles) and the thumb (MCP to tip)
    within about 60 degrees of vertical."""
    p = _image_points(landmarks, aspect_ratio)
    return _thumb_direction(p, _image_hand_size(p))


def _thumb_protrusion(p: Sequence[tuple[float, float]], size: float) -> float:
    rest = [p[WRIST], *p[5:21]]
    xs, ys = [x for x, _ in rest], [y for _, y in rest]
    tip_x, tip_y = p[4]
    outside_x = max(min(xs) - tip_x, 0.0, tip_x - max(xs))
    outside_y = max(min(ys) - tip_y, 0.0, tip_y - max(ys))
    return math.hypot(outside_x, outside_y) / size


def thumb_protrusion(landmarks: Sequence[Point], *, aspect_ratio: float = 1.0) -> float:
    """How far the thumb tip lies outside the bounding box of the wrist and the four fingers in the
    image, in hand sizes: about 0 for a thumb tucked into a fist (seen from any side), 0.5-1 for a
    thumb sticking out (up, down or sideways)."""
    p = _image_points(landmarks, aspect_ratio)
    return _thumb_protrusion(p, _image_hand_size(p))


def _index_up(p: Sequence[tuple[float, float]]) -> float:
    """0-1: the index finger (MCP to tip) points up in the image, within about 50 degrees of vertical."""
    dx, dy = p[8][0] - p[5][0], p[8][1] - p[5][1]
    return _ramp(-dy / max(math.hypot(dx, dy), 1e-6), 0.45, 0.65)


# ------------------------------------------------------------------------------------ gestures

# Finger patterns (thumb, index, middle, ring, pinky): 1 extended, 0 curled, 0.5 not folded in (at least a
# quarter out: an open hand often holds its thumb alongside the palm), None either.
_PATTERNS: dict[str, tuple[float | None, ...]] = {
    "thumb_up": (None, 0, 0, 0, 0),
    "thumb_down": (None, 0, 0, 0, 0),
    "i_love_you": (1, 1, 0, 0, 1),
    "victory": (None, 1, 1, 0, 0),
    "pointing_up": (None, 1, 0, 0, 0),
    "open_palm": (0.5, 1, 1, 1, 1),
    "closed_fist": (None, 0, 0, 0, 0),
}
_ORDER = ("thumb", "index", "middle", "ring", "pinky")


def _agreement(extension: float, want: float) -> float:
    if want == 1:
        return extension
    if want == 0:
        return 1.0 - extension
    return min(1.0, extension / want)


def classify_gesture(
    landmarks: Sequence[Point],
    world_landmarks: Sequence[Point],
    handedness: str,
    *,
    aspect_ratio: float = 1.0,
) -> tuple[str, float]:
    """A gesture label (one of GESTURES, MediaPipe's canned gestures in snake_case) and a 0-1 score.

    Rules, tried in this order, on `finger_extension` (world landmarks, so independent of how the hand
    is turned) and, where a direction matters, the upright image (y downwards; `aspect_ratio` is the
    frame's width/height, so image distances are not squashed):
    - thumb_up / thumb_down: index and middle curled, ring and little finger curled (one of those two
      may read extended: they hide behind the fist and are the least reliable landmarks), and the thumb
      sticking out above / below the hand (`thumb_direction`);
    - i_love_you: thumb, index and little finger extended, middle and ring curled;
    - victory: index and middle extended, ring and little finger curled (thumb either way);
    - pointing_up: only the index extended (thumb either way), and it points up in the image;
    - open_palm: the four fingers extended and the thumb not folded into the palm (it may lie
      alongside it);
    - closed_fist: the four fingers curled and the thumb tucked in: its tip at most about 0.3 hand
      sizes outside the box of the other landmarks in the image (`thumb_protrusion`; the world-space
      thumb cue misreads a thumb pressed against the side of a fist, the image does not);
    - none: anything else (an OK sign, three fingers, a half-closed hand, an index or a thumb pointing
      sideways).
    A finger matches its pattern when its extension is on the right side of 0.5. The score is the
    mean agreement of the fingers the pattern names (times the direction cue where there is one); for
    `none` it is 1 minus how close the nearest pattern came. `handedness` is accepted for rules that
    depend on the side; none of the current ones do, because they rely on 3-D geometry only."""
    del handedness  # the rules are symmetric in left and right hands
    ext = finger_extension(world_landmarks)
    values = [ext[name] for name in _ORDER]
    image = _image_points(landmarks, aspect_ratio)
    size = _image_hand_size(image)
    up, down = _thumb_direction(image, size)
    cues = {
        "thumb_up": up,
        "thumb_down": down,
        "pointing_up": _index_up(image),
        "closed_fist": 1.0 - _ramp(_thumb_protrusion(image, size), 0.2, 0.45),
    }
    nearest = 0.0
    for label, pattern in _PATTERNS.items():
        agreement = [_agreement(v, want) for v, want in zip(values, pattern, strict=True) if want is not None]
        required = list(agreement)
        if label in ("thumb_up", "thumb_down"):
            # ring and little finger (the last two entries): the better of the two must agree
            required = [*agreement[:-2], max(agreement[-2:])]
        cue = cues.get(label, 1.0)
        fit = min([*required, cue])
        if fit >= 0.5:
            return label, round(sum(agreement) / len(agreement) * cue, 3)
        nearest = max(nearest, fit)
    return "none", round(1.0 - nearest, 3)
