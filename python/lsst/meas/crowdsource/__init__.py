"""Crowded-field photometry for the Rubin Observatory LSST Science Pipelines.

The fit itself lives in `lsst.meas.crowdsource.engine` (numpy/scipy only);
this package wraps it as `~lsst.pipe.base.PipelineTask` subclasses:

- `CrowdsourcePhotometryTask`: find and measure every star (in place of
  detection, deblending and measurement);
- `CrowdsourceForcedPhotometryTask`: fluxes at given positions, fit
  together with every other star in the image;
- `CrowdsourceInjectionTask`: artificial-star tests (completeness, flux
  bias and errors of the catalogue of an exposure).
"""

from .forced import (
    CrowdsourceForcedPhotometryConfig,
    CrowdsourceForcedPhotometryConnections,
    CrowdsourceForcedPhotometryTask,
)
from .injection import (
    CrowdsourceInjectionConfig,
    CrowdsourceInjectionConnections,
    CrowdsourceInjectionTask,
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
    "CrowdsourceInjectionConfig",
    "CrowdsourceInjectionConnections",
    "CrowdsourceInjectionTask",
    "CrowdsourcePhotometryConfig",
    "CrowdsourcePhotometryConnections",
    "CrowdsourcePhotometryTask",
]
