"""The MS-SL- and GMMFormer-style bases behind the PRVR plug-in interface (SPEC §3, Table 5).

For each base: interface shapes, `score_queries` against a naive per-query computation,
padding invariance, one training step with ICE/IRM/TCP whose gradients reach the encoders
through every module term (golden first losses: tests/lit/test_prvr_lit.py).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from lit_support import bert_adamw, lit_module, model_net
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.prvr import (
    GaussianWindowAttention,
    GmmformerBaseModel,
    MsslBaseModel,
    multiscale_proposal_weights,
)
from partial_relevance.train import train
from support import (
    TINY_RUN_OVERRIDES,
    TINY_SYNTHETIC_OVERRIDES,
    compose_train_config,
)

BASES = {"mssl": MsslBaseModel, "gmmformer": GmmformerBaseModel}


def tiny_net(name: str, **kwargs):
    torch.manual_seed(0)
    model = {"mssl": "prvr_mssl", "gmmformer": "prvr_gmmformer"}[name]
    net = model_net(model, video_dim=32, query_dim=16, hidden_dim=16, dropout=0.0, **kwargs)
    assert isinstance(net, BASES[name])
    return net


def random_batch(b: int = 4, per_video: int = 3, frames: int = 20, seed: int = 1) -> dict:
    """A video-centric batch like `collate_videos` makes: b videos, `per_video` queries each."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, frames, dtype=torch.bool)
    mask[1, 12:] = False
    mask[2, 5:] = False
    n = b * per_video
    query_mask = torch.ones(n, 7, dtype=torch.bool)
    query_mask[0, 4:] = False
    return {
        "moments": torch.randn(b, 32, 32, generator=g),
        "frames": torch.randn(b, frames, 32, generator=g),
        "frame_mask": mask,
        "query_tokens": torch.randn(n, 7, 16, generator=g),
        "query_mask": query_mask,
        "query_video": torch.arange(b).repeat_interleave(per_video),
    }


def encode(net, batch):
    q = net.encode_queries(batch["query_tokens"], batch["query_mask"])
    enc = net.encode_videos(batch["moments"], batch["frames"], batch["frame_mask"])
    return q, enc


# ------------------------------------------------------------------------ MS-SL proposals


def test_multiscale_proposals_count_and_order():
    weights, spans = multiscale_proposal_weights(32)
    assert weights.shape == (528, 32) and spans.shape == (528, 2)  # Σ_{l=1..32} (33 − l)
    torch.testing.assert_close(weights.sum(1), torch.ones(528))
    assert spans[:32].tolist() == [[s, s + 1] for s in range(32)]  # length 1 first (MS-SL)
    assert spans[32].tolist() == [0, 2] and spans[-1].tolist() == [0, 32]
    assert len({tuple(s) for s in spans.tolist()}) == 528


def test_proposal_is_the_hand_checked_window_mean():
    net = tiny_net("mssl")
    clips = torch.arange(32, dtype=torch.float32)[None, :, None].expand(2, 32, 16).clone()
    clips[1] *= -2
    proposals = net.multiscale_proposals(clips)  # [2, 528, 16]
    assert proposals.shape == (2, 528, 16)
    # Window [3, 7) of the clip values 0..31: (3 + 4 + 5 + 6) / 4 = 4.5.
    p = next(i for i, s in enumerate(net.proposal_spans.tolist()) if s == [3, 7])
    torch.testing.assert_close(proposals[0, p], torch.full((16,), 4.5))
    torch.testing.assert_close(proposals[1, p], torch.full((16,), -9.0))
    torch.testing.assert_close(proposals[0, -1], torch.full((16,), 15.5))  # whole video


# ------------------------------------------------------------------------ interface shapes


@pytest.mark.parametrize("name", sorted(BASES))
def test_interface_shapes(name):
    net = tiny_net(name)
    batch = random_batch()
    q, enc = encode(net, batch)
    y = batch["query_video"]
    n, b = len(y), 4
    assert net.hidden_dim == 16 and q.shape == (n, 16)
    assert enc.clips.shape == (b, 32, 16) and enc.frames.shape == (b, 20, 16)
    assert enc.clip_inputs.shape == (b, 32, 16) and enc.frame_inputs.shape == (b, 20, 16)
    assert enc.frame_mask.dtype == torch.bool
    for sim in ("cos", "dot"):
        s_m, arg = net.moment_scores(q, enc, sim)
        assert s_m.shape == arg.shape == (n, b)
        assert net.video_scores(q, enc, sim).shape == (n, b)
    assert net.target_moments(q, enc, y).shape == (n, 16)
    assert net.video_features(q, enc, y).shape == (n, 16)
    assert net.encode_branch("clip", enc.clip_inputs, None).shape == (b, 32, 16)
    assert net.encode_branch("frame", enc.frame_inputs, enc.frame_mask).shape == (b, 20, 16)
    assert net.score_queries(q, net.index_videos(enc), 0.7).shape == (n, b)
    if name == "mssl":
        assert enc.video is None and enc.proposals.shape == (b, 528, 16)
        assert arg.max() < 528  # proposal indices, not clip indices
    else:
        assert enc.video.shape == (b, 16)


def test_mssl_moment_scores_and_targets_use_the_proposals():
    net = tiny_net("mssl")
    batch = random_batch()
    q, enc = encode(net, batch)
    y = batch["query_video"]
    cos = F.cosine_similarity(q[:, None, None], enc.proposals[None], dim=-1)  # [n, b, 528]
    s_m, _ = net.moment_scores(q, enc, "cos")
    torch.testing.assert_close(s_m, cos.amax(-1))
    dot = torch.einsum("nd,bpd->nbp", q, enc.proposals).amax(-1)
    torch.testing.assert_close(net.moment_scores(q, enc, "dot")[0], dot)
    own = cos[torch.arange(len(y)), y].argmax(-1)  # [n]
    torch.testing.assert_close(net.target_moments(q, enc, y), enc.proposals[y, own])


def naive_mssl_video_vector(net, q_j, clips, frames, mask):
    """MS-SL key-clip guided attention for one query and one video, from the definition."""
    proposals = torch.stack([clips[s:e].mean(0) for s, e in net.proposal_spans.tolist()])
    key_clip = proposals[F.cosine_similarity(q_j[None], proposals, dim=-1).argmax()]
    frames = frames[mask]  # valid frames only
    weights = torch.softmax(net.key_projection(frames) @ key_clip, dim=0)
    return weights @ net.value_projection(frames), proposals


def test_mssl_video_vector_is_query_dependent_key_clip_attention():
    net = tiny_net("mssl")
    batch = random_batch()
    q, enc = encode(net, batch)
    y = batch["query_video"]
    s_v = net.video_scores(q, enc, "cos")
    features = net.video_features(q, enc, y)
    for j in range(len(q)):
        for k in range(4):
            mask = enc.frame_mask[k]
            v, _ = naive_mssl_video_vector(net, q[j], enc.clips[k], enc.frames[k], mask)
            expected = F.cosine_similarity(q[j], v, dim=0)
            torch.testing.assert_close(s_v[j, k], expected, atol=1e-5, rtol=1e-5)
            if k == y[j]:
                torch.testing.assert_close(features[j], v, atol=1e-5, rtol=1e-5)
    # Two queries of one video get different video vectors (the point of the guided attention).
    assert not torch.allclose(features[0], features[1])


def naive_scores(name, net, q, enc, alpha):
    """Eq. 14 query by query, video by video, from the definitions."""
    rows = []
    for j in range(len(q)):
        row = []
        for k in range(enc.clips.shape[0]):
            mask = enc.frame_mask[k]
            if name == "mssl":
                v, proposals = naive_mssl_video_vector(net, q[j], enc.clips[k], enc.frames[k], mask)
                moment = F.cosine_similarity(q[j][None], proposals, dim=-1).max()
            else:
                v = enc.video[k]
                moment = F.cosine_similarity(q[j][None], enc.clips[k], dim=-1).max()
            video = F.cosine_similarity(q[j], v, dim=0)
            row.append(alpha * moment + (1 - alpha) * video)
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("name", sorted(BASES))
def test_score_queries_equals_naive_per_query_scores(name):
    net = tiny_net(name).eval()
    if name == "mssl":
        net.score_block_elements = 528 * 528 * 12  # force several video blocks
    batch = random_batch(b=5, frames=14)
    with torch.no_grad():
        q, enc = encode(net, batch)
        index = net.index_videos(enc)
        scores = net.score_queries(q, index, 0.7)
        expected = naive_scores(name, net, q, enc, 0.7)
        # The training-time scores give the same matrix.
        training = 0.7 * net.moment_scores(q, enc, "cos")[0] + 0.3 * net.video_scores(q, enc)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, training, atol=1e-5, rtol=1e-5)
    if name == "mssl":  # frames padded to max_frames, so batches of any length concatenate
        assert index["frames"].shape == (5, 128, 16) and index["frame_mask"].shape == (5, 128)


# ------------------------------------------------------------------------ padding


@pytest.mark.parametrize("name", sorted(BASES))
def test_padding_frames_cannot_change_the_video_vector(name):
    net = tiny_net(name).eval()
    g = torch.Generator().manual_seed(3)
    moments = torch.randn(1, 32, 32, generator=g)
    frames = torch.randn(1, 10, 32, generator=g)
    mask = torch.ones(1, 10, dtype=torch.bool)
    padded = torch.cat([frames, torch.randn(1, 6, 32, generator=g) * 100], 1)
    mask_padded = torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)], 1)
    q = net.encode_queries(torch.randn(3, 5, 16, generator=g), torch.ones(3, 5, dtype=torch.bool))
    y = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        short = net.encode_videos(moments, frames, mask)
        long = net.encode_videos(moments, padded, mask_padded)
        torch.testing.assert_close(
            net.video_features(q, short, y), net.video_features(q, long, y), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            net.video_scores(q, short), net.video_scores(q, long), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(long.frames[:, :10], short.frames, atol=1e-5, rtol=1e-5)


def test_gaussian_window_shapes_attention_by_relative_position():
    attention = GaussianWindowAttention(8, num_heads=2, dropout=0.0, width=0.5)
    valid = torch.tensor([10, 5])
    log_g = attention.log_window(10, valid)  # [2, 1, 10, 10]
    assert log_g.shape == (2, 1, 10, 10)
    torch.testing.assert_close(log_g.diagonal(dim1=-2, dim2=-1), torch.zeros(2, 1, 10))
    # exp(−(d/T)² / (2σ²)), σ = 0.5/9: one step in a 10-long sequence.
    sigma = 0.5 / 9
    expected = -((1 / 10) ** 2) / (2 * sigma**2)
    assert log_g[0, 0, 0, 1].item() == pytest.approx(expected)
    assert log_g[1, 0, 0, 1].item() == pytest.approx(-((1 / 5) ** 2) / (2 * sigma**2))
    with pytest.raises(ValueError, match="gaussian mode"):
        GaussianWindowAttention(8, width=1.0, mode="bogus")


@pytest.mark.parametrize("mode", ["multiply", "add"])
def test_gmmformer_modes_run(mode):
    net = tiny_net("gmmformer", gaussian_mode=mode)
    q, enc = encode(net, random_batch())
    assert torch.isfinite(net.score_queries(q, net.index_videos(enc), 0.7)).all()


# ------------------------------------------------------------------------ plug-in training


def full_module(net) -> PrvrLitModule:
    modules = {"irm": {"enabled": True}, "tcp": {"enabled": True}}
    optimizer = bert_adamw(lr=1e-3)
    ice = {"enabled": True, "threshold": None}
    return lit_module(PrvrLitModule, "prvr", net, optimizer, ice=ice, **modules)


def _grad_norms(net, names):
    return {
        name: sum(
            p.grad.abs().sum().item() for p in getattr(net, name).parameters() if p.grad is not None
        )
        for name in names
    }


# Which projection layers each module term must reach (SPEC §3): ICE aligns clips with
# queries; IRM uses v (frames), m^t (clips) and q; TCP re-encodes both video branches.
REACHES = {
    "L_ice": ("clip_projection", "query_projection"),
    "L_irm": ("clip_projection", "frame_projection", "query_projection"),
    "L_tcp": ("clip_projection", "frame_projection"),
}


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_module_term_reaches_the_encoders(name):
    torch.manual_seed(0)
    model = full_module(tiny_net(name))
    batch = random_batch(b=6)
    terms = model.training_losses(batch)
    for key in ("loss", "L_base", "L_ice", "L_neg", "L_red", "L_irm", "L_tcp"):
        assert torch.isfinite(terms[key]), key
    assert terms["n_c"].item() >= 2  # ICE mined a mini-batch, so L_ice is a real term
    for term, layers in REACHES.items():
        model.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        norms = _grad_norms(model.net, layers)
        assert all(v > 0 for v in norms.values()), (term, norms)
    if name == "mssl":  # IRM's v[j, y(j)] goes through the key-clip guided attention
        model.zero_grad(set_to_none=True)
        terms["L_irm"].backward(retain_graph=True)
        assert all(
            v > 0 for v in _grad_norms(model.net, ("key_projection", "value_projection")).values()
        )
    # And one optimiser step on the total changes the encoders.
    model.zero_grad(set_to_none=True)
    terms["loss"].backward()
    before = model.net.clip_projection.linear.weight.detach().clone()
    bert_adamw(lr=1e-3)(model.parameters()).step()
    assert not torch.equal(before, model.net.clip_projection.linear.weight)


# ------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("model", "cls"), [("prvr_mssl", MsslBaseModel), ("prvr_gmmformer", GmmformerBaseModel)]
)
def test_model_configs_swap_only_the_network(model, cls, tmp_path):
    cfg = compose_train_config([f"model={model}"], tmp_path / "run", tmp_path)
    base = compose_train_config([], tmp_path / "run", tmp_path)
    for key in ("loss", "ice", "irm", "tcp", "evaluation", "optimizer"):
        ours, theirs = dict(cfg.model[key]), dict(base.model[key])
        if key == "evaluation" and model == "prvr_mssl":
            # Only how many queries are scored at once (its guided vectors once per video).
            assert ours.pop("chunk") > theirs.pop("chunk")
        assert ours == theirs, key
    lit = instantiate(cfg.model, net={"video_dim": 8, "query_dim": 8, "hidden_dim": 8})
    assert type(lit.net) is cls and lit.net.hidden_dim == 8


@pytest.mark.parametrize("model", ["prvr_mssl", "prvr_gmmformer"])
def test_each_base_trains_and_evaluates_in_process(model, tmp_path, synthetic_cache):
    """Hydra -> train -> full-matrix evaluation through `index_videos`/`score_queries`, with
    evaluation batches of different frame lengths concatenated into one index."""
    out = tmp_path / "run"
    overrides = [
        "experiment=prvr_full_synthetic",
        f"model={model}",
        "logger=none",
        "data.eval_batch_size=5",
        *TINY_RUN_OVERRIDES,
        *TINY_SYNTHETIC_OVERRIDES,
    ]
    train(compose_train_config(overrides, out, synthetic_cache))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/SumR"] >= 0 and "test/SumR" in metrics
