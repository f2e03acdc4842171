"""PREM retriever's plug-in interface for PRVR's modules (SPEC §3): heads off by default, TCP's
shuffle before the positional embeddings, IRM's `v` and `m^t`."""

from __future__ import annotations

import torch

from partial_relevance.models.prem_retriever import PremRetriever
from prem_support import TINY_PREM_NET, tiny_retriever


def tiny(**kwargs) -> PremRetriever:
    torch.manual_seed(0)
    return tiny_retriever(**kwargs).eval()


def inputs(V: int = 2, L: int = 5):
    g = torch.Generator().manual_seed(1)
    visual = torch.randn(V, L, TINY_PREM_NET["visual_dim"], generator=g)
    subtitle = torch.randn(V, L, TINY_PREM_NET["subtitle_dim"], generator=g)
    clip_mask = torch.ones(V, L, dtype=torch.bool)
    clip_mask[1, 3:] = False
    sub_mask = clip_mask.clone()
    sub_mask[0, 1] = False
    return visual, subtitle, clip_mask, sub_mask


def test_module_heads_are_off_by_default_and_leave_prem_weights_unchanged():
    plain, with_heads = tiny(), tiny(irm=True, tcp=True)
    assert plain.irm_projection is None and plain.tcp_heads is None
    heads = {k: v for k, v in with_heads.state_dict().items() if k not in plain.state_dict()}
    assert heads and all(k.startswith(("irm_projection.", "tcp_heads.")) for k in heads)
    for key, value in plain.state_dict().items():  # same initialisation of every PREM weight
        assert torch.equal(value, with_heads.state_dict()[key]), key
    assert set(with_heads.tcp_heads) == {"vis", "sub"}
    assert set(tiny(use_sub=False, tcp=True).tcp_heads) == {"vis"}


def test_tcp_permutation_moves_clips_before_the_positional_embeddings():
    net = tiny()
    visual, subtitle, clip_mask, sub_mask = inputs()
    index = torch.tensor([[1, 0, 2, 4, 3], [2, 1, 0, 3, 4]])  # per video, valid prefix only
    perm = {"vis": index, "sub": index}
    with torch.no_grad():
        # Without positions the encoder is permutation-equivariant: the shuffled encoding is
        # the ordinary one permuted, masks too (so the shuffle happened on the clip features).
        net.video_encoder.encoder.position.weight.zero_()
        plain = net.encode_videos(visual, subtitle, clip_mask, sub_mask)
        shuffled = net.encode_videos(visual, subtitle, clip_mask, sub_mask, perm)
        for s in ("vis", "sub"):
            gathered = plain[s].gather(1, index[..., None].expand_as(plain[s]))
            torch.testing.assert_close(shuffled[s], gathered, atol=1e-5, rtol=1e-5)
        assert torch.equal(shuffled["sub_mask"], plain["sub_mask"].gather(1, index))
        # With positions, content at a new place is encoded differently.
        net.video_encoder.encoder.position.weight.normal_()
        plain = net.encode_videos(visual, subtitle, clip_mask, sub_mask)
        shuffled = net.encode_videos(visual, subtitle, clip_mask, sub_mask, perm)
        gathered = plain["vis"].gather(1, index[..., None].expand_as(plain["vis"]))
        assert not torch.allclose(shuffled["vis"][0, :2], gathered[0, :2], atol=1e-3)


def test_irm_video_feature_and_target_clip_by_hand():
    net = tiny(irm=True)
    videos = {
        "vis": torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]]),  # [1, 3, 2]: clip 2 padded
        "sub": torch.tensor([[[2.0, 0.0], [0.0, 4.0], [9.0, 9.0]]]),
        "clip_mask": torch.tensor([[True, True, False]]),
        "sub_mask": torch.tensor([[False, True, False]]),
    }
    # v = the mean of the stream's valid clips.
    assert net.video_feature(videos, "vis").tolist() == [[0.5, 0.5]]
    assert net.video_feature(videos, "sub").tolist() == [[0.0, 4.0]]
    queries = {"vis": torch.tensor([[0.9, 0.1]]), "sub": torch.tensor([[1.0, 0.0]])}
    target, ok = net.target_clips(queries, videos, "vis", torch.tensor([0]))
    assert target.tolist() == [[1.0, 0.0]] and ok.tolist() == [True]  # cos argmax, valid only
    target, ok = net.target_clips(queries, videos, "sub", torch.tensor([0]))
    assert target.tolist() == [[0.0, 4.0]]  # the only subtitle clip, though q points at clip 0
    r_v, r_q = net.redundant_features(torch.zeros(1, 16), torch.zeros(1, 16), torch.zeros(1, 16))
    assert r_v.shape == r_q.shape == (1, 16)
