"""Drawing one cartoon face at any size with PIL, its cues a small CNN learns in a few epochs.

* mask: a mask polygon over nose, mouth and chin (worn), pulled under the nose or onto the
  chin (incorrect), or absent (normal);
* gender: long hair that hangs past the ears to the shoulders (female) or a short cap (male);
* age: dark hair (< 30), salted grey hair with forehead wrinkles (30-59), white hair with
  more wrinkles (>= 60).

Every random choice comes from the generator the caller passes, in a fixed order, so the same
generator state gives the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Face", "face_params", "render"]

# Mask fabrics: light blue, white, black, grey (surgical and cloth masks).
_MASK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (160, 200, 230),
    (242, 242, 240),
    (35, 35, 38),
    (140, 142, 146),
)
_YOUNG_HAIR: tuple[tuple[int, int, int], ...] = (
    (22, 20, 20),
    (45, 32, 24),
    (70, 48, 30),
    (95, 58, 35),
)


def _clip_rgb(c: Sequence[float]) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(v)))) for v in c)  # type: ignore[return-value]


def _shade(c: Sequence[float], f: float) -> tuple[int, int, int]:
    return _clip_rgb([v * f for v in c])


def _ellipse_points(
    cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24
) -> list[tuple[float, float]]:
    # Angles are in image coordinates: 0 = right, pi/2 = down.
    return [
        (cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(a0, a1, n).tolist()
    ]


@dataclass(frozen=True)
class Face:
    """One person's appearance; per-image jitter is applied on top when drawing."""

    gender: int
    age_bin: int
    background: tuple[int, int, int]
    background2: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    clothes: tuple[int, int, int]
    cx: float  # fractions of width / height
    cy: float
    scale: float
    hairline: float  # fraction of ry above the head centre
    hair_length: float  # female: fraction of ry below the centre where the hair ends
    hair_width: float
    eye_colour: tuple[int, int, int]
    lip: tuple[int, int, int]
    incorrect_kind: int  # 0 mask under the nose, 1 mask on the chin


def face_params(rng: np.random.Generator, gender: int, age_bin: int) -> Face:
    """Draw one person's appearance.

    Args:
        rng: the person's generator.
        gender: 0 male (short hair), 1 female (long hair).
        age_bin: 0 young (dark hair), 1 middle (salt and pepper), 2 old (white hair).

    Returns:
        The person's :class:`Face`.
    """
    bg = rng.integers(40, 235, size=3).astype(float)
    bg2 = bg * rng.uniform(0.75, 1.1)
    t = rng.uniform(0.0, 1.0)
    light, dark = np.array([238, 204, 178]), np.array([120, 82, 58])
    skin = light * (1 - t) + dark * t + rng.normal(0, 6, size=3)
    if age_bin == 0:
        hair = np.array(_YOUNG_HAIR[int(rng.integers(len(_YOUNG_HAIR)))], float)
        hair = hair * rng.uniform(0.8, 1.2)
    elif age_bin == 1:
        # The salt is added as speckles when drawing; this is the pepper colour.
        hair = np.full(3, rng.uniform(95, 125)) + rng.normal(0, 5, size=3)
    else:
        hair = np.full(3, rng.uniform(215, 240)) + rng.normal(0, 4, size=3)
    return Face(
        gender=gender,
        age_bin=age_bin,
        background=_clip_rgb(bg),
        background2=_clip_rgb(bg2),
        skin=_clip_rgb(skin),
        hair=_clip_rgb(hair),
        clothes=_clip_rgb(rng.integers(20, 235, size=3)),
        cx=0.5 + rng.uniform(-0.03, 0.03),
        cy=0.45 + rng.uniform(-0.03, 0.03),
        scale=1.0 + rng.uniform(-0.05, 0.05),
        hairline=rng.uniform(0.5, 0.62),
        hair_length=rng.uniform(1.35, 1.8),
        hair_width=rng.uniform(1.2, 1.38),
        eye_colour=_clip_rgb(rng.integers(20, 90, size=3)),
        lip=_clip_rgb((rng.uniform(150, 200), rng.uniform(60, 100), rng.uniform(60, 100))),
        incorrect_kind=int(rng.integers(2)),
    )


class _Frame(NamedTuple):
    """Where the head is in one image: centre, radii and the stroke width, in pixels."""

    cx: float
    cy: float
    rx: float
    ry: float
    lw: int


def render(
    face: Face,
    mask: int,
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
) -> Image.Image:
    """Draw one image of ``face`` with the given mask state.

    Args:
        face: the person (from :func:`face_params`).
        mask: 0 worn, 1 worn incorrectly, 2 none.
        rng: the person's generator; the image's jitter, textures and noise come from it.
        height, width: the image size in pixels.

    Returns:
        An RGB image.
    """
    h, w = height, width
    lw = max(1, round(w / 120))  # stroke width that stays visible from 96 to 384 px wide
    cx = w * (face.cx + rng.uniform(-0.012, 0.012))
    cy = h * (face.cy + rng.uniform(-0.012, 0.012))
    s = face.scale * (1.0 + rng.uniform(-0.02, 0.02))
    g = _Frame(cx, cy, 0.26 * w * s, 0.235 * h * s, lw)
    img = _background(face, h, w)
    d = ImageDraw.Draw(img)
    hair_mask = Image.new("L", (w, h), 0)
    hd = ImageDraw.Draw(hair_mask)
    _draw_body(d, hd, face, g, h)
    if face.gender == 1:
        _composite_hair(img, hair_mask, face, rng)
        hair_mask.paste(0, (0, 0, w, h))
    d.ellipse([cx - g.rx, cy - g.ry, cx + g.rx, cy + g.ry], fill=face.skin)
    hd.polygon(_scalp(face, g), fill=255)
    _draw_features(d, face, g)
    _draw_wrinkles(d, face, g)
    _composite_hair(img, hair_mask, face, rng)
    if mask != 2:
        _draw_mask(img, mask=mask, face=face, rng=rng, cx=cx, cy=cy, rx=g.rx, ry=g.ry, lw=lw)
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-6, 7, size=arr.shape, dtype=np.int16)
    gain = rng.uniform(0.94, 1.06)
    out = np.clip(arr * gain + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


def _background(face: Face, h: int, w: int) -> Image.Image:
    # A vertical two-tone gradient, so the background is not a flat colour.
    grad = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    bg = (
        np.asarray(face.background, np.float32) * (1 - grad)
        + np.asarray(face.background2, np.float32) * grad
    )
    return Image.fromarray(np.broadcast_to(bg, (h, w, 3)).astype(np.uint8), "RGB")


def _draw_body(
    d: ImageDraw.ImageDraw, hd: ImageDraw.ImageDraw, face: Face, g: _Frame, h: int
) -> None:
    """Shoulders and neck; the long hair panel (into the hair mask) or the ears."""
    cx, cy, rx, ry = g.cx, g.cy, g.rx, g.ry
    d.polygon(
        [
            (cx - 1.9 * rx, h + 2),
            (cx - 1.5 * rx, cy + 1.55 * ry),
            (cx + 1.5 * rx, cy + 1.55 * ry),
            (cx + 1.9 * rx, h + 2),
        ],
        fill=face.clothes,
    )
    neck = [cx - 0.42 * rx, cy + 0.6 * ry, cx + 0.42 * rx, cy + 1.6 * ry]
    d.rectangle(neck, fill=_shade(face.skin, 0.82))
    if face.gender == 1:
        # Long hair: a panel behind the head that falls past the ears onto the shoulders.
        hw = face.hair_width * rx
        hd.rounded_rectangle(
            [cx - hw, cy - 1.12 * ry, cx + hw, cy + face.hair_length * ry],
            radius=max(1, int(0.6 * rx)),
            fill=255,
        )
    else:
        # Ears only show on short-haired heads.
        for side in (-1, 1):
            ex = cx + side * 0.98 * rx
            d.ellipse(
                [ex - 0.14 * rx, cy - 0.16 * ry, ex + 0.14 * rx, cy + 0.12 * ry], fill=face.skin
            )


def _scalp(face: Face, g: _Frame) -> list[tuple[float, float]]:
    """The hair above the hairline; female hair also frames the face down the cheeks."""
    cx, cy, rx, ry = g.cx, g.cy, g.rx, g.ry
    top = cy - face.hairline * ry
    cap = _ellipse_points(cx, cy, rx * 1.07, ry * 1.08, math.pi * 1.0, math.pi * 2.0)
    cap = [(x, min(y, top + 0.1 * ry)) for x, y in cap]
    if face.gender == 1:
        return (
            [(cx - 1.05 * rx, cy + 0.35 * ry), (cx - 1.12 * rx, cy - 0.2 * ry)]
            + cap
            + [(cx + 1.12 * rx, cy - 0.2 * ry), (cx + 1.05 * rx, cy + 0.35 * ry)]
            + [(cx + 0.82 * rx, cy + 0.3 * ry), (cx + 0.78 * rx, top)]
            + [(cx, top - 0.08 * ry)]
            + [(cx - 0.78 * rx, top), (cx - 0.82 * rx, cy + 0.3 * ry)]
        )
    return cap + [(cx + 0.85 * rx, top), (cx, top - 0.05 * ry), (cx - 0.85 * rx, top)]


def _draw_features(d: ImageDraw.ImageDraw, face: Face, g: _Frame) -> None:
    """Eyes, brows, nose and mouth."""
    cx, cy, rx, ry, lw = g
    ey = cy - 0.05 * ry
    for side in (-1, 1):
        ex = cx + side * 0.38 * rx
        d.ellipse(
            [ex - 0.15 * rx, ey - 0.07 * ry, ex + 0.15 * rx, ey + 0.07 * ry], fill=(245,) * 3
        )
        d.ellipse(
            [ex - 0.07 * rx, ey - 0.065 * ry, ex + 0.07 * rx, ey + 0.065 * ry],
            fill=face.eye_colour,
        )
        by = cy - 0.2 * ry
        d.line([(ex - 0.18 * rx, by + 0.02 * ry), (ex + 0.18 * rx, by)], fill=face.hair, width=lw)
    nose_bottom = cy + 0.3 * ry
    d.polygon(
        [(cx, cy - 0.02 * ry), (cx - 0.13 * rx, nose_bottom), (cx + 0.13 * rx, nose_bottom)],
        fill=_shade(face.skin, 0.72),
    )
    my = cy + 0.55 * ry
    d.ellipse([cx - 0.28 * rx, my - 0.07 * ry, cx + 0.28 * rx, my + 0.07 * ry], fill=face.lip)
    d.line([(cx - 0.26 * rx, my), (cx + 0.26 * rx, my)], fill=_shade(face.lip, 0.5), width=lw)


def _draw_wrinkles(d: ImageDraw.ImageDraw, face: Face, g: _Frame) -> None:
    """Two forehead lines from 30; four, crow's feet and smile lines from 60."""
    cx, cy, rx, ry, lw = g
    wr = _shade(face.skin, 0.55)
    for k in range((0, 2, 4)[face.age_bin]):
        wy = cy - (0.3 + 0.07 * k) * ry
        d.line(
            [(cx - 0.45 * rx, wy), (cx, wy - 0.02 * ry), (cx + 0.45 * rx, wy)],
            fill=wr,
            width=lw,
        )
    if face.age_bin != 2:
        return
    ey = cy - 0.05 * ry
    for side in (-1, 1):
        x0 = cx + side * 0.58 * rx
        for dy in (-0.05, 0.03):
            d.line([(x0, ey), (x0 + side * 0.16 * rx, ey + dy * ry)], fill=wr, width=lw)
        d.line(
            [(cx + side * 0.2 * rx, cy + 0.28 * ry), (cx + side * 0.36 * rx, cy + 0.6 * ry)],
            fill=wr,
            width=lw,
        )


def _composite_hair(
    img: Image.Image, hair_mask: Image.Image, face: Face, rng: np.random.Generator
) -> None:
    """Fill the shape drawn in ``hair_mask`` with the person's hair texture."""
    box = hair_mask.getbbox()
    if box is None:
        return
    # Texture only the hair's bounding box; a full-frame texture doubles the drawing time.
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    tex = np.empty((h, w, 3), np.float32)
    tex[...] = np.asarray(face.hair, np.float32)
    # Strand-like streaks: column-wise brightness variation.
    tex *= (1.0 + rng.normal(0, 0.06, size=(1, w, 1))).astype(np.float32)
    if face.age_bin == 1:
        # Salt and pepper: a large share of light grey flecks on the darker base. The flecks
        # scale with the image so the texture survives a CNN's downsampling at any size.
        k = max(1, round(img.width / 64))
        small = rng.random((-(-h // k), -(-w // k))) < 0.45
        salt = np.repeat(np.repeat(small, k, axis=0), k, axis=1)[:h, :w]
        tex[salt] = rng.uniform(195, 225)
    patch = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8), "RGB")
    img.paste(patch, (x0, y0), hair_mask.crop(box))


def _draw_mask(
    img: Image.Image,
    *,
    mask: int,
    face: Face,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    lw: int,
) -> None:
    """Draw a face mask: worn over the nose (mask 0) or pulled down (mask 1)."""
    d = ImageDraw.Draw(img)
    colour = np.asarray(_MASK_COLOURS[int(rng.integers(len(_MASK_COLOURS)))], float)
    colour = _clip_rgb(colour * rng.uniform(0.92, 1.06))
    if mask == 0:
        top = 0.04 + rng.uniform(-0.03, 0.03)  # just below the eyes, over the nose bridge
    elif face.incorrect_kind == 0:
        top = 0.36 + rng.uniform(-0.02, 0.02)  # under the nose: nostrils visible
    else:
        top = 0.7 + rng.uniform(-0.02, 0.02)  # on the chin: mouth visible
    top_y = cy + top * ry
    side_y = top_y + 0.08 * ry
    # Lower edge follows the jaw slightly outside the head ellipse.
    sin_a = max(-1.0, min(1.0, (side_y - cy) / (1.04 * ry)))
    a = math.asin(sin_a)
    jaw = _ellipse_points(cx, cy + 0.02 * ry, 1.04 * rx, 1.04 * ry, a, math.pi - a)
    poly = jaw + [(cx, top_y)]
    d.polygon(poly, fill=colour, outline=_shade(colour, 0.75) if colour[0] > 60 else (80,) * 3)
    # Pleats and straps add texture the classifier can use beyond flat colour.
    pleat = _shade(colour, 0.8) if colour[0] > 60 else (70,) * 3
    x_left, x_right = jaw[-1][0], jaw[0][0]
    for k in (1, 2, 3):
        py = top_y + k * 0.12 * ry
        if py > cy + 0.95 * ry:
            break
        d.line([(x_left + 0.15 * rx, py), (x_right - 0.15 * rx, py)], fill=pleat, width=lw)
    # Ear loops run up the cheeks; a pulled-down mask keeps them, which separates it from no mask.
    strap = (235, 235, 235) if colour[0] < 60 else _shade(colour, 0.6)
    sw = max(1, round(img.width / 64))
    for x_end, side in ((x_left, -1), (x_right, 1)):
        d.line([(x_end, side_y), (cx + side * 1.02 * rx, cy - 0.02 * ry)], fill=strap, width=sw)
