"""Getting images in and out: everything between the Rubin (or astropy) types and the engine.

- `.inputs`: `ExposureInputs`, the one input object every adapter builds
  (image, variance, boolean mask planes, xy0, PSF, WCS, calibration, unit);
- `.exposure`: `exposure_inputs`, the dispatch from any supported type (and
  the background added back), the one way in for both tasks;
- `.afw`, `.images`, `.ccddata`: the adapters for ``lsst.afw.image.Exposure``,
  ``lsst.images.VisitImage`` and `astropy.nddata.CCDData` (each imports its
  own package lazily, none is imported back by `.inputs` or `.exposure`);
  `.ccddata` also holds the CCDData conventions of the astropy path;
- `.planes`, `.psf`: the mask-plane table (afw names and bits, the
  lsst.images renames, integer masks as boolean planes) and the PSF-stamp
  check, shared by the adapters;
- `.calexp_fits`: CCDData read from and written to the afw calexp FITS
  layout;
- `.formatters`, `.butler`: the butler storage-class formatter for CCDData
  and the repository helpers;
- `.outputs`: task outputs in the configured storage classes.

Imports go one way: `.exposure` -> adapters -> `.inputs`, `.planes`,
`.psf`; `.calexp_fits` -> `.ccddata`; `.formatters` -> `.calexp_fits`.
"""
