"""Butler plumbing for running meas_crowdsource without an obs package.

On plain PyPI there is no ``lsst.obs.*`` package to register an instrument,
its detectors and its visits, and no afw to store an ``ExposureF``.  These
helpers fill the gap:

- `make_repo` creates a local repository (SQLite registry, file datastore)
  seeded with ``config/butler/seed.yaml``, which declares the
  ``CrowdsourceCCDData`` storage class (an `astropy.nddata.CCDData` in the
  afw calexp FITS layout) and its formatter;
- `lsst.meas.crowdsource.testing.butler.register_visit` (test support)
  inserts the dimension records that a quantum graph over
  ``(instrument, visit, detector)`` needs without an obs package;
- `put_calexp` registers the dataset type if needed and stores an exposure
  (a CCDData, an `lsst.images.VisitImage` as a DP1 ``visit_image``, or an afw
  ``ExposureF``).

Example
-------
>>> butler = make_repo("repo")  # doctest: +SKIP
>>> from lsst.meas.crowdsource.testing.butler import register_visit  # doctest: +SKIP
>>> wcs = register_visit(butler, "SimCam", visit=1, detectors=[0, 1],
...                      ra=270.0, dec=-30.0)  # doctest: +SKIP
>>> put_calexp(butler, ccd, "sim/calexp", "SimCam", 1, 0)  # doctest: +SKIP
"""

from __future__ import annotations

__all__ = [
    "CALEXP_DIMENSIONS",
    "STORAGE_CLASS",
    "config_dir",
    "make_repo",
    "put_calexp",
    "put_forced_targets",
    "seed_config_path",
]

import os
import shutil
from pathlib import Path

from astropy.nddata import CCDData

from lsst.daf.butler import Butler, Config, DatasetRef, DatasetType

STORAGE_CLASS = "CrowdsourceCCDData"
"""Storage class of CCDData exposures (declared in ``config/butler/seed.yaml``)."""

CALEXP_DIMENSIONS = ("instrument", "visit", "detector")
"""Dimensions of the exposure dataset types written by `put_calexp`."""

_ENV_VAR = "MEAS_CROWDSOURCE_DIR"


def config_dir() -> Path:
    """Return the package's top-level ``config/`` directory.

    Returns
    -------
    path : `pathlib.Path`
        ``$MEAS_CROWDSOURCE_DIR/config`` if that variable is set (as
        ``setup meas_crowdsource`` does), else the ``config/`` directory of
        the source tree this module was imported from.

    Raises
    ------
    FileNotFoundError
        Raised if the directory does not exist.
    """
    env = os.environ.get(_ENV_VAR)
    if env:
        path = Path(env) / "config"
        if not path.is_dir():
            raise FileNotFoundError(f"${_ENV_VAR} is set to {env!r}, but {path} is not a directory")
        return path
    # python/lsst/meas/crowdsource/io/butler.py -> <package root>/config
    path = Path(__file__).resolve().parents[5] / "config"
    if not path.is_dir():
        raise FileNotFoundError(
            f"cannot find meas_crowdsource's config/ directory (looked for {path}); "
            f"set ${_ENV_VAR} to the package root (the directory holding config/)"
        )
    return path


def seed_config_path() -> Path:
    """Return the path of the butler seed configuration.

    Returns
    -------
    path : `pathlib.Path`
        ``config/butler/seed.yaml``; pass it to ``butler create
        --seed-config`` to make a repository by hand.

    Raises
    ------
    FileNotFoundError
        Raised if the file is missing.
    """
    path = config_dir() / "butler" / "seed.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"butler seed configuration {path} is missing")
    return path


def make_repo(root: str | os.PathLike[str], *, overwrite: bool = False) -> Butler:
    """Create a local butler repository that knows the CCDData storage class.

    Parameters
    ----------
    root : `str` or path-like
        Directory of the new repository (created if needed).  The registry
        is an SQLite file and the datastore a file datastore, both in
        ``root``.
    overwrite : `bool`, optional
        If ``root`` already holds a repository (a ``butler.yaml``), delete
        the whole directory first.  If `False` (default) an existing
        repository raises.

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        A writeable Butler on the new repository (no default run or
        collections).

    Raises
    ------
    FileExistsError
        Raised if ``root`` already holds a repository and ``overwrite`` is
        `False`.
    FileNotFoundError
        Raised if the seed configuration cannot be found.
    """
    root_path = Path(root)
    if (root_path / "butler.yaml").exists():
        if not overwrite:
            raise FileExistsError(
                f"{root_path} already holds a butler repository; pass overwrite=True to replace it"
            )
        shutil.rmtree(root_path)
    seed = Config(str(seed_config_path()))
    Butler.makeRepo(str(root_path), config=seed)
    return Butler.from_config(str(root_path), writeable=True)


def _storage_class_of(exposure) -> str:
    """The storage class `put_calexp` stores ``exposure`` as."""
    if isinstance(exposure, CCDData):
        return STORAGE_CLASS
    module = type(exposure).__module__
    if module.startswith("lsst.images"):
        return "VisitImage"
    if module.startswith("lsst.afw"):
        return "ExposureF"
    raise TypeError(
        f"put_calexp stores an astropy CCDData, an lsst.images.VisitImage or an afw "
        f"ExposureF; got {module}.{type(exposure).__qualname__} (pass storage_class=)"
    )


def put_calexp(
    butler: Butler,
    exposure,
    run: str,
    instrument: str,
    visit: int,
    detector: int,
    dataset_type: str = "calexp",
    storage_class: str | None = None,
) -> DatasetRef:
    """Store an exposure, registering its dataset type and run if needed.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler on a repository made by `make_repo` (or seeded
        with ``config/butler/seed.yaml``).
    exposure : `astropy.nddata.CCDData`, `lsst.images.VisitImage` or `lsst.afw.image.ExposureF`
        The exposure; a CCDData follows `lsst.meas.crowdsource.io.ccddata`
        conventions.
    run : `str`
        RUN collection to write to (registered if new).
    instrument : `str`
        Instrument name.
    visit, detector : `int`
        Data ID; the dimension records must exist (`register_visit`).
    dataset_type : `str`, optional
        Dataset type name, with dimensions (instrument, visit, detector);
        ``"visit_image"`` for a DP1-style repository.
    storage_class : `str`, optional
        Storage class of the dataset type; by default ``CrowdsourceCCDData``
        for a CCDData, ``VisitImage`` for an lsst.images object and
        ``ExposureF`` for an afw exposure.

    Returns
    -------
    ref : `lsst.daf.butler.DatasetRef`
        The stored dataset.

    Raises
    ------
    TypeError
        Raised for an exposure of another type without ``storage_class``.
    lsst.daf.butler.registry.ConflictingDefinitionError
        Raised if ``dataset_type`` is already registered with other
        dimensions or another storage class (e.g. an afw ``ExposureF``
        calexp); pick another name.
    """
    storage_class = storage_class or _storage_class_of(exposure)
    dtype = DatasetType(dataset_type, CALEXP_DIMENSIONS, storage_class, universe=butler.dimensions)
    butler.registry.registerDatasetType(dtype)
    butler.registry.registerRun(run)
    return butler.put(
        exposure, dtype, instrument=instrument, visit=int(visit), detector=int(detector), run=run
    )


def put_forced_targets(
    butler: Butler, targets, run: str, dataset_type: str = "crowdsource_forced_targets"
) -> DatasetRef:
    """Store a forced-photometry target list as the pipelines' reference dataset.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler.
    targets : `astropy.table.Table`
        ``coord_ra``/``coord_dec`` (degrees) or ``x``/``y``, optionally
        ``objectId`` (see `~lsst.meas.crowdsource.CrowdsourceForcedPhotometryTask`).
    run : `str`
        RUN collection to write to (registered if new).
    dataset_type : `str`, optional
        Name of the dataset type: no dimensions (one list for every visit
        and detector), storage class ``ArrowAstropy``.

    Returns
    -------
    ref : `lsst.daf.butler.DatasetRef`
        The stored dataset.
    """
    dtype = DatasetType(dataset_type, (), "ArrowAstropy", universe=butler.dimensions)
    butler.registry.registerDatasetType(dtype)
    butler.registry.registerRun(run)
    return butler.put(targets, dtype, run=run)
