"""Conditioning nodes transform CONDITIONING lists as ComfyUI's do."""
import torch

from nodes import conditioning as C


def cond(value, tokens=77, pooled=None):
    opts = {} if pooled is None else {"pooled_output": torch.full((1, 4), float(pooled))}
    return [[torch.full((1, tokens, 8), float(value)), opts]]


def test_combine_concat_average():
    a, b = cond(1.0, pooled=1.0), cond(3.0, tokens=154, pooled=3.0)
    (comb,) = C.ConditioningCombine().combine(a, b)
    assert len(comb) == 2 and comb[0] is a[0]
    (cat,) = C.ConditioningConcat().concat(a, b)
    assert cat[0][0].shape == (1, 231, 8)
    (avg,) = C.ConditioningAverage().addWeighted(a, b, 0.25)
    torch.testing.assert_close(avg[0][0], torch.full((1, 77, 8), 0.25 * 1 + 0.75 * 3))
    torch.testing.assert_close(avg[0][1]["pooled_output"], torch.full((1, 4), 2.5))
    # a shorter source is padded with zero tokens
    (avg2,) = C.ConditioningAverage().addWeighted(b, a, 0.5)
    torch.testing.assert_close(avg2[0][0][:, 77:], torch.full((1, 77, 8), 1.5))


def test_area_mask_strength_range_do_not_mutate_input():
    a = cond(1.0)
    (area,) = C.ConditioningSetArea().append(a, 256, 128, 64, 32, 0.7)
    assert area[0][1] == {"area": (16, 32, 4, 8), "strength": 0.7, "set_area_to_bounds": False}
    assert a[0][1] == {}
    (pct,) = C.ConditioningSetAreaPercentage().append(a, 0.5, 0.25, 0.1, 0.2, 1.0)
    assert pct[0][1]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    (mask,) = C.ConditioningSetMask().append(a, torch.ones(64, 64), "mask bounds", 0.5)
    assert mask[0][1]["mask"].shape == (1, 64, 64) and mask[0][1]["set_area_to_bounds"] is True
    (rng,) = C.ConditioningSetTimestepRange().set_range(a, 0.2, 0.8)
    assert (rng[0][1]["start_percent"], rng[0][1]["end_percent"]) == (0.2, 0.8)


def test_zero_out_keeps_shapes():
    (z,) = C.ConditioningZeroOut().zero_out(cond(2.0, pooled=5.0))
    assert not z[0][0].any() and z[0][0].shape == (1, 77, 8)
    assert not z[0][1]["pooled_output"].any()


async def test_average_display_name_quirk(client):
    info = (await (await client.get("/object_info/ConditioningAverage")).json())["ConditioningAverage"]
    assert info["display_name"] == "ConditioningAverage"
