"""numba kernels: arrays in, arrays out. This package never imports torch."""

from numba_kernels.pusht_geometry import tee_coverage
from numba_kernels.pusht_raster import render_pusht

__all__ = ["render_pusht", "tee_coverage"]
