"""pex_config view of the engine's `~lsst.meas.crowdsource.engine.FitParams`.

Every engine parameter becomes a documented camelCase config field
(``n_iter`` -> ``nIter``), generated from `FitParams` so that the engine
stays the single place where a parameter, its default and its meaning are
defined.
"""

from __future__ import annotations

import dataclasses
import typing

import lsst.pex.config as pexConfig

from .engine import FitParams, InputError

__all__ = ["CrowdsourceFitConfig", "camel_case"]


def camel_case(name: str) -> str:
    """``snake_case`` -> ``camelCase``."""
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _make_fields() -> dict[str, pexConfig.Field]:
    hints = typing.get_type_hints(FitParams)
    out = {}
    for f in dataclasses.fields(FitParams):
        doc = f.metadata["doc"]
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            out[camel_case(f.name)] = pexConfig.ListField(dtype=int, default=list(f.default),
                                                          doc=doc)
        else:
            out[camel_case(f.name)] = pexConfig.Field(dtype=hint, default=f.default, doc=doc)
    return out


def _to_params(self) -> FitParams:
    """The engine parameters these config values stand for."""
    kw = {}
    for f in dataclasses.fields(FitParams):
        value = getattr(self, camel_case(f.name))
        kw[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return FitParams(**kw)


def _validate(self):
    pexConfig.Config.validate(self)
    try:
        self.toParams().validate()
    except InputError as err:
        raise pexConfig.FieldValidationError(
            CrowdsourceFitConfig.nIter, self, str(err)) from None


CrowdsourceFitConfig = type(
    "CrowdsourceFitConfig", (pexConfig.Config,),
    dict(_make_fields(), toParams=_to_params, validate=_validate,
         __module__=__name__,
         __doc__="Parameters of crowdsource's iterative simultaneous fit "
                 "(see `lsst.meas.crowdsource.engine.FitParams`)."))
