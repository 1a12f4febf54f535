"""TensorBoard images: the part overlay carries a colour legend; the batch grid captions each image."""

import torch

from solider.utils.visualize import PART_COLOURS, labelled_grid, part_overlay_grid


def _has_colour(image: torch.Tensor, colour: torch.Tensor) -> bool:
    return bool(((image - colour.view(3, 1, 1)).abs().amax(dim=0) < 1e-6).any())


def test_part_overlay_has_a_legend_with_every_part_colour():
    images = torch.zeros(2, 3, 32, 16)
    labels = torch.zeros(2, 4, 2, dtype=torch.long)
    plain = part_overlay_grid(images, labels, torch.tensor([True, False]), (0.5,) * 3, (0.5,) * 3)
    with_legend = part_overlay_grid(images, labels, torch.tensor([True, False]), (0.5,) * 3, (0.5,) * 3,
                                    num_parts=3)
    assert plain.shape == (3, 32, 64) and with_legend.shape[1] > 32 and with_legend.shape[2] == 64
    torch.testing.assert_close(with_legend[:, :32], plain)
    legend = with_legend[:, 32:]
    for part in (1, 2, 3):  # each colour box of the legend is drawn in the overlay's exact colour
        assert _has_colour(legend, (PART_COLOURS[part] * 255).round() / 255), part


def test_labelled_grid_puts_one_identity_per_row():
    images = torch.zeros(6, 3, 16, 8)
    grid = labelled_grid(images, [f"id {i // 2}" for i in range(6)], (0.5,) * 3, (0.5,) * 3, columns=2)
    assert grid.shape[0] == 3 and grid.shape[2] == 2 * 8 and grid.shape[1] == 3 * (16 + 14)
    assert grid[:, 14:30].allclose(torch.full((3, 16, 16), 0.5))  # the first row's images under a caption


def test_ranked_grid_frames_query_matches_and_others(tmp_path):
    from PIL import Image

    from solider.utils.visualize import FRAME, ranked_grid

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 16), (128, 128, 128)).save(path)
    grid = ranked_grid([(str(path), [(str(path), True, "#1"), (str(path), False, "#2")])], "title",
                       thumb=(20, 40))
    assert grid.shape == (3, 14 + 14 + 40, 3 * 20)
    corner = [tuple(round(float(v) * 255) for v in grid[:, 14 + 14, 20 * i]) for i in range(3)]
    assert corner == [FRAME["query"], FRAME["match"], FRAME["other"]]
