"""Parity with the official code itself (baofff/U-ViT ``libs/uvit.py``, ``libs/uvit_t2i.py``).

The official code is not shipped with fastuvit; set FASTUVIT_OFFICIAL_REPO to a checkout of it to
run these. The acceptance check: an official model with random weights, saved with
``torch.save(model.state_dict())``, loads strictly into fastuvit's model built with the same
arguments, and both give the same outputs to 1e-4 relative error in fp32 on CPU.
"""
import contextlib
import io
import os
import sys
import warnings

import pytest
import torch

import fastuvit
from model_cases import CASES, call, make_inputs, rel_err

OFFICIAL_REPO = os.environ.get("FASTUVIT_OFFICIAL_REPO")
pytestmark = pytest.mark.skipif(not OFFICIAL_REPO, reason="set FASTUVIT_OFFICIAL_REPO to an official U-ViT checkout")


@pytest.fixture(scope="module")
def official():
    sys.path.insert(0, OFFICIAL_REPO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its attention mode
            import libs.uvit
            import libs.uvit_t2i
    finally:
        sys.path.remove(OFFICIAL_REPO)
    return libs.uvit, libs.uvit_t2i


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_checkpoint_loads_and_matches(case, official, tmp_path):
    variant, kwargs = CASES[case]
    official_cls = official[1].UViT if variant == "uvit_t2i" else official[0].UViT
    ours_cls = fastuvit.UViTT2I if variant == "uvit_t2i" else fastuvit.UViT
    torch.manual_seed(0)
    theirs = official_cls(**kwargs).eval()
    path = tmp_path / "nnet.pth"
    torch.save(theirs.state_dict(), path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the qk_scale notice
        ours = ours_cls(**kwargs).eval()
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)

    x, t, cond = make_inputs(variant, kwargs)
    with torch.no_grad():
        expected = call(theirs, x, t, cond)
        got = call(ours, x, t, cond)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-4


def test_same_seed_gives_official_weights(official):
    variant, kwargs = CASES["class_cond"]
    torch.manual_seed(3)
    theirs = official[0].UViT(**kwargs)
    torch.manual_seed(3)
    ours = fastuvit.UViT(**kwargs)
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert list(theirs_sd) == list(ours_sd)
    for k in theirs_sd:
        assert torch.equal(theirs_sd[k], ours_sd[k]), k


def test_apply_qk_scale_matches_official_math_path(official, monkeypatch):
    monkeypatch.setattr(official[0], "ATTENTION_MODE", "math")
    kwargs = dict(CASES["uncond"][1], qk_scale=0.3)
    torch.manual_seed(0)
    theirs = official[0].UViT(**kwargs).eval()
    ours = fastuvit.UViT(**kwargs, apply_qk_scale=True).eval()
    ours.load_state_dict(theirs.state_dict())
    x, t, _ = make_inputs("uvit", kwargs)
    with torch.no_grad():
        assert rel_err(ours(x, t), theirs(x, t)) <= 1e-4
