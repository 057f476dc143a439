"""Tests of `lsst.meas.crowdsource.io.planes`: the mask-plane table and boolean planes."""

from __future__ import annotations

import numpy as np
import pytest

from lsst.meas.crowdsource.catalog import PIXEL_FLAG_PLANES
from lsst.meas.crowdsource.io.planes import (
    DEFAULT_MASK_PLANES,
    boolean_planes,
    check_plane_bits,
    plane_bits_from_keywords,
    readonly_plane,
    with_legacy_names,
)


def test_boolean_planes_match_the_bits():
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 1 << 9, size=(17, 23)).astype(np.int32)
    planes = boolean_planes(mask, DEFAULT_MASK_PLANES)
    assert list(planes) == list(DEFAULT_MASK_PLANES)
    for name, bit in DEFAULT_MASK_PLANES.items():
        assert planes[name].dtype == bool and planes[name].shape == mask.shape
        np.testing.assert_array_equal(planes[name], (mask & (1 << bit)) != 0, err_msg=name)


@pytest.mark.parametrize("dtype", ["<i4", ">i4", "u2", "i8"])
def test_boolean_planes_any_integer_dtype(dtype):
    mask = np.array([[0, 1], [2, 3]], dtype=dtype)
    planes = boolean_planes(mask, {"A": 0, "B": 1})
    np.testing.assert_array_equal(planes["A"], [[False, True], [False, True]])
    np.testing.assert_array_equal(planes["B"], [[False, False], [True, True]])


def test_bit_31_of_an_afw_mask_is_the_sign_bit():
    mask = np.array([np.iinfo(np.int32).min, 1, -1], dtype=np.int32)
    np.testing.assert_array_equal(boolean_planes(mask, {"TOP": 31})["TOP"], [True, False, True])


def test_stray_bits_are_dropped_and_bad_bits_refused():
    mask = np.full((3, 3), 1 << 20, dtype=np.int32)
    assert not boolean_planes(mask, {"BAD": 0})["BAD"].any()
    with pytest.raises(ValueError, match="outside"):
        boolean_planes(mask.astype(np.uint8), {"HIGH": 8})
    with pytest.raises(TypeError, match="integer"):
        boolean_planes(mask.astype(float), {"BAD": 0})


def test_planes_are_read_only_and_empty_planes_are_free():
    mask = np.zeros((50, 60), dtype=np.int32)
    mask[3, 4] = 1
    planes = boolean_planes(mask, {"BAD": 0, "SAT": 1})
    for plane in planes.values():
        assert not plane.flags.writeable
    assert planes["SAT"].strides == (0, 0) and planes["SAT"].shape == mask.shape
    assert planes["BAD"][3, 4] and planes["BAD"].sum() == 1
    with pytest.raises(ValueError):
        planes["BAD"][0, 0] = True
    values = np.zeros((2, 2), dtype=np.uint8)
    assert not readonly_plane(values).any()
    assert values.flags.writeable  # a non-boolean input is converted, not frozen


def test_legacy_names_share_the_array_and_never_shadow_a_plane():
    sat = readonly_plane(np.eye(3))
    planes = with_legacy_names({"SATURATED": sat, "BAD": sat, "CR": sat, "COSMIC_RAY": ~sat})
    assert planes["SAT"] is planes["SATURATED"]
    assert planes["CR"] is sat  # the mask's own CR plane is kept
    assert "INTRP" not in planes  # only planes the mask has


def test_the_plane_table_covers_the_pixel_flags():
    # catalog.PIXEL_FLAG_PLANES (afw plane -> pixelFlags_ column) speaks afw names, which
    # every afw or make_ccddata mask declares by default (test_adapters_images checks
    # that a VisitImage has them too).
    assert set(PIXEL_FLAG_PLANES) <= set(DEFAULT_MASK_PLANES)


def test_plane_keywords_and_their_rules():
    header = {"MP_SAT": 1, "mp_BAD": 0, "OTHER": 3, "MP_CR": 3}
    assert plane_bits_from_keywords(header) == {"BAD": 0, "SAT": 1, "CR": 3}
    assert list(plane_bits_from_keywords(header)) == ["BAD", "SAT", "CR"]  # ordered by bit
    with pytest.raises(ValueError, match="share bit 0"):
        check_plane_bits({"BAD": 0, "SAT": 0})
    with pytest.raises(ValueError, match=r"must be in \[0, 31\]"):
        check_plane_bits({"BAD": 32})
    with pytest.raises(ValueError, match="must be an integer"):
        check_plane_bits({"BAD": True})
    with pytest.raises(ValueError, match="invalid mask plane name"):
        check_plane_bits({"TWO WORDS": 1})
    with pytest.raises(TypeError, match="mapping"):
        check_plane_bits([("BAD", 0)])
