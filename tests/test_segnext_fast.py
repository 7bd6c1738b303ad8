"""SegNext's default numerics (the per-click network in bfloat16, split by rows between workers) against float32:
the attention against torch's kernel, the pieces of the row split (strips, the norms' statistics, the head's banded
upsampling), the independence of the result from the number of workers and callers, and the whole per-click
network's agreement with the float32 network (logits and masks) on several prompt maps."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
import torch.nn.functional as F

from napari_focsam.models.segnext.attention import split_attention
from napari_focsam.models.segnext.config import SegNextConfig
from napari_focsam.models.segnext.fast import FastPromptPath, strips
from napari_focsam.models.segnext.network import SegNextNet
from napari_focsam.models.segnext.pyramid import _source_rows, norm_stats

#: a SegNext at full token count (4,096) with narrow channels: realistic attention, quick to run
MID = SegNextConfig(embed_dim=192, depth=3, num_heads=3, fusion_depth=2, neck_dims=(32, 64, 128, 256),
                    head_channels=64)


def _qkv(n=4096, heads=3, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3 * heads * dim, generator=g) * 1.5


def test_split_attention_matches_torch_attention_within_bfloat16_rounding():
    qkv = _qkv()
    heads, c = 3, 192
    q, k, v = qkv.reshape(-1, 3, heads, c // heads).permute(1, 2, 0, 3)
    expected = F.scaled_dot_product_attention(q[None], k[None], v[None])[0].transpose(0, 1).reshape(-1, c)
    scaled = qkv.clone()
    scaled[:, :c] *= (c // heads) ** -0.5
    got = split_attention(scaled.bfloat16(), heads, workers=2).float()
    err = (got - expected).abs()
    assert err.max() < 0.1 and err.mean() < 5e-3, (err.max(), err.mean())
    # the same in float32 is torch's attention to rounding
    assert torch.allclose(split_attention(scaled, heads, workers=2), expected, atol=1e-4)


def test_split_attention_does_not_depend_on_the_number_of_workers():
    qkv = _qkv(seed=1).bfloat16()
    one = split_attention(qkv, 3, workers=1)
    for workers in (2, 3, 8):
        assert torch.equal(split_attention(qkv, 3, workers=workers), one)


def test_split_attention_from_several_threads_at_once():
    qkv = [_qkv(n=1024, seed=s).bfloat16() for s in range(3)]
    expected = [split_attention(x, 3, workers=1) for x in qkv]
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.inference_mode():
            results[i] = split_attention(qkv[i], 3, workers=2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], expected[i]) for i in range(3))


@pytest.fixture(scope="module")
def mid_net():
    torch.manual_seed(0)
    net = SegNextNet(MID).eval()
    with torch.no_grad():  # larger than the default init, so that the logits span a useful range
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                p.normal_(0, 1.0 / p[0].numel() ** 0.5)
    return net


def _prompt_maps(size=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = []
    prev = torch.zeros(size, size)
    for step in range(3):
        cy, cx = torch.randint(0, size, (2,), generator=g).tolist()
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 25).float()
        pos, neg = (disk, torch.zeros_like(disk)) if step % 2 == 0 else (torch.zeros_like(disk), disk)
        maps.append(torch.stack([prev, pos, neg])[None])
        prev = torch.rand(size, size, generator=g)  # a dense previous probability
    return maps


@pytest.mark.parametrize("split", [True, False], ids=["split-attention", "torch-attention"])
def test_fast_path_agrees_with_float32(mid_net, split):
    """The default numerics vs the float32 network: logits within 3 % of their range, ≥ 99.5 % of the mask pixels
    equal (this random network's logits crowd around 0, so a few pixels right at the threshold flip)."""
    torch.manual_seed(1)
    fast = FastPromptPath(mid_net, torch.bfloat16, split=split)
    for seed in range(1):
        features = torch.randn(1, MID.embed_dim, MID.grid, MID.grid, generator=torch.Generator().manual_seed(seed))
        before = features.clone()
        for prompt in _prompt_maps(seed=seed):
            with torch.inference_mode():
                ref = mid_net.prompt_logits(features, prompt)
                got = fast(features, prompt)
            assert got.dtype == torch.float32 and got.shape == ref.shape == (1, 1, 256, 256)
            span = float(ref.abs().max())
            assert span > 0.5
            assert float((got - ref).abs().max()) <= 0.03 * span
            a, b = ref > 0, got > 0
            assert (a == b).float().mean() >= 0.995
            assert torch.equal(a[ref.abs() > 0.03 * span], b[ref.abs() > 0.03 * span])
        assert torch.equal(features, before)  # the image features are not touched


def test_fast_path_runs_outside_inference_mode(mid_net):
    fast = FastPromptPath(mid_net, torch.bfloat16)
    features = torch.randn(1, MID.embed_dim, MID.grid, MID.grid)
    prompt = _prompt_maps()[1]
    with torch.no_grad():
        a = fast(features, prompt)
    with torch.inference_mode():
        b = fast(features, prompt)
    assert torch.equal(a, b)


def test_strips_cover_the_grid_in_even_rows():
    for grid, workers in [(64, 1), (64, 2), (64, 3), (64, 5), (8, 16), (2, 4)]:
        bounds = strips(grid, workers)
        assert bounds[0] == 0 and bounds[-1] == grid
        sizes = [b - a for a, b in itertools.pairwise(bounds)]
        assert all(s > 0 and s % 2 == 0 for s in sizes) and len(sizes) == min(workers, grid // 2)
        assert max(sizes) - min(sizes) <= 2


def test_norm_statistics_from_row_sums_match_var_mean():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3000, 48, generator=g) * 2.5 + 1.2).bfloat16()
    parts = [(c.sum(dim=1), torch.linalg.vector_norm(c, dim=1), c.numel()) for c in x.split([1000, 1500, 500])]
    mean, var = norm_stats(parts)
    v, m = torch.var_mean(x.double(), correction=0)
    assert abs(mean - float(m)) < 1e-3 * float(v.sqrt()) and abs(var / float(v) - 1) < 1e-3
    # the same rows split differently: the same numbers
    again = [(c.sum(dim=1), torch.linalg.vector_norm(c, dim=1), c.numel()) for c in x.split([2999, 1])]
    assert norm_stats(again) == (mean, var)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_upsampling_only_the_rows_a_band_reads_equals_upsampling_the_whole_map(scale):
    g = torch.Generator().manual_seed(scale)
    h = 256 // scale
    part = torch.randn(1, 5, h, 24, generator=g)
    full = F.interpolate(part, size=(256, 24 * scale), mode="bilinear", align_corners=False)
    for y0, y1 in [(0, 16), (16, 32), (40, 56), (240, 256), (0, 256), (100, 101)]:
        first, last = _source_rows(y0, y1, scale, h)
        up = F.interpolate(part[:, :, first:last], size=((last - first) * scale, 24 * scale), mode="bilinear",
                           align_corners=False)
        offset = y0 - first * scale
        assert torch.allclose(up[:, :, offset:offset + y1 - y0], full[:, :, y0:y1], atol=1e-6)


def test_fast_path_does_not_depend_on_the_number_of_workers(mid_net):
    features = torch.randn(1, MID.embed_dim, MID.grid, MID.grid, generator=torch.Generator().manual_seed(4))
    prompt = _prompt_maps(seed=4)[2]
    with torch.inference_mode():
        one = FastPromptPath(mid_net, torch.bfloat16, workers=1)(features, prompt)
        for workers in (2, 3):
            assert torch.equal(FastPromptPath(mid_net, torch.bfloat16, workers=workers)(features, prompt), one)


def test_fast_path_from_several_threads_at_once(mid_net):
    """Callers on several threads share the workers (the jobs of a phase never wait for each other)."""
    fast = FastPromptPath(mid_net, torch.bfloat16, workers=2)
    features = torch.randn(1, MID.embed_dim, MID.grid, MID.grid, generator=torch.Generator().manual_seed(5))
    prompts = _prompt_maps(seed=5)
    with torch.inference_mode():
        expected = [fast(features, p) for p in prompts]
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.inference_mode():
            results[i] = fast(features, prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(torch.equal(results[i], expected[i]) for i in range(len(prompts)))
