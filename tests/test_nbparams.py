import pytest

from lambda_blocks.nbparams import validate_notebook

GOOD = dict(preset="smoke", arm="lmi", size="tiny", seed=0, out_root="runs", overrides="{}")


def test_valid_parameters_pass_and_imports_are_ignored():
    import json

    ns = dict(GOOD, json=json, __name__="x", In=[], Out={})
    assert validate_notebook("10_train_inpaint", ns)["arm"] == "lmi"


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(sede=1), NameError, "sede"),
        (dict(seed="0"), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed"),
        (dict(arm="gla"), ValueError, "choose one of"),
        (dict(preset="huge"), ValueError, "preset"),
    ],
)
def test_bad_parameters_fail_at_once(change, exc, match):
    with pytest.raises(exc, match=match):
        validate_notebook("10_train_inpaint", {**GOOD, **change})


def test_missing_parameter_and_csv_lists():
    with pytest.raises(NameError, match="missing"):
        validate_notebook("10_train_inpaint", {k: v for k, v in GOOD.items() if k != "seed"})
    prof = dict(preset="smoke", mode="block", variants="vanilla, lmi", arms="lmi", sizes="16,32", unet_sizes="tiny",
                unet_image_size=32, width=64, threads=1, out_dir="x", out_root="y")
    assert validate_notebook("20_profile", prof)["sizes"] == [16, 32]
    with pytest.raises(ValueError, match="flash"):
        validate_notebook("20_profile", {**prof, "variants": "vanilla,flash"})
    with pytest.raises(ValueError, match="sizes"):
        validate_notebook("20_profile", {**prof, "sizes": "16,big"})


def test_the_walkthrough_is_checked_by_the_one_validator():
    """Notebook 00 goes through validate_notebook like every other notebook (a misspelt injected
    name is an error), then explain.validate_params checks the ranges."""
    import pytest

    from lambda_blocks import explain as E
    from lambda_blocks.nbparams import validate_notebook

    ns = E.WalkthroughParams().as_dict()
    assert E.validate_params(**validate_notebook("00_lambda_walkthrough", ns)) == E.WalkthroughParams()
    with pytest.raises(NameError, match="hieght"):
        validate_notebook("00_lambda_walkthrough", {**ns, "hieght": 3})
    with pytest.raises(TypeError, match="'r'"):
        validate_notebook("00_lambda_walkthrough", {**ns, "r": "5"})
