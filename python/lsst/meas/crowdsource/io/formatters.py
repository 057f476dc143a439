"""Butler formatter and storage-class delegate for the astropy exposure path.

`CCDDataCalexpFormatter` stores an `astropy.nddata.CCDData` as a FITS file
in the afw calexp layout (see `lsst.meas.crowdsource.io.calexp_fits`), so a
dataset written with the ``CrowdsourceCCDData`` storage class can also be
opened with ``lsst.afw.image.ExposureF`` and vice versa.  The storage class
and the formatter mapping are declared in the package's
``config/butler/seed.yaml``; `lsst.meas.crowdsource.io.butler.make_repo`
creates a repository with them.

The storage class offers read-only components: ``image``, ``mask`` and
``variance`` (`numpy.ndarray`, each read from its own HDU only), ``psf``
(`numpy.ndarray` or `None`), ``wcs`` (`astropy.wcs.WCS` or `None`) and
``metadata`` (`dict`, the ``meta`` of the CCDData).
"""

from __future__ import annotations

__all__ = ["CCDDataCalexpFormatter", "CCDDataDelegate"]

from typing import Any

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData

from lsst.daf.butler import FormatterV2, StorageClassDelegate
from lsst.resources import ResourcePath

from .calexp_fits import PSF_EXTNAME, from_hdulist, write_calexp_fits
from .ccddata import get_bit_mask, variance_from_uncertainty

# Components that live in one HDU each and can be read without the rest.
_HDU_COMPONENTS = {
    "image": ("IMAGE", np.float32),
    "mask": ("MASK", np.int32),
    "variance": ("VARIANCE", np.float32),
}


class CCDDataDelegate(StorageClassDelegate):
    """Storage-class delegate extracting components from a CCDData.

    Used by the butler when a component is requested from an in-memory
    dataset (or when the formatter hands back the whole exposure).
    """

    def getComponent(self, composite: Any, componentName: str) -> Any:
        """Return one component of a CCDData.

        Parameters
        ----------
        composite : `astropy.nddata.CCDData`
            The exposure.
        componentName : `str`
            One of ``image``, ``mask``, ``variance``, ``psf``, ``wcs``,
            ``metadata``.

        Returns
        -------
        component : `object`
            The requested component.

        Raises
        ------
        AttributeError
            Raised for an unknown component name.
        """
        if componentName == "image":
            return np.asarray(composite.data)
        if componentName == "mask":
            return get_bit_mask(composite)
        if componentName == "variance":
            if composite.uncertainty is None:
                return None
            return variance_from_uncertainty(composite.uncertainty)
        if componentName == "psf":
            return getattr(composite, "psf", None)
        if componentName == "wcs":
            return composite.wcs
        if componentName == "metadata":
            return dict(composite.meta)
        raise AttributeError(f"Unknown component {componentName!r} of {self.storageClass.name}")


class CCDDataCalexpFormatter(FormatterV2):
    """Read and write `astropy.nddata.CCDData` in the afw calexp FITS layout.

    Writes go through `lsst.meas.crowdsource.io.calexp_fits.write_calexp_fits`
    (the butler itself writes to a temporary file and moves it into place).
    Reads use `~lsst.meas.crowdsource.io.calexp_fits.from_hdulist`, so calexps
    written by ``lsst.afw`` (``ExposureF``) can be read too.
    """

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fits.gz", ".fits.fz", ".fit"})
    unsupported_parameters = None  # no read parameters (e.g. bbox) yet
    can_read_from_local_file = True

    def read_from_local_file(
        self, path: str, component: str | None = None, expected_size: int = -1
    ) -> Any:
        # Docstring inherited.
        if component in _HDU_COMPONENTS:
            extname, dtype = _HDU_COMPONENTS[component]
            with fits.open(path, memmap=True) as hdul:
                try:
                    data = hdul[extname].data
                except KeyError:
                    raise ValueError(f"{path}: no HDU with EXTNAME {extname!r}") from None
                return np.array(data, dtype=dtype, copy=True)
        if component == "psf":
            with fits.open(path, memmap=True) as hdul:
                if PSF_EXTNAME not in [hdu.name for hdu in hdul]:
                    return None
                return np.array(hdul[PSF_EXTNAME].data, dtype=np.float64, copy=True)

        with fits.open(path, memmap=False) as hdul:
            ccd = from_hdulist(hdul, source=path)
        if component is None:
            pytype = self.file_descriptor.storageClass.pytype
            if not (isinstance(pytype, type) and issubclass(pytype, CCDData)):
                raise TypeError(f"{type(self).__name__} reads CCDData, not {pytype}")
            return ccd
        return CCDDataDelegate(self.file_descriptor.storageClass).getComponent(ccd, component)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        # Docstring inherited.
        write_calexp_fits(in_memory_dataset, uri.ospath, overwrite=True)
