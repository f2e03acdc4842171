"""PrvrLitModule: golden first losses of every base (base-only and with ICE/IRM/TCP), the
Eq. 7 / Eq. 13 sums in `losses.prvr`, activation checkpointing, probe inputs (TEAM
interface 3) and the one optimiser path."""

from __future__ import annotations

import pytest
import torch

from lit_support import bert_adamw, golden_losses, lit_module, model_net, model_sections
from partial_relevance.data.prvr import PrvrDataModule
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.prvr import GmmformerBaseModel, MsslBaseModel, PrvrBaseModel

BASES = {"prvr": PrvrBaseModel, "mssl": MsslBaseModel, "gmmformer": GmmformerBaseModel}
MODEL_CONFIG = {"prvr": "prvr", "mssl": "prvr_mssl", "gmmformer": "prvr_gmmformer"}

# First three training losses of each base on the seeded tiny corpus, base-only and with all
# three modules (ICE β_t = none; the modules' InfoNCE weighted by λ₂ = 0.04, SPEC §3 revised).
GOLDEN = {
    ("prvr", False): [1.0194333791732788, 1.050567388534546, 1.0703446865081787],
    ("prvr", True): [10.37946891784668, 10.324776649475098, 10.204679489135742],
    ("mssl", False): [1.1191538572311401, 1.116936206817627, 1.161738634109497],
    ("mssl", True): [11.038225173950195, 10.895828247070312, 10.733202934265137],
    # GMMFormer builds its encoders once now (it built and replaced the plain ones), so its
    # seeded initial weights differ; with the former weights and head initialisation loaded
    # the former goldens [1.17723, 1.07029, 1.05066] / [10.73123, 10.45307, 10.61005] come out.
    ("gmmformer", False): [1.0628759860992432, 1.1436336040496826, 1.1324174404144287],
    ("gmmformer", True): [10.720952033996582, 10.783935546875, 10.680431365966797],
}


def tiny_net(name: str, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_net(MODEL_CONFIG[name], video_dim=32, query_dim=16, hidden_dim=16, dropout=dropout)


def tiny_module(name: str, full: bool, **overrides) -> PrvrLitModule:
    """The tiny base `name` under model=<its config>, every module on when `full`."""
    modules = {"ice": {"enabled": full, "threshold": None}}
    modules |= {"irm": {"enabled": full}, "tcp": {"enabled": full}}
    net = overrides.pop("net", None) or tiny_net(name)
    optimizer = bert_adamw(lr=1e-3)
    return lit_module(PrvrLitModule, MODEL_CONFIG[name], net, optimizer, **modules, **overrides)


def first_batches(tiny_corpus, steps: int = 3) -> list[dict]:
    dm = PrvrDataModule(root=str(tiny_corpus.prvr_root), video_dim=32, query_dim=16, batch_size=8)
    dm.setup("fit")
    torch.manual_seed(0)
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == steps:
            return batches
    return batches


def first_losses(tiny_corpus, name: str, full: bool, **overrides) -> list[float]:
    batches = first_batches(tiny_corpus)
    model = tiny_module(name, full, **overrides)
    optimizer = bert_adamw(lr=1e-3)(model.parameters())
    torch.manual_seed(0)
    return [step[0] for step in golden_losses(model, optimizer, batches)]


@pytest.mark.parametrize(("name", "full"), sorted(GOLDEN))
def test_golden_first_three_losses(tiny_corpus, name, full):
    assert first_losses(tiny_corpus, name, full) == pytest.approx(GOLDEN[name, full], abs=1e-4)


def test_activation_checkpointing_changes_no_number(tiny_corpus):
    """Recomputing activations in backward (dropout masks replayed) gives the same losses and
    updates as keeping them, for the full model with dropout on."""
    kept, recomputed = (
        first_losses(
            tiny_corpus,
            "prvr",
            True,
            net=tiny_net("prvr", dropout=0.15),
            activation_checkpointing=checkpointing,
        )
        for checkpointing in (False, True)
    )
    assert recomputed == pytest.approx(kept, abs=1e-6)


def test_total_is_eq13_of_the_logged_terms(tiny_corpus):
    batch = first_batches(tiny_corpus, 1)[0]
    torch.manual_seed(0)
    terms = tiny_module("prvr", True).training_losses(batch)
    base = terms["L_v_trip"] + terms["L_m_trip"] + 0.02 * terms["L_v_nce"] + 0.04 * terms["L_m_nce"]
    torch.testing.assert_close(terms["L_base"], base)  # Eq. 7, λ₁ = 0.02, λ₂ = 0.04
    total = terms["L_base"] + 0.1 * terms["L_ice"] + terms["L_irm"] + terms["L_tcp"]
    torch.testing.assert_close(terms["loss"], total)  # Eq. 13, λ₃ = 0.1, λ₄ = λ₅ = 1
    torch.testing.assert_close(terms["L_irm"], terms["L_neg"] + terms["L_red"])
    torch.testing.assert_close(terms["L_tcp"], terms["L_tcp_frame"] + terms["L_tcp_clip"])


def test_probe_inputs_are_detached_and_shaped(tiny_corpus):
    batch = first_batches(tiny_corpus, 1)[0]
    model = tiny_module("prvr", True)
    assert model.collect_probe_inputs is False
    assert isinstance(model.training_step(batch, 0), torch.Tensor)
    model.collect_probe_inputs = True
    out = model.training_step(batch, 0)
    probes = out["probe_inputs"]
    b, n = len(batch["video_index"]), len(batch["query_video"])
    num_clips = batch["moments"].shape[1]
    assert out["loss"].requires_grad
    assert torch.equal(probes["video_index"], batch["video_index"])
    assert torch.equal(probes["query_video"], batch["query_video"])
    assert (
        torch.equal(probes["query_index"], batch["query_index"]) and len(probes["query_index"]) == n
    )
    assert probes["ice_similarity"].shape == (b * num_clips, n)
    assert probes["ice_pairs"].shape[1] == 2
    for key in ("irm_r_v", "irm_r_q", "query", "target_moment"):
        assert probes[key].shape == (n, 16) and not probes[key].requires_grad, key
    assert probes["moments"].shape == (b, num_clips, 16)
    assert set(probes["tcp_logits"]) == set(probes["tcp_labels"]) == {"frame", "clip"}
    clip_logits, clip_labels = probes["tcp_logits"]["clip"], probes["tcp_labels"]["clip"]
    assert clip_logits.shape == (b * num_clips, 8) and clip_labels.shape == (b * num_clips,)
    assert (clip_labels >= 0).all()
    # A query on its own video is masked to −1 in the matrix ICE mines on.
    own = torch.arange(b).repeat_interleave(num_clips)[:, None] == batch["query_video"][None]
    assert (probes["ice_similarity"][own] == -1).all()


def test_sections_must_be_complete():
    sections = model_sections("prvr")
    del sections["ice"]["nce_weight"]
    with pytest.raises(ValueError, match=r"model\.ice: .*missing keys \['nce_weight'\]"):
        PrvrLitModule(tiny_net("prvr"), bert_adamw(lr=1e-3), **sections)
