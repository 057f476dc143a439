"""Catalogue IDs the stack's way: an ``IdGenerator`` made from the data ID.

The tasks hold ``idGenerator = DetectorVisitIdGeneratorConfig.make_field()``
and ``runQuantum`` calls ``config.idGenerator.apply(dataId)``, as
lsst/pipe_tasks ``calibrateImage.py`` and lsst/meas_base ``forcedPhotCcd.py``
do; the catalogue takes ``arange(1, n + 1)`` from the generator and the afw
catalogue its ``make_table_id_factory()``.

Where `lsst.meas.base` can be imported its classes are used (`active` is
that module).  Elsewhere (plain PyPI: no ``meas_base``, no ``afw``) `active`
holds this module's fallback classes, which have the API of
``lsst/meas/base/_id_generator.py`` -- `IdGenerator`, `FullIdGenerator`,
`BaseIdGeneratorConfig` (``release_id``, ``n_releases``, ``make_field``,
``apply``), `DetectorVisitIdGeneratorConfig` and
`DetectorExposureIdGeneratorConfig` (``packer`` from
`lsst.pipe.base.Instrument.make_dimension_packer_config_field`) -- and the
same bit layout, so that an ID means the same thing with either::

    id = counter + n_counters * (packed_data_id + 2**packer.maxBits * release_id)

    counter_bits = 63 - (bit_length(n_releases - 1) + packer.maxBits)

(``63``: afw's ``IdFactory.computeReservedFromMaxBits`` keeps the sign bit
clear, so every ID is a non-negative int64.)  The counter runs 1..N, as
afw's ``IdFactory`` counts.

Which dimension packer packs ``(visit, detector)``: the one configured in
``packer`` when a name is set there; else, as the stack does, the
instrument's default (`lsst.pipe.base.Instrument.from_data_id`) when the
instrument class named in its dimension record can be imported; else, for
the Rubin instruments whose obs_lsst default is obs_lsst's "rubin" packer
(`RUBIN_INSTRUMENTS`), `RubinVisitPacker` (the same packing, 38 bits for
``YYYYMMDDNNNNN`` visit IDs and detectors < 256); else pipe_base's
`~lsst.pipe.base.ObservationDimensionPacker` bounded by the instrument
record's ``visit_max`` and ``detector_max``.

A data ID given only as ``run(visit=..., detector=...)`` (a notebook, no
instrument) is packed by `NoInstrumentPacker` (Rubin visit IDs as
`RubinVisitPacker` does; other visits below 2**27 with detectors below
1000); without any data ID the IDs are 1..N.  `unpacker_from_config`
unpacks either kind.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from lsst.daf.butler import DataCoordinate, DimensionPacker, DimensionUniverse
from lsst.pex.config import Config, ConfigField, Field, FieldValidationError
from lsst.pipe.base import Instrument

__all__ = [
    "DEFAULT_N_RELEASES",
    "DEFAULT_RELEASE_ID",
    "RUBIN_INSTRUMENTS",
    "UNKNOWN_INSTRUMENT",
    "USING_MEAS_BASE",
    "BaseIdGeneratorConfig",
    "CatalogIds",
    "DetectorExposureIdGeneratorConfig",
    "DetectorVisitIdGeneratorConfig",
    "FullIdGenerator",
    "IdGenerator",
    "NoInstrumentPacker",
    "RubinVisitPacker",
    "active",
    "catalog_ids",
    "notebook_id_generator",
    "unpacker_from_config",
]

DEFAULT_RELEASE_ID = 0
"""Release ID embedded in IDs by default (0: no release)."""

DEFAULT_N_RELEASES = 64
"""Number of release IDs reserved in every ID (6 bits)."""

RUBIN_INSTRUMENTS = frozenset({"LSSTCam", "LSSTComCam", "LSSTComCamSim", "LSSTCamSim", "LATISS"})
"""Instruments whose default packer in lsst/obs_lsst is "rubin" (``_instrument.py``)."""

UNKNOWN_INSTRUMENT = "unknown"
"""Instrument of the data IDs made from ``run(visit=..., detector=...)``."""

#: Bits of a 64-bit signed record ID that may be used (afw's RecordId is int64).
_ID_BITS = 63

#: Decimal digits of a Rubin exposure ID ``YYYYMMDDNNNNN``.
_EXPOSURE_DIGITS = 13


# --- dimension packers ------------------------------------------------------------------------


def _day_ordinal(day_obs: int) -> int:
    """Day number of a ``YYYYMMDD`` integer (`ValueError` if it is no date)."""
    year_month, day = divmod(int(day_obs), 100)
    year, month = divmod(year_month, 100)
    return datetime.date(year, month, day).toordinal()


def _day_obs(ordinal: int) -> int:
    """``YYYYMMDD`` integer of a day number."""
    date = datetime.date.fromordinal(ordinal)
    return date.year * 10000 + date.month * 100 + date.day


def _observation_dimensions(fixed: DataCoordinate, is_exposure: bool):
    names = ["instrument", "exposure" if is_exposure else "visit", "detector"]
    return fixed.universe.conform(names)


class RubinVisitPacker(DimensionPacker):
    """Packs Rubin ``(visit, detector)`` or ``(exposure, detector)`` data IDs into 38 bits.

    The packing of lsst/obs_lsst ``RubinDimensionPacker`` with its default
    configuration (only the OCS controller), which obs_lsst documents as
    stable::

        packed = detector + n_detectors * (seq_num + n_seq_nums * (
            day - day_begin + n_days * is_one_to_one_reinterpretation))

    for a visit ID ``[9]YYYYMMDDNNNNN`` (day_obs ``YYYYMMDD``, seq_num
    ``NNNNN``; a leading 9 marks the one-snap reinterpretation of a two-snap
    exposure).  Needs no dimension records.

    Parameters
    ----------
    data_id : `lsst.daf.butler.DataCoordinate`
        Identifies at least the instrument.
    is_exposure : `bool`, optional
        Pack exposure IDs instead of visit IDs.
    n_detectors, n_seq_nums, n_days, day_obs_begin : `int`, optional
        The bounds (obs_lsst's defaults).
    """

    def __init__(
        self,
        data_id: DataCoordinate,
        is_exposure: bool = False,
        *,
        n_detectors: int = 256,
        n_seq_nums: int = 32768,
        n_days: int = 16384,
        day_obs_begin: int = 20100101,
    ):
        fixed = data_id.subset(data_id.universe.conform(["instrument"]))
        super().__init__(fixed, _observation_dimensions(fixed, is_exposure))
        self.is_exposure = is_exposure
        self.n_detectors, self.n_seq_nums, self.n_days = n_detectors, n_seq_nums, n_days
        self._day_begin = _day_ordinal(day_obs_begin)
        self._max_bits = (2 * n_days * n_seq_nums * n_detectors - 1).bit_length()

    @property
    def maxBits(self) -> int:  # noqa: N802 (DimensionPacker's name)
        return self._max_bits

    def pack_values(self, observation: int, detector: int) -> int:
        """Pack a visit (or exposure) ID and a detector ID.

        Raises
        ------
        ValueError
            If the ID is not ``[9]YYYYMMDDNNNNN`` with a valid date in range,
            or a value is out of bounds.
        """
        observation, detector = int(observation), int(detector)
        reinterpreted, exposure = divmod(observation, 10**_EXPOSURE_DIGITS)
        if reinterpreted not in (0, 9) or (reinterpreted and self.is_exposure):
            raise ValueError(f"{observation} is not a Rubin [9]YYYYMMDDNNNNN visit/exposure ID.")
        day_obs, seq_num = divmod(exposure, 10**5)
        try:
            day = _day_ordinal(day_obs) - self._day_begin
        except ValueError:
            raise ValueError(
                f"{observation} is not a Rubin YYYYMMDDNNNNN visit/exposure ID "
                f"(day_obs {day_obs} is not a date)."
            ) from None
        if not 0 <= day < self.n_days:
            raise ValueError(f"day_obs {day_obs} of {observation} is out of the packer's range.")
        if seq_num >= self.n_seq_nums:
            raise ValueError(f"seq_num {seq_num} of {observation} is not below {self.n_seq_nums}.")
        if not 0 <= detector < self.n_detectors:
            raise ValueError(f"Detector {detector} is out of bounds; expected <{self.n_detectors}.")
        days = day + self.n_days * (reinterpreted == 9)
        return detector + self.n_detectors * (seq_num + self.n_seq_nums * days)

    def unpack_values(self, packed: int) -> tuple[int, int]:
        """``(visit or exposure ID, detector)`` of a packed value."""
        rest, detector = divmod(int(packed), self.n_detectors)
        rest, seq_num = divmod(rest, self.n_seq_nums)
        reinterpreted, day = divmod(rest, self.n_days)
        observation = _day_obs(day + self._day_begin) * 10**5 + seq_num
        return observation + 9 * 10**_EXPOSURE_DIGITS * reinterpreted, detector

    def _pack(self, dataId: DataCoordinate) -> int:  # noqa: N803
        return self.pack_values(
            dataId["exposure" if self.is_exposure else "visit"], dataId["detector"]
        )

    def unpack(self, packedId: int) -> DataCoordinate:  # noqa: N803
        observation, detector = self.unpack_values(packedId)
        key = "exposure" if self.is_exposure else "visit"
        return DataCoordinate.standardize(
            self.fixed, **{key: observation, "detector": detector}, dimensions=self.dimensions
        )


class NoInstrumentPacker(DimensionPacker):
    """Packs the ``(visit, detector)`` of a data ID given without an instrument (39 bits).

    A Rubin visit ID (``[9]YYYYMMDDNNNNN``) is packed as `RubinVisitPacker`
    packs it, plus ``2**38``; any other visit ID below ``n_visits`` as
    ``detector + n_detectors * visit``.  Both kinds unpack with one packer,
    whatever the visit.
    """

    n_visits = 2**27
    n_detectors = 1000

    def __init__(self, data_id: DataCoordinate):
        fixed = data_id.subset(data_id.universe.conform(["instrument"]))
        super().__init__(fixed, _observation_dimensions(fixed, False))
        self._rubin = RubinVisitPacker(fixed)
        self._offset = 1 << self._rubin.maxBits  # above n_visits * n_detectors (< 2**37)

    @property
    def maxBits(self) -> int:  # noqa: N802
        return self._rubin.maxBits + 1

    def _pack(self, dataId: DataCoordinate) -> int:  # noqa: N803
        visit, detector = int(dataId["visit"]), int(dataId["detector"])
        try:
            if 0 <= visit < self.n_visits:
                if not 0 <= detector < self.n_detectors:
                    raise ValueError(f"detector {detector} is not in [0, {self.n_detectors})")
                return detector + self.n_detectors * visit
            return self._offset + self._rubin.pack_values(visit, detector)
        except ValueError as err:
            raise ValueError(
                f"Visit {visit} and detector {detector} cannot be packed without an "
                f"instrument ({err}; visits below {self.n_visits} with detectors below "
                f"{self.n_detectors}, or Rubin [9]YYYYMMDDNNNNN visits with detectors below "
                f"{self._rubin.n_detectors}): pass idGenerator=config.idGenerator.apply(dataId) "
                "with the instrument's data ID."
            ) from None

    def unpack(self, packedId: int) -> DataCoordinate:  # noqa: N803
        if packedId >= self._offset:
            visit, detector = self._rubin.unpack_values(packedId - self._offset)
        else:
            visit, detector = divmod(int(packedId), self.n_detectors)
        return DataCoordinate.standardize(
            self.fixed, visit=visit, detector=detector, dimensions=self.dimensions
        )


def _instrument_class_importable(data_id: DataCoordinate) -> bool:
    """Whether the instrument class named in the data ID's records can be imported."""
    if not data_id.hasRecords():
        return False
    record = data_id.records["instrument"]
    if record is None or not record.class_name:
        return False
    try:
        Instrument.from_data_id(data_id)
    except (ImportError, TypeError, AttributeError):
        return False
    return True


# --- fallback of lsst.meas.base's _id_generator.py -------------------------------------------


@dataclasses.dataclass
class _IdBits:
    """How the 63 bits of an ID are shared by release, packed data ID and counter."""

    packer: DimensionPacker
    n_releases: int = DEFAULT_N_RELEASES
    n_data_ids: int = dataclasses.field(init=False)
    counter_bits: int = dataclasses.field(init=False)
    n_counters: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.n_data_ids = 1 << self.packer.maxBits
        upper_bits = (self.n_releases - 1).bit_length() + self.packer.maxBits
        self.counter_bits = _ID_BITS - upper_bits
        if self.counter_bits < 1:
            raise ValueError(
                f"A {self.packer.maxBits}-bit packed data ID and {self.n_releases} releases "
                "leave no bits for the source counter."
            )
        self.n_counters = 1 << self.counter_bits


class IdGenerator:
    """IDs of a catalogue without a data ID: the counter alone (1..N).

    Fallback of `lsst.meas.base.IdGenerator`, same API.  Subclass
    `FullIdGenerator` embeds a packed data ID and a release ID; instances
    come from ``config.apply(data_id)`` (`BaseIdGeneratorConfig.apply`).
    """

    @property
    def catalog_id(self) -> int:
        """ID of the whole catalogue: packed data ID and release ID (0 here)."""
        return 0

    def __str__(self) -> str:
        return "[no data ID]"

    def make_table_id_factory(self):
        """An `lsst.afw.table.IdFactory` for this catalogue (needs afw)."""
        from lsst.afw.table import IdFactory

        return IdFactory.makeSimple()

    def make_source_catalog(self, schema):
        """An empty `lsst.afw.table.SourceCatalog` with this ID factory (needs afw)."""
        from lsst.afw.table import SourceCatalog, SourceTable

        return SourceCatalog(SourceTable.make(schema, self.make_table_id_factory()))

    def arange(self, *args, **kwargs) -> np.ndarray:
        """IDs for ``numpy.arange(*args, **kwargs)`` counters (start at 1, as afw's IdFactory)."""
        return np.arange(*args, **kwargs)

    @classmethod
    def unpacker_from_config(
        cls, config: BaseIdGeneratorConfig, fixed: DataCoordinate
    ) -> Callable[[int], tuple[int, DataCoordinate, int]]:
        """A callable unpacking an ID into ``(release_id, data_id, counter)``.

        Parameters
        ----------
        config : `BaseIdGeneratorConfig`
            The config the IDs were made with.
        fixed : `lsst.daf.butler.DataCoordinate`
            The instrument's data ID (with records where the packer needs them).
        """
        return cls.unpacker_from_dimension_packer(
            config._make_dimension_packer(fixed), config.n_releases
        )

    @classmethod
    def unpacker_from_dimension_packer(
        cls, dimension_packer: DimensionPacker, n_releases: int = DEFAULT_N_RELEASES
    ) -> Callable[[int], tuple[int, DataCoordinate, int]]:
        """A callable unpacking IDs made with ``dimension_packer``."""
        bits = _IdBits(dimension_packer, n_releases)

        def unpack(record_id: int) -> tuple[int, DataCoordinate, int]:
            rest, counter = divmod(int(record_id), bits.n_counters)
            rest, packed = divmod(rest, bits.n_data_ids)
            rest, release_id = divmod(rest, n_releases)
            if rest:
                raise ValueError(f"{record_id} is not an ID of this layout (extra factor {rest}).")
            return release_id, bits.packer.unpack(packed), counter

        return unpack


class FullIdGenerator(IdGenerator):
    """IDs embedding a packed data ID and a release ID.

    Fallback of `lsst.meas.base.FullIdGenerator`, same API and layout.

    Parameters
    ----------
    dimension_packer : `lsst.daf.butler.DimensionPacker`
        Packs the data ID.
    data_id : `lsst.daf.butler.DataCoordinate`
        The data ID embedded in every ID.
    release_id : `int`, optional
        Release ID embedded in every ID.
    n_releases : `int`, optional
        Number of release IDs reserved (1: none).

    Raises
    ------
    ValueError
        If ``release_id`` is not below ``n_releases`` (the IDs would not
        unpack, or leave int64).
    """

    def __init__(
        self,
        dimension_packer: DimensionPacker,
        data_id: DataCoordinate,
        release_id: int = DEFAULT_RELEASE_ID,
        n_releases: int = DEFAULT_N_RELEASES,
    ):
        if not 0 <= release_id < n_releases:
            raise ValueError(f"release_id={release_id} is not in [0, n_releases={n_releases}).")
        self._bits = _IdBits(dimension_packer, n_releases)
        self._release_id = release_id
        self._data_id = data_id.subset(self._bits.packer.dimensions)
        self._packed_data_id = self._bits.packer.pack(self._data_id)

    @property
    def data_id(self) -> DataCoordinate:
        """The data ID embedded in every ID."""
        return self._data_id

    @property
    def release_id(self) -> int:
        """The release ID embedded in every ID."""
        return self._release_id

    @property
    def catalog_id(self) -> int:
        return self._packed_data_id + self._bits.n_data_ids * self._release_id

    def __str__(self) -> str:
        return str(self.data_id)

    def make_table_id_factory(self):
        from lsst.afw.table import IdFactory

        return IdFactory.makeSource(self.catalog_id, self._bits.counter_bits)

    def arange(self, *args, **kwargs) -> np.ndarray:
        lower = super().arange(*args, **kwargs)
        over = np.asarray(lower) >= self._bits.n_counters
        if np.any(over):
            raise ValueError(
                f"{int(over.sum())} counter value(s) are not below {self._bits.n_counters} "
                f"({self._bits.counter_bits} counter bits) for data ID {self.data_id}."
            )
        return lower + np.int64(self.catalog_id * self._bits.n_counters)


class BaseIdGeneratorConfig(Config):
    """Configuration of an `IdGenerator`: release ID bits and the dimension packer.

    Fallback of `lsst.meas.base.BaseIdGeneratorConfig`, same fields and
    methods; subclasses implement ``_make_dimension_packer``.
    """

    release_id = Field(
        doc="Identifier for a data release or other version to embed in generated IDs. "
        "Zero is reserved for IDs with no embedded release identifier.",
        dtype=int,
        default=DEFAULT_RELEASE_ID,
        check=lambda x: x >= 0,
    )
    n_releases = Field(
        doc="Number of (contiguous, starting from zero) `release_id` values to reserve space "
        "for. One (not zero) is used to reserve no space.",
        dtype=int,
        default=DEFAULT_N_RELEASES,
        check=lambda x: x > 0,
    )

    @classmethod
    def make_field(cls, doc="Configuration for how to generate catalog IDs from data IDs."):
        """A `~lsst.pex.config.ConfigField` holding an instance of this class."""
        return ConfigField(doc, dtype=cls)

    def apply(self, data_id: DataCoordinate, **kwargs: Any) -> IdGenerator:
        """The `FullIdGenerator` of ``data_id`` (plus dimension values in ``kwargs``)."""
        packer = self._make_dimension_packer(data_id)
        return FullIdGenerator(
            packer,
            DataCoordinate.standardize(data_id, **kwargs, dimensions=packer.dimensions),
            release_id=self.release_id,
            n_releases=self.n_releases,
        )

    def _make_dimension_packer(self, data_id: DataCoordinate) -> DimensionPacker:
        raise NotImplementedError("Method is abstract.")

    def validate(self):
        super().validate()
        if self.release_id >= self.n_releases:
            raise FieldValidationError(
                type(self).release_id,
                self,
                f"release_id must be below n_releases={self.n_releases}",
            )


class _ObservationIdGeneratorConfig(BaseIdGeneratorConfig):
    """``packer`` and its default choice, shared by the visit and exposure configs."""

    packer = Instrument.make_dimension_packer_config_field()
    _is_exposure = False

    def _make_dimension_packer(self, data_id: DataCoordinate) -> DimensionPacker:
        if self.packer.name is not None or _instrument_class_importable(data_id):
            return self.packer.apply(data_id, is_exposure=self._is_exposure)
        if data_id["instrument"] in RUBIN_INSTRUMENTS:
            return RubinVisitPacker(data_id, is_exposure=self._is_exposure)
        bounds = self.packer["observation"]
        if not data_id.hasRecords() and None in (bounds.n_detectors, bounds.n_observations):
            raise ValueError(
                f"Packing data IDs of instrument {data_id['instrument']!r} needs its "
                "visit_max and detector_max: give an expanded data ID "
                "(butler.registry.expandDataId), or set packer.name='observation' and "
                "packer['observation'].n_observations and .n_detectors."
            )
        return self.packer.apply_with("observation", data_id, is_exposure=self._is_exposure)


class DetectorVisitIdGeneratorConfig(_ObservationIdGeneratorConfig):
    """Configuration of IDs from ``{visit, detector}`` data IDs (lsst.meas.base's fallback)."""


class DetectorExposureIdGeneratorConfig(_ObservationIdGeneratorConfig):
    """Configuration of IDs from ``{exposure, detector}`` data IDs (lsst.meas.base's fallback)."""

    _is_exposure = True


try:
    import lsst.meas.base as _meas_base
except ImportError:
    _meas_base = None

USING_MEAS_BASE = _meas_base is not None
"""Whether `active` is `lsst.meas.base` (else this module's fallback)."""

_FALLBACK = types.SimpleNamespace(
    IdGenerator=IdGenerator,
    FullIdGenerator=FullIdGenerator,
    BaseIdGeneratorConfig=BaseIdGeneratorConfig,
    DetectorVisitIdGeneratorConfig=DetectorVisitIdGeneratorConfig,
    DetectorExposureIdGeneratorConfig=DetectorExposureIdGeneratorConfig,
)

active = _meas_base if USING_MEAS_BASE else _FALLBACK
"""The ID-generator classes the tasks use: `lsst.meas.base` or this module's fallback."""


# --- what the tasks use ---------------------------------------------------------------------

_universe: DimensionUniverse | None = None


def _no_instrument_data_id(visit: int, detector: int) -> DataCoordinate:
    global _universe
    if _universe is None:
        _universe = DimensionUniverse()
    return DataCoordinate.standardize(
        instrument=UNKNOWN_INSTRUMENT, visit=int(visit), detector=int(detector), universe=_universe
    )


def _api_of(config):
    """`lsst.meas.base` or the fallback, whichever ``config`` belongs to."""
    if isinstance(config, BaseIdGeneratorConfig) or not USING_MEAS_BASE:
        return _FALLBACK
    return _meas_base


def notebook_id_generator(config, visit: int, detector: int):
    """The ID generator of a data ID given as ``visit`` and ``detector`` only.

    Packed by `NoInstrumentPacker`, or by ``config.packer`` when a packer is
    named there (e.g. ``"observation"`` with ``n_observations`` and
    ``n_detectors`` set); the instrument is `UNKNOWN_INSTRUMENT`.

    Parameters
    ----------
    config : `DetectorVisitIdGeneratorConfig` (or lsst.meas.base's)
        The task's ``config.idGenerator``: release ID bits and packer.

    Raises
    ------
    ValueError
        If the data ID cannot be packed.
    """
    data_id = _no_instrument_data_id(visit, detector)
    if config.packer.name is not None:
        return config.apply(data_id)
    return _api_of(config).FullIdGenerator(
        NoInstrumentPacker(data_id),
        data_id,
        release_id=config.release_id,
        n_releases=config.n_releases,
    )


def unpacker_from_config(
    config, fixed: DataCoordinate | None = None
) -> Callable[[int], tuple[int, DataCoordinate, int]]:
    """A callable unpacking a catalogue ID into ``(release_id, data_id, counter)``.

    Parameters
    ----------
    config : `DetectorVisitIdGeneratorConfig` (or lsst.meas.base's)
        The ``idGenerator`` config the IDs were made with (e.g. from the
        butler's ``<label>_config`` dataset).
    fixed : `lsst.daf.butler.DataCoordinate`, optional
        The instrument's data ID (expanded, as from
        ``butler.registry.expandDataId(instrument=...)``) for IDs made in a
        pipeline; `None` for IDs made by ``run(visit=..., detector=...)``.
    """
    api = _api_of(config)
    if fixed is not None:
        return api.IdGenerator.unpacker_from_config(config, fixed)
    data_id = _no_instrument_data_id(0, 0)
    if config.packer.name is not None:
        packer = config._make_dimension_packer(data_id)
    else:
        packer = NoInstrumentPacker(data_id)
    return api.IdGenerator.unpacker_from_dimension_packer(packer, config.n_releases)


@dataclasses.dataclass(frozen=True)
class CatalogIds:
    """The ID generator of one catalogue and the data ID of its ``visit``/``detector`` columns."""

    generator: Any
    visit: int | None = None
    detector: int | None = None

    def arange(self, n: int) -> np.ndarray:
        """IDs of ``n`` rows: counters 1..n (what afw's IdFactory would give)."""
        return np.asarray(self.generator.arange(1, n + 1, dtype=np.int64), dtype=np.int64)


def catalog_ids(config, id_generator=None, visit: int | None = None, detector: int | None = None):
    """The `CatalogIds` of a task run.

    Parameters
    ----------
    config : `DetectorVisitIdGeneratorConfig` (or lsst.meas.base's)
        The task's ``config.idGenerator``.
    id_generator : `IdGenerator` (or lsst.meas.base's), optional
        From ``config.idGenerator.apply(dataId)`` (what ``runQuantum``
        passes).  ``visit``/``detector`` default to its data ID's.
    visit, detector : `int`, optional
        The data ID of a notebook run; with both and no ``id_generator``,
        `notebook_id_generator` makes the generator.  Neither (or only one of
        them): IDs 1..N, as without a data ID.

    Raises
    ------
    ValueError
        If ``visit``/``detector`` contradict ``id_generator``'s data ID, or
        the data ID cannot be packed.
    """
    if id_generator is None:
        if visit is not None and detector is not None:
            id_generator = notebook_id_generator(config, visit, detector)
        else:
            id_generator = _api_of(config).IdGenerator()
        return CatalogIds(id_generator, visit, detector)
    data_id = getattr(id_generator, "data_id", None)
    values = {"visit": visit, "detector": detector}
    for name, given in values.items():
        embedded = data_id.get(name) if data_id is not None else None
        if given is None:
            values[name] = embedded
        elif embedded is not None and int(given) != int(embedded):
            raise ValueError(f"{name}={given} contradicts the ID generator's data ID {data_id}.")
    return CatalogIds(id_generator, values["visit"], values["detector"])
