"""Crowded-field photometry for the Rubin Observatory LSST Science Pipelines.

The fit itself lives in `lsst.meas.crowdsource.engine` (numpy/scipy only);
this package wraps it as `~lsst.pipe.base.PipelineTask` subclasses:

- `CrowdsourcePhotometryTask`: find and measure every star (in place of
  detection, deblending and measurement);
- `CrowdsourceForcedPhotometryTask`: fluxes at given positions, fit
  together with every other star in the image.
"""

from .forced import (
    CrowdsourceForcedPhotometryConfig,
    CrowdsourceForcedPhotometryConnections,
    CrowdsourceForcedPhotometryTask,
)
from .photometry import (
    CrowdsourcePhotometryConfig,
    CrowdsourcePhotometryConnections,
    CrowdsourcePhotometryTask,
)

__all__ = [
    "CrowdsourceForcedPhotometryConfig",
    "CrowdsourceForcedPhotometryConnections",
    "CrowdsourceForcedPhotometryTask",
    "CrowdsourcePhotometryConfig",
    "CrowdsourcePhotometryConnections",
    "CrowdsourcePhotometryTask",
]
