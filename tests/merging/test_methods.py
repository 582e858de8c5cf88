"""The merge math on small tensors, the registry, and the streaming over safetensors files (fast, no model)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llamaduo.config import MergeParams, Params
from llamaduo.merging import MERGERS, from_params, get_merger
from llamaduo.merging.checkpoint import merge_checkpoints, weight_map


def subs(k=3, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + torch.randn(shape, generator=g) for _ in range(k)]


def test_weighted_average_equal_weights_is_the_mean():
    base, models = subs()
    merged = get_merger("weighted_average").merge(base, models, "w")
    assert torch.allclose(merged, torch.stack(models).mean(0), atol=1e-6)


def test_weighted_average_uses_the_given_weights_and_checks_their_count():
    base, models = subs(k=2)
    merged = get_merger("weighted_average", weights=[1.0, 0.0]).merge(base, models, "w")
    assert torch.allclose(merged, models[0], atol=1e-6)
    with pytest.raises(ValueError, match="merge.weights"):
        get_merger("weighted_average", weights=[1.0]).merge(base, models, "w")


def test_selection_picks_only_values_present_at_that_position_and_mixes_submodels():
    base, models = subs(k=3, shape=(40, 30))
    merged = get_merger("parameter_selection", seed=1).merge(base, models, "w")
    stacked = torch.stack(models)
    hits = stacked == merged
    assert hits.any(0).all()  # every element is some sub-model's value at that position, bit for bit
    share = hits.float().mean((1, 2))
    assert (share > 0.25).all() and (share < 0.42).all()  # ~1/3 each: equal probability


def test_resample_replaces_unchanged_positions_when_another_submodel_changed_them():
    base = torch.zeros(200)
    changed = torch.full((200,), 5.0)
    models = [base.clone(), base.clone(), changed]  # only sub-model 2 moved anything
    plain = get_merger("parameter_selection", seed=0).merge(base, models, "w")
    resampled = get_merger("parameter_selection", seed=0, resample=9).merge(base, models, "w")
    assert (plain == 0).float().mean() > 0.5  # without resampling ~2/3 of the picks are unchanged
    # after 9 redraws an element stays unchanged with probability (2/3)^10 ~ 1.7%
    assert (resampled == 5.0).float().mean() > 0.9
    assert ((resampled == 0) | (resampled == 5.0)).all()
    # where no sub-model changed a position, resampling leaves the base value
    same = [base.clone(), base.clone()]
    assert torch.equal(get_merger("parameter_selection", resample=3).merge(base, same, "w"), base)


def test_resample_keeps_positions_the_first_pick_already_changed():
    base = torch.zeros(500)
    models = [torch.ones(500), torch.full((500,), 2.0)]  # every element changed in both
    assert torch.equal(get_merger("parameter_selection", seed=3).merge(base, models, "w"),
                       get_merger("parameter_selection", seed=3, resample=4).merge(base, models, "w"))


@pytest.mark.parametrize("name,opts", [("parameter_selection", {"resample": 2}), ("weighted_average", {})])
def test_same_seed_same_result_other_seed_other_draws(name, opts):
    base, models = subs(k=4, shape=(30, 30))
    a = get_merger(name, seed=7, **opts).merge(base, models, "layer.0")
    b = get_merger(name, seed=7, **opts).merge(base, models, "layer.0")
    assert torch.equal(a, b)
    if name == "parameter_selection":
        assert not torch.equal(a, get_merger(name, seed=8, **opts).merge(base, models, "layer.0"))
        assert not torch.equal(a, get_merger(name, seed=7, **opts).merge(base, models, "layer.1"))  # per-tensor draws


def test_selection_keeps_dtype_and_zero_dim_tensors():
    base = torch.tensor(1.0, dtype=torch.bfloat16)
    out = get_merger("parameter_selection", resample=1).merge(base, [torch.tensor(2.0, dtype=torch.bfloat16)] * 2, "s")
    assert out.dtype == torch.bfloat16 and out.shape == () and out.item() == 2.0


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="parameter_selection, weighted_average"):
        get_merger("ties")


def test_params_literal_matches_the_registry_and_options_are_checked():
    assert set(MergeParams.model_fields["method"].annotation.__args__[0].__args__) == set(MERGERS)
    assert from_params(MergeParams(method="parameter_selection", resample=2, seed=5)).resample == 2
    with pytest.raises(ValueError, match="resample"):
        MergeParams(method="weighted_average", resample=1)
    with pytest.raises(ValueError, match="weights"):
        MergeParams(method="parameter_selection", weights=[0.5, 0.5])
    assert Params().merge.method is None and Params().train.submodels == 1


def _checkpoint(d, tensors, other="cfg"):
    d.mkdir(parents=True)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(other)
    return d


def test_streaming_merge_over_files_shards_and_copies_the_rest(tmp_path):
    base = {"a": torch.zeros(64, 64), "b": torch.zeros(128), "ids": torch.arange(4)}
    m1 = {"a": torch.ones(64, 64), "b": torch.zeros(128), "ids": torch.arange(4)}
    m2 = {"a": torch.full((64, 64), 3.0), "b": torch.ones(128), "ids": torch.arange(4)}
    dirs = [_checkpoint(tmp_path / n, t) for n, t in (("base", base), ("m1", m1), ("m2", m2))]
    stats = merge_checkpoints(dirs[0], dirs[1:], tmp_path / "out", get_merger("weighted_average"), shard_mb=0)
    assert stats["tensors"] == 3 and stats["params"] == 64 * 64 + 128 + 4
    wm = weight_map(tmp_path / "out")
    assert len(set(wm.values())) == 3  # shard_mb=0: one tensor per shard, with an index
    with safe_open(wm["a"], framework="pt") as f:
        assert torch.allclose(f.get_tensor("a"), torch.full((64, 64), 2.0))
    with safe_open(wm["ids"], framework="pt") as f:
        assert torch.equal(f.get_tensor("ids"), torch.arange(4))
    assert (tmp_path / "out" / "config.json").read_text() == "cfg"


def test_streaming_merge_refuses_models_of_another_base(tmp_path):
    b = _checkpoint(tmp_path / "base", {"a": torch.zeros(2)})
    m = _checkpoint(tmp_path / "m", {"z": torch.zeros(2)})
    with pytest.raises(ValueError, match="different tensors"):
        merge_checkpoints(b, [m, m], tmp_path / "out", get_merger("weighted_average"))
