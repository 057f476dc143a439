"""CrowdsourceForcedPhotometryTask: fluxes at given positions, every neighbour modelled.

The stack's ``ForcedMeasurementTask`` measures each position on its own: a
PSF-weighted sum of the pixels around it, which also collects the light of
any star nearby (the DP0 tutorial on detection and measurement shows the
excess, section 5).  Here every reference position is a source of
crowdsource's simultaneous fit, together with every star the fit finds in
the image, so that neighbours are modelled and subtracted rather than
leaked into the forced flux.  Sources found in the image are fit but not
reported; the reference rows are, one output row per reference row, in
the reference order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from .catalog import build_table, forced_source_columns
from .config import CrowdsourceBaseConfig, calibrate_errors, check_before_fit, engine_arguments
from .engine import InputError, fit_image
from .errors import pipeline_errors
from .io.exposure import exposure_inputs
from .io.outputs import task_outputs
from .photometry import history_metadata

__all__ = [
    "CrowdsourceForcedPhotometryConnections",
    "CrowdsourceForcedPhotometryConfig",
    "CrowdsourceForcedPhotometryTask",
    "reference_table",
]

#: Reference positions closer than this (pixels) are one position, fit once.
DUPLICATE_TOLERANCE = 1e-3


class CrowdsourceForcedPhotometryConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    calexp = cT.Input(
        doc="Calibrated exposure to measure (image, mask, variance, PSF, WCS).",
        name="calexp",
        storageClass="ExposureF",
        dimensions=("instrument", "visit", "detector"),
    )
    refCat = cT.Input(
        doc="Reference positions: coord_ra/coord_dec (degrees) or x/y (PARENT pixels of "
        "this exposure), optionally objectId.  Dimensions from refCatDimensions: none "
        "for a target list shared by every visit, e.g. (skymap, tract) for object "
        "tables, in which case every table overlapping the detector is read.",
        name="crowdsource_forced_targets",
        storageClass="ArrowAstropy",
        dimensions=(),
        multiple=True,
        deferLoad=True,
    )
    forcedSourceTable = cT.Output(
        doc="Forced photometry, one row per reference row (Rubin DP1 ForcedSource names).",
        name="crowdsource_forced_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    forcedSourceCat = cT.Output(
        doc="Forced photometry as an afw SourceCatalog with slot aliases.",
        name="crowdsource_forced_src",
        storageClass="SourceCatalog",
        dimensions=("instrument", "visit", "detector"),
    )
    model = cT.Output(
        doc="Model of the image: the reference sources, every source found in the image, "
        "and the sky.",
        name="crowdsource_forced_model",
        storageClass="ImageF",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        self.calexp = dataclasses.replace(self.calexp, storageClass=config.calexpStorageClass)
        self.refCat = dataclasses.replace(
            self.refCat,
            storageClass=config.refCatStorageClass,
            dimensions=frozenset(config.refCatDimensions),
        )
        self.model = dataclasses.replace(self.model, storageClass=config.imageStorageClass)
        if not config.doWriteAfwCatalog:
            del self.forcedSourceCat


class CrowdsourceForcedPhotometryConfig(
    CrowdsourceBaseConfig,
    pipeBase.PipelineTaskConfig,
    pipelineConnections=CrowdsourceForcedPhotometryConnections,
):
    """Configuration of `CrowdsourceForcedPhotometryTask`."""

    findNewSources = pexConfig.Field(
        dtype=bool,
        default=True,
        doc="Also find and fit every other source in the image, so that neighbours of the "
        "reference positions are modelled instead of leaking into their fluxes.  Off: "
        "only the reference positions are fit, with the exposure's PSF as it is (no "
        "refit); neighbours not in the reference table then leak in as they do in "
        "independent forced photometry.",
    )
    refinePositions = pexConfig.Field(
        dtype=float,
        default=0.0,
        doc="Largest distance (pixels) a reference position may move while the fit "
        "refines it; 0 keeps every position fixed.",
    )
    positionColumns = pexConfig.ChoiceField(
        dtype=str,
        default="auto",
        allowed={
            "auto": "coord_ra/coord_dec when the reference table has them, else x/y",
            "sky": "coord_ra/coord_dec (degrees; needs the exposure's WCS)",
            "pixel": "x/y, PARENT pixel coordinates of this exposure",
        },
        doc="Which reference columns give the positions.  Object tables also carry x/y in "
        "their coadd's pixels, so 'auto' prefers the sky coordinates.",
    )
    dropOffImage = pexConfig.Field(
        dtype=bool,
        default=False,
        doc="Leave out reference rows that fall off the exposure.  Off (default): every "
        "reference row gets an output row, NaN fluxes and pixelFlags_offimage off the "
        "image.  Turn on with object tables covering a whole tract, of which one "
        "detector sees a small part.",
    )
    refCatStorageClass = pexConfig.ChoiceField(
        dtype=str,
        default="ArrowAstropy",
        allowed={
            "ArrowAstropy": "astropy Table (parquet)",
            "ArrowTable": "pyarrow Table (parquet)",
            "ArrowNumpy": "numpy structured array (parquet)",
            "DataFrame": "pandas DataFrame (parquet; objectId may be the index)",
        },
        doc="Storage class of the reference catalogue connection.",
    )
    refCatDimensions = pexConfig.ListField(
        dtype=str,
        default=[],
        doc="Dimensions of the reference catalogue dataset type: none for one target list "
        "used by every visit and detector; e.g. ['skymap', 'tract'] for object tables "
        "(every tract overlapping the detector is read and the tables stacked).",
    )

    def validate(self):
        super().validate()
        if not self.refinePositions >= 0:
            raise pexConfig.FieldValidationError(
                type(self).refinePositions, self, "refinePositions must be >= 0 pixels."
            )
        if set(self.refCatDimensions) & {"visit", "detector"}:
            raise pexConfig.FieldValidationError(
                type(self).refCatDimensions,
                self,
                "A reference catalogue per visit or detector is not a reference catalogue; "
                "use no dimensions, or e.g. skymap and tract.",
            )


def reference_table(refTable):
    """The reference positions as an `astropy.table.Table`.

    Accepts an astropy Table, a pandas DataFrame (an index named
    ``objectId`` becomes a column), a pyarrow Table, a numpy structured
    array, a mapping of columns, or an ``lsst.afw.table`` catalogue (its
    ``id`` becomes ``objectId``; its ``coord_ra``/``coord_dec`` in radians
    are converted through their units).
    """
    from astropy.table import Table

    if isinstance(refTable, Table):
        return refTable
    if hasattr(refTable, "asAstropy"):
        table = refTable.asAstropy()
        if "objectId" not in table.colnames and "id" in table.colnames:
            table.rename_column("id", "objectId")
        return table
    if type(refTable).__module__.startswith("pandas"):
        return Table.from_pandas(refTable, index=refTable.index.name is not None)
    if type(refTable).__module__.startswith("pyarrow"):
        return Table(refTable.to_pydict())
    try:
        return Table(refTable)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Cannot use a {type(refTable).__name__} as a reference table: give "
            "an astropy Table (or anything astropy.table.Table accepts)."
        ) from err


def _column(table, name, unit=None) -> np.ndarray:
    """A float column, masked entries as NaN, converted to ``unit`` if it has one."""
    col = table[name]
    if unit is not None and getattr(col, "unit", None) is not None:
        col = col.quantity.to_value(unit)
    return np.ma.filled(np.ma.asarray(col).astype(float), np.nan)


class CrowdsourceForcedPhotometryTask(pipeBase.PipelineTask):
    """Forced photometry at reference positions, fit with every other source.

    Every reference position becomes a source of crowdsource's
    simultaneous fit at a fixed position (or one refined by at most
    ``refinePositions``), together with every source the fit finds in the
    image (``findNewSources``); the PSF starts from the exposure's
    (``usePsfFromExposure``) and is refit from the bright stars, found or
    referenced (``fit.refitPsf``; only with ``findNewSources``).  The flux
    of a reference position is then its share of the light in a model
    where each neighbour carries its own, and its uncertainty includes the
    covariance with those neighbours (not the confusion noise of stars
    too faint to be found, nor PSF model errors).

    Output rows follow the reference rows one to one.  Rows whose position
    is off the image, not finite, or has no usable pixel in its PSF core
    (less than ``fit.forcedMinQf`` of the PSF on usable pixels) have NaN
    fluxes and ``psfFlux_flag`` set (plus ``pixelFlags_offimage`` or
    ``crowdsource_flag_noGoodPixels``); they are never dropped, unless
    ``dropOffImage`` is set.  Reference rows at the same position (within
    `DUPLICATE_TOLERANCE` pixels) are fit once and share that measurement.
    """

    ConfigClass = CrowdsourceForcedPhotometryConfig
    _DefaultName = "crowdsourceForcedPhotometry"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        exposure = butlerQC.get(inputRefs.calexp)
        handles = butlerQC.get(inputRefs.refCat)
        handles = sorted(handles, key=lambda h: tuple(h.dataId.required_values))
        refTable = self.readReferences(handles)
        data_id = butlerQC.quantum.dataId
        with pipeline_errors(self.getName(), dict(data_id.required)):
            outputs = self.run(
                exposure=exposure,
                refTable=refTable,
                visit=data_id["visit"],
                detector=data_id["detector"],
                idGenerator=self.config.idGenerator.apply(data_id),
            )
        butlerQC.put(outputs, outputRefs)

    def readReferences(self, handles):
        """Read and stack the reference catalogues, only the columns used.

        Parameters
        ----------
        handles : `list` [`lsst.daf.butler.DeferredDatasetHandle`]
            The ``refCat`` datasets (one without dimensions; one per tract
            for object tables).

        Returns
        -------
        refTable : `astropy.table.Table`
        """
        from astropy.table import vstack

        tables = []
        for handle in handles:
            available = set(handle.get(component="columns"))
            wanted = [c for c in ("objectId", "coord_ra", "coord_dec", "x", "y") if c in available]
            if self.config.refCatStorageClass == "DataFrame" or not wanted:
                data = handle.get()  # the index (objectId) is not a column; read all
            else:
                data = handle.get(parameters={"columns": wanted})
            tables.append(reference_table(data))
            self.log.info(
                "Read %d reference rows from %s.",
                len(tables[-1]),
                handle.ref.datasetType.name
                + (f" {handle.dataId}" if handle.dataId.required else ""),
            )
        if len(tables) == 1:
            return tables[0]
        return vstack(tables, join_type="exact", metadata_conflicts="silent")

    def referencePositions(self, refTable, inputs):
        """PARENT pixel positions of the reference rows.

        Returns
        -------
        x, y : `numpy.ndarray`
            Positions (NaN where the reference has none or the WCS gives none).
        ra, dec : `numpy.ndarray` or `None`
            Reference sky coordinates (degrees) when they gave the positions.

        Raises
        ------
        lsst.meas.crowdsource.engine.InputError
            If the position columns are missing (the message names them),
            sky positions are given for an exposure without a WCS, or its
            WCS places none of them.
        """
        cols = set(refTable.colnames)
        mode = self.config.positionColumns
        if mode == "auto":
            mode = "sky" if cols & {"coord_ra", "coord_dec"} else "pixel"
        need = ("coord_ra", "coord_dec") if mode == "sky" else ("x", "y")
        missing = [c for c in need if c not in cols]
        if missing:
            raise InputError(
                f"The reference table lacks the column(s) {', '.join(missing)}: it needs "
                "coord_ra and coord_dec (ICRS degrees) or x and y (PARENT pixels of the "
                f"exposure); it has {', '.join(refTable.colnames) or 'no columns'}."
            )
        if mode == "pixel":
            return _column(refTable, "x"), _column(refTable, "y"), None, None
        if inputs.sky_to_pixel is None:
            raise InputError(
                "The reference table gives sky positions (coord_ra, coord_dec) but the "
                "exposure has no WCS to place them; give x and y (PARENT pixels) and set "
                "positionColumns='pixel', or attach a WCS to the exposure."
            )
        ra = _column(refTable, "coord_ra", "deg")
        dec = _column(refTable, "coord_dec", "deg")
        x = np.full(len(ra), np.nan)
        y = np.full(len(ra), np.nan)
        ok = np.isfinite(ra) & np.isfinite(dec)
        if ok.any():
            with np.errstate(invalid="ignore"):
                px, py = inputs.sky_to_pixel(ra[ok], dec[ok])
            x[ok], y[ok] = np.asarray(px, float), np.asarray(py, float)
        lost = ok & ~(np.isfinite(x) & np.isfinite(y))
        if lost.any() and lost.sum() == ok.sum():
            raise InputError(
                f"The exposure's WCS gives no pixel position for any of the {int(ok.sum())} "
                "reference positions with finite coordinates: it cannot be inverted there "
                "(a singular or broken WCS?)."
            )
        if lost.any():
            self.log.warning(
                "The exposure's WCS gives no pixel position for %d of %d reference positions; "
                "their rows are NaN and flagged off-image.",
                int(lost.sum()),
                int(ok.sum()),
            )
        return x, y, ra, dec

    @timeMethod
    def run(self, exposure, refTable, visit=None, detector=None, idGenerator=None):
        """Measure the flux at every reference position.

        Parameters
        ----------
        exposure : `lsst.afw.image.Exposure`, `lsst.images.VisitImage` or `astropy.nddata.CCDData`
            The calibrated exposure (see `lsst.meas.crowdsource.io.inputs`).
        refTable : `astropy.table.Table` or table-like
            Reference positions: ``coord_ra``/``coord_dec`` (ICRS degrees, or
            any angle unit the columns carry) or ``x``/``y`` (PARENT pixels),
            see ``positionColumns``; optionally ``objectId`` (else the row
            index).  See `reference_table` for the table types accepted.
        visit, detector : `int`, optional
            Data ID, stored in the rows; without ``idGenerator`` also packed
            into ``forcedSourceId`` (see
            `lsst.meas.crowdsource.ids.notebook_id_generator`).
        idGenerator : `lsst.meas.base.IdGenerator`, optional
            ``forcedSourceId`` values, from ``config.idGenerator.apply(dataId)``
            (what ``runQuantum`` passes; ``visit``/``detector`` default to its
            data ID).  Without it or a data ID the IDs are 1..N.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``forcedSourceTable`` (`astropy.table.Table`, one row per
            reference row in the same order, `forced_source_columns`),
            ``forcedSourceCat`` (`lsst.afw.table.SourceCatalog`, or `None`
            without afw or with ``doWriteAfwCatalog=False``), ``model`` (the
            image model, in ``imageStorageClass``) and ``fit`` (the engine's
            `~lsst.meas.crowdsource.engine.FitResult`, which also holds the
            sources found in the image, after the reference rows).

        Raises
        ------
        lsst.meas.crowdsource.engine.InputError
            For a reference table without usable position columns, sky
            positions without a WCS, or an exposure that cannot be fit.
        """
        ids = check_before_fit(self.config, idGenerator, visit, detector)
        visit, detector = ids.visit, ids.detector
        inputs = exposure_inputs(exposure)
        ref = reference_table(refTable)
        x, y, ra, dec = self.referencePositions(ref, inputs)
        if "objectId" in ref.colnames:
            object_id = np.asarray(ref["objectId"]).astype(np.int64)
        else:
            object_id = np.arange(len(ref), dtype=np.int64)
        finite = np.isfinite(x) & np.isfinite(y)
        ny, nx = inputs.image.shape
        x0, y0 = inputs.xy0
        on_image = (
            finite & (x >= x0 - 0.5) & (x < x0 + nx - 0.5) & (y >= y0 - 0.5) & (y < y0 + ny - 0.5)
        )
        if self.config.dropOffImage:
            keep = np.nonzero(on_image)[0]
            self.log.info(
                "Keeping the %d of %d reference rows that fall on the exposure.",
                keep.size,
                len(ref),
            )
            x, y, object_id, finite = x[keep], y[keep], object_id[keep], finite[keep]
            ra, dec = (None, None) if ra is None else (ra[keep], dec[keep])
        elif (~finite).any():
            self.log.warning(
                "%d reference row(s) have no finite position; their fluxes are NaN.",
                int((~finite).sum()),
            )
        n = len(x)
        # Positions go to the engine as they are: a non-finite one gets its
        # off-image row.  Coincident positions are fit once, and so are all the
        # non-finite ones (they share the key (0, 0, 0)).
        fx, fy = x, y
        with np.errstate(invalid="ignore"):
            cells = np.round(np.column_stack([x, y]) / DUPLICATE_TOLERANCE)
        key = np.column_stack([finite, np.where(finite[:, None], cells, 0.0)])
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inverse = np.asarray(inverse).ravel()
        order = np.argsort(first)  # unique positions in first-occurrence order
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        unique = first[order]
        row_of = rank[inverse]  # for each reference row, its fit position
        if unique.size < n:
            self.log.warning(
                "%d reference row(s) repeat an earlier position (within %g px); "
                "each is given the measurement of that position.",
                n - unique.size,
                DUPLICATE_TOLERANCE,
            )

        self.log.info(
            "Forced photometry of %d reference position(s) on a %dx%d exposure%s%s.",
            n,
            nx,
            ny,
            "" if visit is None else f" (visit {visit}, detector {detector})",
            ", fit with every source found in the image" if self.config.findNewSources else "",
        )
        fit_kwargs = dict(
            forced_x=fx[unique],
            forced_y=fy[unique],
            find_new=self.config.findNewSources,
            refine_forced=self.config.refinePositions,
            **engine_arguments(inputs, self.config),
        )
        result = fit_image(inputs.image, log=self.log, **fit_kwargs)
        calibrate_errors(self.config, result, inputs.image, fit_kwargs, self.metadata, self.log)
        cols = result.columns
        if not np.array_equal(cols["forced_index"][: unique.size], np.arange(unique.size)):
            raise RuntimeError("The engine did not return one row per forced position.")
        forced = {name: arr[: unique.size][row_of] for name, arr in cols.items()}
        columns = forced_source_columns(inputs.unit)
        table = build_table(
            dataclasses.replace(result, columns=forced),
            columns,
            pixel_to_sky=inputs.pixel_to_sky,
            njy_per_count=inputs.njy_per_count,
            ids=ids.arange(n),
            visit=visit,
            detector=detector,
            extra={"objectId": object_id},
        )
        if ra is not None and self.config.refinePositions == 0:
            # Fixed positions: report the reference coordinates themselves.
            table["coord_ra"][:] = ra
            table["coord_dec"][:] = dec
        for name in ("x", "y", "coord_ra", "coord_dec"):
            table[name][~finite] = np.nan

        table.meta["crowdsource_psf_fwhm"] = float(result.psf.fwhm())
        table.meta["crowdsource_n_found"] = int(len(result) - unique.size)
        history_metadata(self.metadata, result)
        self.metadata["nReference"] = n
        self.metadata["nFound"] = int(len(result) - unique.size)
        n_good = int(np.sum(~table["psfFlux_flag"]))
        self.log.info(
            "Measured %d reference positions (%d with a usable PSF flux, %d off the "
            "image) together with %d sources found in the image.",
            n,
            n_good,
            int(np.sum(table["pixelFlags_offimage"])),
            len(result) - unique.size,
        )
        out = task_outputs(
            table, columns, {"model": result.model}, inputs.xy0, self.config, self.log
        )
        return pipeBase.Struct(
            forcedSourceTable=table,
            forcedSourceCat=out["afwCatalog"],
            model=out["model"],
            fit=result,
        )
