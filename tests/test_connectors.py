"""One suite that every registered connector passes; a new registry entry is covered automatically."""
import inspect

import pytest
import torch

from connectorlab.connectors import CONNECTORS, FAMILIES, MECHANISMS, build_connector
from connectorlab.connectors.describe import describe_zoo
from connectorlab.registry import UnknownNameError

V, L, GRID = 32, 64, (8, 8)


def tiny(name, **extra):
    cls = CONNECTORS[name]
    opts = dict(cls.tiny_options)
    params = inspect.signature(cls.__init__).parameters
    if "num_tokens" in params:
        opts["num_tokens"] = 16
    opts.update(extra)
    return build_connector(name, V, L, GRID, **opts)


def inputs(conn, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, conn.num_patches, V, generator=g)
    n_levels = conn.extra_feature_levels
    levels = torch.randn(batch, conn.num_patches, n_levels * V, generator=g) if n_levels else None
    return x, levels


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_shape_and_token_count(name):
    conn = tiny(name)
    assert conn.family in FAMILIES and conn.mechanism in MECHANISMS
    x, levels = inputs(conn)
    out = conn(x, levels)
    assert out.shape == (2, conn.num_output_tokens, L)
    assert torch.isfinite(out).all()
    if conn.family == "preserving":
        assert conn.num_output_tokens == conn.num_patches
    else:
        assert conn.num_output_tokens < conn.num_patches


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_weights_from_another_resolution_load(name):
    """Stage-1 weights made at one image size must seed a model at another (the tower resizes its table too)."""
    params = inspect.signature(CONNECTORS[name].__init__).parameters
    knob = next(({k: 2} for k in ("factor", "scale") if k in params), {"num_tokens": 16} if "num_tokens" in params else {})
    opts = {**CONNECTORS[name].tiny_options, **knob}  # the same options; a stride keeps its meaning on any grid
    torch.manual_seed(0)
    src = build_connector(name, V, L, GRID, **opts)
    torch.manual_seed(1)
    dst = build_connector(name, V, L, (12, 12), **opts)
    dst.load_state_dict(src.state_dict())
    x, levels = inputs(dst)
    assert dst(x, levels).shape == (2, dst.num_output_tokens, L)
    for table in dst.grid_tables:
        resized = getattr(dst, table)
        assert resized.shape[1] == 144
        assert torch.allclose(resized.mean(), getattr(src, table).mean(), atol=0.01)  # the same table, resampled


def test_grid_table_of_a_non_square_grid_is_refused():
    src = build_connector("c_abstractor", V, L, (4, 8), num_tokens=4, **CONNECTORS["c_abstractor"].tiny_options)
    dst = tiny("c_abstractor")
    with pytest.raises(ValueError, match="pos of shape \\[1, 32, 32\\]"):
        dst.load_state_dict(src.state_dict())


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    conn = tiny(name)
    x, levels = inputs(conn)
    conn(x, levels).pow(2).mean().backward()
    dead = [n for n, p in conn.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_same_seed_same_output(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        conn = tiny(name)
        x, levels = inputs(conn)
        torch.manual_seed(7)
        outs.append(conn(x, levels))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_batch_does_not_change_answers(name):
    torch.manual_seed(0)
    conn = tiny(name).eval()
    x, levels = inputs(conn, batch=3)
    full = conn(x, levels)
    single = conn(x[1:2], None if levels is None else levels[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_wrong_input_shape_raises(name):
    conn = tiny(name)
    with pytest.raises(ValueError, match="expects features"):
        conn(torch.randn(1, conn.num_patches + 1, V))


@pytest.mark.parametrize("name,options,message", [
    ("c_abstractor", {"num_tokens": 15}, "perfect square"),
    ("avgpool", {"num_tokens": 10}, "perfect square"),
    ("avgpool", {"num_tokens": 81}, "min\\(grid\\)"),
    ("d_abstractor", {"num_tokens": 12, **CONNECTORS["d_abstractor"].tiny_options}, "perfect square"),
    ("ldpv2", {"num_tokens": 50}, "perfect square"),
    ("cross_attn", {"num_tokens": 20}, "perfect square"),
    ("qformer", {"num_tokens": 0}, ">= 1"),
    ("perceiver", {"num_tokens": 0}, ">= 1"),
    ("pixel_shuffle", {"factor": 3}, "must divide"),
    ("tokenpacker", {"scale": 3}, "must divide"),
    ("pixel_shuffle", {"num_tokens": 9}, "not reachable"),
    ("mlp", {"depth": 0}, "depth"),
    ("mlp", {"activation": "tanh"}, "activation"),
])
def test_budget_validation(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_connector(name, V, L, GRID, **options)


def test_odd_grid_rejected_by_pixel_shuffle():
    with pytest.raises(ValueError, match="must divide grid"):
        build_connector("pixel_shuffle", V, L, (7, 7))


def test_non_square_grid_is_handled_explicitly():
    conn = build_connector("avgpool", V, L, (4, 8), num_tokens=4)
    assert conn(torch.randn(1, 32, V)).shape == (1, 4, L)


def test_unknown_option_and_name_list_valid_ones():
    with pytest.raises(ValueError, match="valid options: depth, activation"):
        build_connector("mlp", V, L, GRID, widht=3)
    with pytest.raises(UnknownNameError, match="valid names: avgpool, c_abstractor"):
        CONNECTORS["mlp2x_gelu"]


def test_tokenpacker_needs_levels():
    conn = tiny("tokenpacker")
    with pytest.raises(ValueError, match="multi-level"):
        conn(torch.randn(1, conn.num_patches, V))


def test_pixel_shuffle_is_row_major_space_to_depth():
    conn = build_connector("pixel_shuffle", 1, 4, (4, 4), factor=2)
    x = torch.arange(16.0).reshape(1, 16, 1)
    captured = {}
    conn.norm.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    conn(x)
    assert captured["x"][0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert captured["x"][0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]


def test_avgpool_pools_before_the_mlp():
    conn = build_connector("avgpool", 1, 2, (4, 4), num_tokens=4, depth=1)
    with torch.no_grad():
        conn.mlp[0].weight.fill_(1.0)
        conn.mlp[0].bias.zero_()
    x = torch.arange(16.0).reshape(1, 16, 1)
    assert conn(x)[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]


def test_zoo_listing_matches_reference_parameter_counts():
    rows = {r["name"]: r for r in describe_zoo(1024, 4096, 336, 14)}
    assert len(rows) >= 11
    assert {r["family"] for r in rows.values()} == set(FAMILIES)
    assert {r["mechanism"] for r in rows.values()} == set(MECHANISMS)
    # Figures from connectors.md (built from the reference shapes).
    expected_m = {"linear": 4.20, "mlp": 20.98, "avgpool": 20.98, "c_abstractor": 37.40, "ldp": 71.43, "ldpv2": 21.02,
                  "pixel_shuffle": 33.57, "tokenpacker": 36.72, "d_abstractor": 55.94, "qformer": 104.80,
                  "perceiver": 84.00, "cross_attn": 89.17}
    for name, m in expected_m.items():
        assert round(rows[name]["parameters"] / 1e6, 2) == m, name
    assert rows["mlp"]["output_tokens"] == 576 and rows["avgpool"]["output_tokens"] == 144
    assert rows["ldp"]["output_tokens"] == 144  # stride 2 on the 24 x 24 grid
    assert round(rows["mlp"]["flops"] / 1e9, 1) == 24.2
    assert round(rows["avgpool"]["flops"] / 1e9, 1) == 6.0


def test_pointwise_convolution_is_a_1x1_convolution_with_the_same_parameters():
    # It runs as a matmul for speed on small maps; its parameters, output and gradients must be nn.Conv2d's.
    from connectorlab.connectors.layers import PointwiseConv2d

    torch.manual_seed(0)
    conv, point = torch.nn.Conv2d(12, 7, 1), PointwiseConv2d(12, 7)
    point.load_state_dict(conv.state_dict())
    assert point.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(3, 12, 4, 5, requires_grad=True)
    ref, out = conv(x), point(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-6)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, conv.weight])
    g_out = torch.autograd.grad(out.square().sum(), [x, point.weight])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_out, g_ref, strict=True))


def test_zero_init_last_starts_each_c_abstractor_block_as_its_shortcut():
    from connectorlab.connectors.layers import RegNetBottleneck

    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    block = RegNetBottleneck(16, 16, zero_init_last=True)
    assert torch.allclose(block(x), torch.nn.functional.silu(x))
    assert not torch.allclose(RegNetBottleneck(16, 16)(x), torch.nn.functional.silu(x))
    conn = build_connector("c_abstractor", V, L, (4, 4), num_tokens=4, hidden=V, depth=1, zero_init_last=True)
    conn(torch.randn(2, 16, V)).pow(2).mean().backward()
    assert all(b.norm3.weight.grad.abs().sum() > 0 for b in (*conn.s1, *conn.s2))  # the branch can leave zero
