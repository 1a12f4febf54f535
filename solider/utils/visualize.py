"""Small image helpers for TensorBoard: crops with their part-label overlay and its legend, captioned
image grids (a P x K batch with its identities)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# background transparent; parts red, green, blue, yellow, magenta
PART_COLOURS = torch.tensor([[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 110, 240], [240, 220, 40],
                             [220, 60, 220]], dtype=torch.float32) / 255


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 3, H, W) normalised -> [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


def part_overlay_grid(images: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                      mean: Sequence[float], std: Sequence[float], alpha: float = 0.45,
                      max_images: int = 8, num_parts: int | None = None) -> torch.Tensor:
    """A (3, H, W*2n) strip: each crop, then the crop with its part labels blended in; with
    ``num_parts``, a colour legend below it (3, H + legend, W*2n).

    Unlabelled crops get no overlay. Args: images (N, 3, H, W) normalised; labels (N, h, w);
    valid (N,) bool.
    """
    n = min(max_images, images.shape[0])
    rgb = denormalize(images[:n].detach().float().cpu(), mean, std)
    lab = F.interpolate(labels[:n, None].float().cpu(), size=rgb.shape[-2:], mode="nearest")[:, 0].long()
    colours = PART_COLOURS[lab.clamp(max=len(PART_COLOURS) - 1)].permute(0, 3, 1, 2)
    on = ((lab > 0) & valid[:n, None, None].cpu())[:, None].float() * alpha
    blended = rgb * (1 - on) + colours * on
    pairs = torch.stack([rgb, blended], dim=1).flatten(0, 1)  # (2n, 3, H, W)
    strip = torch.cat(list(pairs), dim=2)
    if num_parts is None:
        return strip
    return torch.cat([strip, part_legend(strip.shape[2], num_parts)], dim=1)


# Part names by number of parts (solider.keypoint_part_labels; clusters are sorted top to bottom too).
PART_NAMES = {3: ("upper body", "lower body", "feet"), 4: ("head", "torso+arms", "legs", "feet"),
              5: ("head", "torso+arms", "thighs", "shins", "feet")}


def _text_strip(width: int, entries: Sequence[tuple[str, Sequence[float] | None]], height: int = 14
                ) -> torch.Tensor:
    """A (3, h, width) white strip of ``[colour box] text`` entries, wrapped onto more rows as needed."""
    from PIL import Image, ImageDraw

    font_w, pad = 6, 6  # PIL's default bitmap font: about 6 pixels a character
    rows, row, x = [], [], 0
    for text, colour in entries:
        w = (height if colour is not None else 0) + font_w * len(text) + pad
        if row and x + w > width:
            rows.append(row)
            row, x = [], 0
        row.append((text, colour))
        x += w
    rows.append(row)
    img = Image.new("RGB", (width, height * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        x, y = 2, r * height
        for text, colour in row:
            if colour is not None:
                draw.rectangle([x, y + 2, x + height - 5, y + height - 3],
                               fill=tuple(int(255 * c) for c in colour))
                x += height - 2
            draw.text((x, y + 1), text, fill=(0, 0, 0))
            x += font_w * len(text) + pad
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def part_legend(width: int, num_parts: int) -> torch.Tensor:
    """A colour legend for :func:`part_overlay_grid`: each part's colour and name."""
    names = PART_NAMES.get(num_parts, tuple(f"part {i}" for i in range(1, num_parts + 1)))
    entries = [(f"{i} {name}", PART_COLOURS[min(i, len(PART_COLOURS) - 1)].tolist())
               for i, name in enumerate(names, start=1)]
    return _text_strip(width, [*entries, ("left: crop, right: labels; none = unlabelled", None)])


def labelled_grid(images: torch.Tensor, labels: Sequence[str], mean: Sequence[float], std: Sequence[float],
                  columns: int, title: str | None = None) -> torch.Tensor:
    """(3, H', W') grid of normalised (N, 3, H, W) images, ``columns`` a row, each captioned.

    For a P x K batch, ``columns = K`` puts one identity on each row.
    """
    rgb = denormalize(images.detach().float().cpu(), mean, std)
    n, _, h, w = rgb.shape
    rows = []
    for start in range(0, n, columns):
        cells = []
        for i in range(start, start + columns):
            caption = _text_strip(w, [(labels[i], None)]) if i < n else torch.ones(3, 14, w)
            image = rgb[i] if i < n else torch.ones(3, h, w)
            cells.append(torch.cat([caption, image], dim=1))
        rows.append(torch.cat(cells, dim=2))
    grid = torch.cat(rows, dim=1)
    return torch.cat([_text_strip(grid.shape[2], [(title, None)]), grid], dim=1) if title else grid


FRAME = {"query": (60, 110, 240), "match": (40, 170, 60), "other": (220, 50, 50)}


def ranked_grid(rows: Sequence[tuple[str, Sequence[tuple[str, bool, str]]]], title: str,
                thumb: tuple[int, int] = (48, 96), border: int = 3) -> torch.Tensor:
    """(3, H, W) ranked lists without matplotlib: per row the query (blue frame) then its ranked
    gallery images, same identity framed green, others red; each cell captioned, a title on top.

    Args:
        rows: ``(query image path, [(gallery image path, same identity, caption), ...])`` per query.
        thumb: (width, height) of every image.
    """
    from PIL import Image, ImageOps

    w, h = thumb
    columns = 1 + max((len(ranked) for _, ranked in rows), default=0)

    def cell(path: str, frame: tuple[int, int, int], caption: str) -> torch.Tensor:
        with Image.open(path) as img:
            framed = ImageOps.expand(img.convert("RGB").resize((w - 2 * border, h - 2 * border)),
                                     border=border, fill=frame)
        image = torch.from_numpy(np.asarray(framed).copy()).permute(2, 0, 1).float() / 255
        return torch.cat([_text_strip(w, [(caption, None)]), image], dim=1)

    lines = []
    for query, ranked in rows:
        cells = [cell(query, FRAME["query"], "query")]
        cells += [cell(p, FRAME["match" if same else "other"], c) for p, same, c in ranked]
        cells += [torch.ones_like(cells[0])] * (columns - len(cells))
        lines.append(torch.cat(cells, dim=2))
    grid = torch.cat(lines, dim=1)
    return torch.cat([_text_strip(grid.shape[2], [(title, None)]), grid], dim=1)
