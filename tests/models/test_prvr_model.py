"""The PRVR base model: shapes, Eq. 3/4 similarities (golden losses: tests/lit/test_prvr_lit.py)."""

from __future__ import annotations

import torch

from lit_support import model_net
from partial_relevance.models.prvr import PrvrBaseModel
from partial_relevance.models.prvr.base import PrvrVideoEncoding


def tiny_net(**kwargs) -> PrvrBaseModel:
    torch.manual_seed(0)
    args = {"video_dim": 32, "query_dim": 16, "hidden_dim": 16, "dropout": 0.0, **kwargs}
    return model_net("prvr", **args)


def test_encodings_and_similarities():
    net = tiny_net()
    q = net.encode_queries(torch.randn(5, 7, 16), torch.ones(5, 7, dtype=torch.bool))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    enc = net.encode_videos(torch.randn(3, 32, 32), torch.randn(3, 20, 32), mask)
    assert q.shape == (5, 16) and enc.clips.shape == (3, 32, 16) and enc.video.shape == (3, 16)
    s_v = net.video_scores(q, enc)
    s_m, arg = net.moment_scores(q, enc)
    assert s_v.shape == s_m.shape == arg.shape == (5, 3)
    cos = torch.nn.functional.cosine_similarity(q[:, None, None], enc.clips[None], dim=-1)
    torch.testing.assert_close(s_m, cos.amax(-1))  # Eq. 4: max over the 32 clips
    positive = torch.tensor([0, 1, 2, 2, 0])
    target = net.target_moments(q, enc, positive)
    expected = enc.clips[positive, arg[torch.arange(5), positive]]
    torch.testing.assert_close(target, expected)


def test_padding_frames_do_not_change_the_video_vector():
    net = tiny_net().eval()
    frames = torch.randn(1, 10, 32)
    mask = torch.ones(1, 10, dtype=torch.bool)
    short = net.encode_videos(torch.randn(1, 32, 32), frames, mask).video
    padded = torch.cat([frames, torch.randn(1, 6, 32) * 100], 1)
    mask_padded = torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)], 1)
    torch.manual_seed(0)
    long = net.encode_videos(torch.randn(1, 32, 32), padded, mask_padded).video
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_target_moments_gradient_reaches_only_the_chosen_clips():
    """m^t's gradient goes to the clip each query picked in its own video and nowhere else: the
    numbers of gathering every own clip and then the chosen one (the earlier formula)."""
    net = tiny_net()
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(5, 16, generator=gen, requires_grad=True)
    clips = torch.randn(3, 32, 16, generator=gen, requires_grad=True)
    enc = PrvrVideoEncoding(
        clips=clips,
        frames=clips,
        frame_mask=torch.ones(3, 32, dtype=torch.bool),
        clip_inputs=clips,
        frame_inputs=clips,
        video=clips.mean(1),
    )
    positive = torch.tensor([0, 1, 2, 2, 0])
    weights = torch.randn(5, 16, generator=gen)
    target = net.target_moments(q, enc, positive)
    (grad_clips,) = torch.autograd.grad((target * weights).sum(), clips)

    own = clips[positive]  # the earlier formula, spelled out
    unit = torch.nn.functional.normalize
    index = torch.einsum("nd,ntd->nt", unit(q, dim=-1, eps=1e-6), unit(own, dim=-1, eps=1e-6))
    reference = own[torch.arange(5), index.argmax(1)]
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), clips)
    assert torch.equal(target, reference) and torch.equal(grad_clips, reference_grad)
    touched = (grad_clips != 0).any(-1)  # [3, 32]: one clip per query (two share video 2)
    assert 3 <= int(touched.sum()) <= 5 and touched[positive].any(-1).all()
