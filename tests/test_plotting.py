"""Figures: what a reader sees of them."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from brain_vqvae import plotting

LONG_TITLE = (
    "runs/demo3-card-with-a-long-name: 16 PixelCNN samples, slice_position 0.55, guidance 2, "
    "temperature 1, top-k all, top-p 1, seed 0"
)


def title_extent(figure):
    FigureCanvasAgg(figure).draw()
    return figure.get_suptitle(), figure._suptitle.get_window_extent(), figure.bbox


@pytest.mark.parametrize("count", [1, 4, 16])
def test_a_long_title_of_a_sample_grid_stays_inside_the_figure(count):
    slices = np.zeros((count, 16, 16), dtype=np.uint8)
    text, extent, page = title_extent(plotting.plot_sample_grid(slices, LONG_TITLE))
    assert text.replace("\n", " ") == LONG_TITLE  # wrapped, every word kept
    assert extent.x0 >= 0 and extent.x1 <= page.width
    assert extent.y0 >= 0 and extent.y1 <= page.height


def test_a_long_title_of_a_volume_stays_inside_the_figure():
    volume = np.zeros((4, 16, 16), dtype=np.uint8)
    text, extent, page = title_extent(plotting.plot_volume(volume, (1.7, 3.7), LONG_TITLE))
    assert text.replace("\n", " ") == LONG_TITLE
    assert extent.x0 >= 0 and extent.x1 <= page.width
