"""CrowdsourceFitConfig against the engine's FitParams.

The task layer's fit config is written out field by field; these tests keep
it in step with `~lsst.meas.crowdsource.engine.FitParams`: the same
parameters (camelCase), defaults, types and descriptions, a `toParams` that
passes every value on, and validation errors that name the field at fault.
"""

from __future__ import annotations

import ast
import dataclasses
import pickle
import typing
from pathlib import Path

import lsst.pex.config as pexConfig
import pytest

from lsst.meas.crowdsource import CrowdsourcePhotometryConfig
from lsst.meas.crowdsource import config as config_module
from lsst.meas.crowdsource.config import CrowdsourceFitConfig, camel_case
from lsst.meas.crowdsource.engine import FitParams, InputError
from lsst.meas.crowdsource.engine.params import FitParamsError

PARAMS = dataclasses.fields(FitParams)
HINTS = typing.get_type_hints(FitParams)
CONFIG_FIELDS = {
    name: getattr(CrowdsourceFitConfig, name) for name in CrowdsourceFitConfig().keys()
}
MAX_DOC_LENGTH = 300  # a sentence or two; measurements belong in benchmarks/README.md


def _config_field(param: dataclasses.Field) -> pexConfig.Field:
    return CONFIG_FIELDS[camel_case(param.name)]


def _other_value(param: dataclasses.Field):
    """A value of the parameter's type that differs from its default."""
    default = param.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 2
    if isinstance(default, float):
        return 2 * default + 0.25
    if isinstance(default, tuple):
        return default + (default[-1] + 2,)
    if param.name == "solver":
        return "cg" if default == "direct" else "direct"
    if param.name == "sky_method":
        return "spline" if default == "boxed" else "boxed"
    raise AssertionError(f"no other value for {param.name}={default!r}")


def test_camel_case():
    assert camel_case("n_iter") == "nIter"
    assert camel_case("psf_max_median_loss") == "psfMaxMedianLoss"
    assert camel_case("threshold") == "threshold"


def test_same_parameters():
    assert set(CONFIG_FIELDS) == {camel_case(p.name) for p in PARAMS}


def _static_fields() -> dict[str, dict[str, object]]:
    """The fields written in the body of CrowdsourceFitConfig in config.py.

    By name, in source order: the literal keyword arguments of each
    ``pexConfig.Field[...]( ...)`` / ``pexConfig.ListField[...]( ...)`` call,
    as an IDE or a doc tool reading the source sees them.
    """
    tree = ast.parse(Path(config_module.__file__).read_text())
    (cls,) = (
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CrowdsourceFitConfig"
    )
    out = {}
    for node in cls.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        assert isinstance(func, ast.Subscript), ast.unparse(func)  # Field[int], not Field
        (target,) = node.targets
        out[target.id] = dict(
            {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords if kw.arg != "dtype"},
            field=ast.unparse(func.value),
            type=ast.unparse(func.slice),
            dtype=ast.unparse(next(kw.value for kw in node.value.keywords if kw.arg == "dtype")),
        )
    return out


def test_fields_are_written_out():
    """Each field is a literal, typed definition in the class body, in FitParams order."""
    static = _static_fields()
    assert list(static) == [camel_case(p.name) for p in PARAMS]
    for param in PARAMS:
        written = static[camel_case(param.name)]
        default = param.default
        if isinstance(default, tuple):
            assert written["field"] == "pexConfig.ListField"
            assert written["default"] == list(default)
        else:
            assert written["field"] == "pexConfig.Field"
            assert written["default"] == default
        assert written["type"] == written["dtype"]
        assert written["doc"] == param.metadata["doc"]


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_same_default(param):
    value = getattr(CrowdsourceFitConfig(), camel_case(param.name))
    if isinstance(param.default, tuple):
        assert tuple(value) == param.default
    else:
        assert value == param.default
        assert type(value) is type(param.default)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_compatible_dtype(param):
    field = _config_field(param)
    hint = HINTS[param.name]
    if typing.get_origin(hint) is tuple:
        assert isinstance(field, pexConfig.ListField)
        assert typing.get_args(hint) == (field.itemtype, Ellipsis)
    else:
        assert type(field) is pexConfig.Field
        assert field.dtype is hint


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_same_short_doc(param):
    doc = param.metadata["doc"]
    assert doc.strip()
    assert len(doc) <= MAX_DOC_LENGTH
    assert _config_field(param).doc == doc


def test_defaults_give_default_params():
    assert CrowdsourceFitConfig().toParams() == FitParams()


def test_to_params_passes_every_value():
    config = CrowdsourceFitConfig()
    expected = {}
    for param in PARAMS:
        value = _other_value(param)
        setattr(config, camel_case(param.name), list(value) if isinstance(value, tuple) else value)
        expected[param.name] = value
    params = config.toParams()
    assert params == FitParams(**expected)
    assert isinstance(params.stamp_sizes, tuple)


def test_default_config_is_valid():
    CrowdsourceFitConfig().validate()
    CrowdsourcePhotometryConfig().validate()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("psfSnrFloor", -0.1, "psf_snr_floor must be >= 0"),
        ("mergeRadius", -1.0, "merge_radius must be >= 0"),
        ("minSeparation", -1.0, "min_separation must be >= 0"),
        ("forcedMinQf", 1.5, r"forced_min_qf must be in \[0, 1\]"),
        ("stampSizes", [0, 0, 40], "stamp size 40 must be 0 or an odd number"),
        ("solver", "lu", "solver must be 'direct', 'superlu' or 'cg'"),
        ("skyMethod", "mesh", "sky_method must be 'boxed', 'spline' or 'adaptive'"),
        ("skySplineSpacing", 2.0, "sky_spline_spacing must be at least 3"),
        ("tileSize", 32, "tile_size must be at least 64"),
        ("nIter", 0, "n_iter must be >= 1"),
    ],
)
def test_validation_names_the_wrong_field(name, value, message):
    config = CrowdsourceFitConfig()
    setattr(config, name, value)
    with pytest.raises(pexConfig.FieldValidationError, match=message) as info:
        config.validate()
    assert info.value.fieldName == name


def test_validation_through_the_task_config():
    config = CrowdsourcePhotometryConfig()
    config.fit.mergeRadius = -1.0
    with pytest.raises(pexConfig.FieldValidationError, match="merge_radius") as info:
        config.validate()
    assert info.value.fieldName == "mergeRadius"
    assert info.value.fullname.endswith("fit.mergeRadius")


def test_several_wrong_fields():
    """The first wrong field is named; the message lists every problem."""
    config = CrowdsourceFitConfig()
    config.mergeRadius = -1.0
    config.psfSnrFloor = -1.0
    with pytest.raises(pexConfig.FieldValidationError) as info:
        config.validate()
    assert info.value.fieldName == "psfSnrFloor"
    assert "merge_radius must be >= 0" in str(info.value)


def test_params_error_carries_the_fields():
    params = FitParams(merge_radius=-1.0, stamp_sizes=(0, 4, 40))
    with pytest.raises(FitParamsError) as info:
        params.validate()
    err = info.value
    assert isinstance(err, InputError) and isinstance(err, ValueError)
    assert err.fields == ("stamp_sizes", "merge_radius")
    assert err.problems["stamp_sizes"] == (
        "stamp size 4 must be 0 or an odd number >= 3; "
        "stamp size 40 must be 0 or an odd number >= 3"
    )
    assert str(err).startswith("Invalid fit parameters: stamp size 4")
    copy = pickle.loads(pickle.dumps(err))
    assert copy.problems == err.problems and str(copy) == str(err)


def test_every_rule_names_a_parameter():
    """Every rule of FitParams.validate reports a real parameter (hence a config field)."""
    wrong = FitParams(
        n_iter=0,
        threshold=0.0,
        bright_factor=2.0,
        sky_box=1,
        stamp_sizes=(),
        psf_order=9,
        psf_core_size=4,
        tile_size=1,
        tile_overlap=-1,
        solver="?",
        n_processes=0,
        max_shift=0.0,
        psf_snr_floor=-1.0,
        saturated_exclusion=-1.0,
        min_separation=-1.0,
        merge_radius=-1.0,
        forced_min_qf=-1.0,
    )
    problems = wrong.problems()
    assert len(problems) == 17
    assert set(problems) <= {p.name for p in PARAMS}
    assert FitParams().problems() == {}
