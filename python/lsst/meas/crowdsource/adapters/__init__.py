"""Thin adapters between the pure-numpy engine and the Rubin image types.

`lsst.meas.crowdsource.adapters.afw` reads an `lsst.afw.image.Exposure`
and writes an `lsst.afw.table.SourceCatalog`;
`lsst.meas.crowdsource.adapters.images` reads an `lsst.images.VisitImage`
(or any `lsst.images.MaskedImage`).  Both turn their input into an
`~lsst.meas.crowdsource.inputs.ExposureInputs` and import their Rubin
packages only inside functions, so importing this package never needs
``lsst.afw`` or ``lsst.images``.
"""
