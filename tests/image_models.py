"""A procedural text-to-image model for the tests: it draws the shapes and colours named in
the prompt ("a red circle above a blue square on green grass") and nothing else.

Known words: colours (COLOURS), shapes (circle, square, triangle) and the grounds "grass"
(the bottom third) and "sky" (the top third); a colour word paints the next shape or ground.
Every other word ("a", "above", "stone", "bridge") changes nothing, by construction. The
seed adds the same noise to every prompt's image (a stand-in for a diffusion model's
starting noise), so two prompts drawn with one seed differ by their words alone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (40, 170, 60), "yellow": (240, 210, 40),
           "white": (250, 250, 250), "black": (10, 10, 10), "orange": (250, 140, 20)}
SHAPES = ("circle", "square", "triangle")
GROUNDS = {"grass": (80, 140, 60), "sky": (150, 200, 250)}
SIZE = 64


def draw(prompt: str, seed: int = 0, size: int = SIZE) -> Image.Image:
    words = [w.strip(".,;:!?()").lower() for w in prompt.split()]
    image = Image.new("RGB", (size, size), (128, 128, 128))
    pen = ImageDraw.Draw(image)
    colour, slot = None, 0
    for word in words:
        if word in COLOURS:
            colour = COLOURS[word]
        elif word in GROUNDS:
            box = (0, 2 * size // 3, size, size) if word == "grass" else (0, 0, size, size // 3)
            pen.rectangle(box, fill=colour or GROUNDS[word])
            colour = None
        elif word in SHAPES:
            x0, y0 = size // 4 + (slot % 2) * size // 4 - size // 8, size // 8 + (slot // 2 % 2) * size // 4 + (slot % 2) * size // 4
            box = (x0, y0, x0 + size // 3, y0 + size // 3)
            fill = colour or (60, 60, 60)
            if word == "circle":
                pen.ellipse(box, fill=fill)
            elif word == "square":
                pen.rectangle(box, fill=fill)
            else:
                pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
            colour, slot = None, slot + 1
    noise = np.random.default_rng(seed).integers(-12, 13, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def shapes(prompts: list[str], seed: int = 0) -> list[Image.Image]:
    """The procedural model, seeded: ``f(prompts, seed) -> images``."""
    return [draw(p, seed) for p in prompts]


def shapes_unseeded(prompts: list[str]) -> list[Image.Image]:
    """The procedural model with the seed fixed at 0: ``f(prompts) -> images``."""
    return [draw(p, 0) for p in prompts]
