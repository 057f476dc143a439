"""Getting images in and out: everything between the Rubin (or astropy) types and the engine.

- `.inputs`: `ExposureInputs`, the one input object every adapter builds;
- `.exposure`: `exposure_inputs`, the dispatch from any supported type;
- `.afw`, `.images`, `.ccddata`: the adapters for ``lsst.afw.image.Exposure``,
  ``lsst.images.VisitImage`` and `astropy.nddata.CCDData` (each imports its
  own package lazily, none is imported back by `.inputs`);
- `.ccddata` also reads and writes CCDData in the afw calexp FITS layout;
- `.formatters`, `.butler`: the butler storage-class formatter for CCDData
  and the repository helpers;
- `.outputs`: task outputs in the configured storage classes.
"""
