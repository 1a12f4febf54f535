"""Naive Bag-of-Tricks random erasing, written from the description in reid-strong-baseline's
data/transforms (dino-tao-bot.md §3.3): one draw, up to 100 attempts, area U(sl, sh) * H * W,
aspect U(r1, 1/r1), box h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)), accepted
when w < W and h < H, top-left uniform, filled channel by channel with the mean values."""

import math
import random


def bot_random_erasing(img, p=0.5, sl=0.02, sh=0.4, r1=0.3, mean=(0.485, 0.456, 0.406)):
    """img: (C, H, W) tensor, modified in place pixel by pixel."""
    if random.uniform(0, 1) >= p:
        return img
    channels, height, width = img.shape
    for _attempt in range(100):
        area = height * width
        target_area = random.uniform(sl, sh) * area
        aspect_ratio = random.uniform(r1, 1 / r1)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < width and h < height:
            x1 = random.randint(0, height - h)
            y1 = random.randint(0, width - w)
            for c in range(channels):
                for i in range(x1, x1 + h):
                    for j in range(y1, y1 + w):
                        img[c, i, j] = mean[c]
            return img
    return img
