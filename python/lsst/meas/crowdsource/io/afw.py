"""Adapter between afw and the engine: `~lsst.afw.image.Exposure` in,
`~lsst.afw.table.SourceCatalog` out.

Every ``lsst.afw`` / ``lsst.geom`` import happens inside a function, so this
module can be imported without afw.

The afw calls used here, and where they are defined in github lsst/afw:

- ``Exposure.image`` / ``.mask`` / ``.variance`` (properties added in
  ``python/lsst/afw/image/_exposure/_exposureContinued.py``) and their
  ``.array`` (``python/lsst/afw/image/_image/_image.cc``);
  ``Exposure.getXY0``, ``getPsf``, ``getWcs``, ``getPhotoCalib``
  (``python/lsst/afw/image/_exposure/_exposure.cc``); each getter returns
  `None` when the component is not set.
- ``Mask.getMaskPlaneDict`` (``python/lsst/afw/image/_image/_image.cc``):
  plane name -> bit index; the ``int32`` mask array is split into one
  boolean plane per name once, by `~.planes.boolean_planes`.
- ``Psf.computeKernelImage(position)``
  (``python/lsst/afw/detection/_psf.cc``; contract in
  ``include/lsst/afw/detection/Psf.h``): an image normalised to unit sum,
  centred on the centre of its central pixel, which is pixel ``(0, 0)`` once
  the image's xy0 is taken into account.
- ``SkyWcs.pixelToSkyArray(x, y, degrees=True)`` and
  ``SkyWcs.skyToPixelArray(ra, dec, degrees=True)``
  (``python/lsst/afw/geom/skyWcs.py``): vectorised, PARENT pixel
  coordinates, flat output arrays.
- ``BackgroundList.getImage()`` (``python/lsst/afw/math/_backgroundList.py``):
  the sum of the backgrounds as an ``ImageF``, `None` for an empty list.
- ``PhotoCalib.getCalibrationMean()``
  (``include/lsst/afw/image/PhotoCalib.h``): the spatial mean of the
  calibration, nJy per image unit.
- ``SourceTable.makeMinimalSchema``, ``Schema.addField(name, type=, doc=,
  units=)``, ``Schema.getAliasMap().set``, ``SourceCatalog(schema)``,
  ``Catalog.resize``, ``Catalog.__setitem__`` (``python/lsst/afw/table/``
  ``_schema.py``, ``_aliasMap.cc``, ``_base.py``,
  ``include/lsst/afw/table/python/catalog.h``); slot resolution in
  ``src/table/slots.cc``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..catalog import SLOT_ALIASES, Column
from ..engine import InputError
from .inputs import COUNT_UNIT, ExposureInputs
from .planes import boolean_planes
from .psf import centred_odd_stamp

__all__ = [
    "afw_exposure_inputs",
    "afw_schema",
    "source_catalog_from_table",
    "numpy_to_afw_image",
    "background_image",
]

#: numpy dtype of a `Column` -> afw field type string (the keys of
#: ``lsst.afw.table.Field``).  afw has no 16-bit signed type: ``i2`` is
#: widened to ``I`` (32-bit).
AFW_FIELD_TYPES = {"f8": "D", "f4": "F", "i8": "L", "i4": "I", "i2": "I", "?": "Flag"}


def _psf_callable(psf) -> Callable[[float, float], np.ndarray]:
    """``psf(x, y)`` -> odd, square, centred stamp from an afw ``Psf``."""

    def psf_at(x, y, _psf=psf):
        import lsst.geom

        kernel = _psf.computeKernelImage(lsst.geom.Point2D(float(x), float(y)))
        return centred_odd_stamp(kernel.array, kernel.getX0(), kernel.getY0())

    return psf_at


def _wcs_callables(wcs) -> tuple[Callable, Callable]:
    """Vectorised PARENT pixel <-> ICRS degrees functions from an afw ``SkyWcs``.

    ``pixelToSkyArray`` / ``skyToPixelArray`` stack their inputs with
    ``np.vstack`` and return flat arrays, so the inputs are broadcast and
    flattened here and the outputs reshaped to the broadcast shape.
    """

    def pixel_to_sky(x, y, _wcs=wcs):
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        if x.size == 0:
            return np.empty(x.shape), np.empty(x.shape)
        ra, dec = _wcs.pixelToSkyArray(x.ravel(), y.ravel(), degrees=True)
        return np.reshape(ra, x.shape), np.reshape(dec, x.shape)

    def sky_to_pixel(ra, dec, _wcs=wcs):
        ra, dec = np.broadcast_arrays(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
        if ra.size == 0:
            return np.empty(ra.shape), np.empty(ra.shape)
        x, y = _wcs.skyToPixelArray(ra.ravel(), dec.ravel(), degrees=True)
        return np.reshape(x, ra.shape), np.reshape(y, ra.shape)

    return pixel_to_sky, sky_to_pixel


def afw_exposure_inputs(exposure) -> ExposureInputs:
    """`ExposureInputs` from an `lsst.afw.image.Exposure`.

    Parameters
    ----------
    exposure : `lsst.afw.image.Exposure`
        A calibrated exposure (``calexp``, DP1 ``visit_image``, ...).

    Returns
    -------
    inputs : `~lsst.meas.crowdsource.io.inputs.ExposureInputs`
        - ``image``, ``variance``: views of ``exposure.image.array`` and
          ``exposure.variance.array`` (not copied; the engine never writes
          to them);
        - ``mask_planes``: one boolean plane per entry of
          ``exposure.mask.getMaskPlaneDict()`` (afw names), made from
          ``exposure.mask.array``;
        - ``xy0``: ``exposure.getXY0()`` as two ints;
        - ``psf``: ``psf(x, y)`` returning
          ``exposure.getPsf().computeKernelImage(lsst.geom.Point2D(x, y))``
          as a square, odd stamp centred on its middle pixel (see
          `~.psf.centred_odd_stamp`), or `None` if the exposure has no PSF;
        - ``pixel_to_sky`` / ``sky_to_pixel``: ``SkyWcs.pixelToSkyArray`` /
          ``skyToPixelArray`` with ``degrees=True`` (afw WCSs work in PARENT
          pixel coordinates, as the engine does), or `None` without a WCS;
        - ``njy_per_count``: ``exposure.getPhotoCalib().getCalibrationMean()``
          (nJy per image unit; ``1`` for images already in nJy), or `None`
          without a PhotoCalib.  A spatially varying calibration is reduced
          to its mean;
        - ``unit``: ``"count"`` (`~lsst.meas.crowdsource.io.inputs.COUNT_UNIT`;
          afw images carry no unit).
    """
    image = exposure.image.array
    variance = exposure.variance.array
    bits = {str(name): int(bit) for name, bit in exposure.mask.getMaskPlaneDict().items()}
    planes = boolean_planes(exposure.mask.array, bits)
    xy0 = exposure.getXY0()
    afw_psf = exposure.getPsf()
    psf = None if afw_psf is None else _psf_callable(afw_psf)
    wcs = exposure.getWcs()
    pixel_to_sky, sky_to_pixel = (None, None) if wcs is None else _wcs_callables(wcs)
    calib = exposure.getPhotoCalib()
    njy = None if calib is None else float(calib.getCalibrationMean())
    return ExposureInputs(
        image=image,
        variance=variance,
        mask_planes=planes,
        xy0=(int(xy0.getX()), int(xy0.getY())),
        psf=psf,
        pixel_to_sky=pixel_to_sky,
        sky_to_pixel=sky_to_pixel,
        njy_per_count=njy,
        unit=COUNT_UNIT,
    )


def afw_schema(columns: list[Column]):
    """An afw `~lsst.afw.table.Schema` for the given output columns.

    Starts from ``lsst.afw.table.SourceTable.makeMinimalSchema()`` (``id``,
    ``coord_ra``, ``coord_dec``, ``parent``), adds every `Column` with an
    ``afw_name`` not already there (type from `AFW_FIELD_TYPES`, with its
    doc and units; afw checks units with ``astropy.units.Unit(units,
    parse_strict="raise")``), and sets the slot aliases of
    `~lsst.meas.crowdsource.catalog.SLOT_ALIASES` through
    ``schema.getAliasMap().set``.

    The slots then resolve as ``src/table/slots.cc`` does:
    ``slot_Centroid`` needs ``crowdsource_centroid_x`` / ``_y`` (``D``),
    optionally ``_xErr`` / ``_yErr`` (``F``) and ``_flag``;
    ``slot_PsfFlux`` needs ``crowdsource_psfFlux_instFlux`` (``D``),
    optionally ``_instFluxErr`` (``D``) and ``_flag``.

    Raises
    ------
    ValueError
        For a column dtype afw has no field type for.
    """
    import lsst.afw.table as afwTable

    schema = afwTable.SourceTable.makeMinimalSchema()
    existing = set(schema.getNames())
    for col in columns:
        if col.afw_name is None or col.afw_name in existing:
            continue
        try:
            afw_type = AFW_FIELD_TYPES[col.dtype]
        except KeyError:
            raise ValueError(
                f"Column {col.name!r} has dtype {col.dtype!r}, which has no afw "
                f"field type (known: {sorted(AFW_FIELD_TYPES)})."
            ) from None
        schema.addField(col.afw_name, type=afw_type, doc=col.doc, units=col.unit)
        existing.add(col.afw_name)
    aliases = schema.getAliasMap()
    for alias, target in SLOT_ALIASES.items():
        aliases.set(alias, target)
    return schema


def source_catalog_from_table(table, columns: list[Column], id_generator=None):
    """A contiguous `lsst.afw.table.SourceCatalog` with the rows of ``table``.

    Parameters
    ----------
    table : `astropy.table.Table`
        A catalogue made by `~lsst.meas.crowdsource.catalog.build_table` with
        ``columns``.
    columns : `list` [`~lsst.meas.crowdsource.catalog.Column`]
        `~lsst.meas.crowdsource.catalog.source_columns` or
        `~lsst.meas.crowdsource.catalog.forced_source_columns`.
    id_generator : `lsst.meas.base.IdGenerator`, optional
        The generator the table's IDs were made with: the catalogue's
        `~lsst.afw.table.SourceTable` is made with its
        ``make_table_id_factory()``, as ``calibrateImage.py`` makes its
        tables.  Without it, ``IdFactory.makeSimple()`` (what
        ``lsst.meas.base.IdGenerator()`` gives).  The ``id`` column is the
        table's IDs either way.

    Returns
    -------
    catalog : `lsst.afw.table.SourceCatalog`
        Schema from `afw_schema`; ``id`` from ``sourceId`` (or
        ``forcedSourceId``, whichever column maps to ``id``); ``coord_ra`` /
        ``coord_dec`` converted from degrees to radians (afw ``Angle``
        fields); ``parent`` 0.  ``getX()``, ``getPsfInstFlux()`` and friends
        work through the slot aliases.

    Notes
    -----
    Records are made with ``Catalog.resize(n)``, which preallocates one
    block, so the catalogue is contiguous and whole columns are written at
    once: ``catalog[name] = array`` goes through the column view for numeric
    and ``Angle`` fields (``Angle`` columns take radians) and through
    ``Catalog._set_flag`` (a C++ loop over records) for ``Flag`` fields,
    which cannot be viewed as numpy arrays because they are bit-packed.

    Raises
    ------
    ValueError
        If ``table`` lacks a column of ``columns`` that has an ``afw_name``.
    """
    import lsst.afw.table as afwTable

    used = [c for c in columns if c.afw_name is not None]
    missing = [c.name for c in used if c.name not in table.colnames]
    if missing:
        raise ValueError(f"The table lacks the columns {missing} needed for the afw catalogue.")
    schema = afw_schema(columns)
    if id_generator is None:
        id_factory = afwTable.IdFactory.makeSimple()  # what IdGenerator() (no data ID) gives
    else:
        id_factory = id_generator.make_table_id_factory()
    catalog = afwTable.SourceCatalog(afwTable.SourceTable.make(schema, id_factory))
    n = len(table)
    catalog.resize(n)
    if n == 0:
        return catalog
    if not catalog.isContiguous():  # resize() on a new catalogue is contiguous; be sure
        catalog = catalog.copy(deep=True)
    for col in used:
        values = np.asarray(table[col.name])
        if col.afw_name in ("coord_ra", "coord_dec"):
            catalog[col.afw_name] = np.deg2rad(values.astype(float))
        elif col.dtype == "?":
            catalog[col.afw_name] = np.ascontiguousarray(values, dtype=bool)
        else:
            catalog[col.afw_name] = values
    catalog["parent"] = np.zeros(n, dtype=np.int64)
    return catalog


def numpy_to_afw_image(array: np.ndarray, xy0: tuple[int, int] = (0, 0)):
    """An `lsst.afw.image.ImageF` holding a copy of ``array`` at PARENT ``xy0``.

    Uses the ``ImageF(array, deep, xy0)`` constructor
    (``python/lsst/afw/image/_image/_image.cc``).
    """
    import lsst.afw.image as afwImage
    import lsst.geom

    arr = np.ascontiguousarray(array, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"An afw image needs a 2-D array; got shape {arr.shape}.")
    return afwImage.ImageF(arr, deep=True, xy0=lsst.geom.Point2I(int(xy0[0]), int(xy0[1])))


def background_image(background, shape: tuple[int, int]) -> np.ndarray:
    """The full-resolution image of an `lsst.afw.math.BackgroundList`.

    ``BackgroundList.getImage()`` (``python/lsst/afw/math/_backgroundList.py``)
    sums its backgrounds into an ``ImageF`` (or returns `None` when the list
    is empty, read here as zero).

    Raises
    ------
    InputError
        If the background image does not have the exposure's ``shape``.
    """
    img = background.getImage()
    if img is None:
        return np.zeros(shape, dtype=np.float32)
    arr = np.asarray(img.array)
    if arr.shape != tuple(shape):
        raise InputError(
            f"The background image has shape {arr.shape} but the exposure has shape {tuple(shape)}."
        )
    return arr
