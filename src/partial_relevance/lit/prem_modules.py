"""ICE / IRM / TCP switches of PREM's retriever: the wiring of `losses.prem_modules`.

`PremModules` holds the three module configs (each with its own `enabled` switch; every value
from `conf/model/prem_retriever.yaml`: the PRVR paper's weights, SPEC §3) and computes their
terms for one retriever training batch from the encodings the retriever loss already computed
(plus, for TCP, one shuffled re-encoding of the batch's videos). With every module off it
computes nothing and the retriever's loss is untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from partial_relevance.lit.base import as_config
from partial_relevance.losses.prem_modules import (
    prem_ice_loss,
    prem_irm_loss,
    prem_modules_total,
    prem_tcp_loss,
    stream_moment_scores,
    tcp_stream_labels,
)
from partial_relevance.losses.prvr import IceConfig, IrmConfig, tcp_shuffle
from partial_relevance.models.prem_retriever import PremRetriever


@dataclass(frozen=True)
class PremTcpConfig:
    """`model.tcp` of PREM's retriever (PRVR §3.5 on each stream): switch, g, β_r, λ₅."""

    enabled: bool
    groups: int  # read by the net (PremRetriever(tcp_groups=...))
    ratio: float
    weight: float


@dataclass(frozen=True)
class ModuleLossRule:
    """`model.module_loss`: the modules' triplet / InfoNCE rule, PRVR's (SPEC §3), not PREM's τ."""

    margin: float
    nce_sim: str
    tau: float
    nce_average: str


class PremModules:
    """The three PRVR modules on PREM's retriever (see `losses.prem_modules`); every value from
    `conf/model/prem_retriever.yaml` (`ice`, `irm`, `tcp`, `module_loss`)."""

    def __init__(
        self,
        ice: IceConfig | Mapping,
        irm: IrmConfig | Mapping,
        tcp: PremTcpConfig | Mapping,
        rule: ModuleLossRule | Mapping,
    ) -> None:
        self.ice = as_config(IceConfig, ice, "ice")
        self.irm = as_config(IrmConfig, irm, "irm")
        self.tcp = as_config(PremTcpConfig, tcp, "tcp")
        self.rule = as_config(ModuleLossRule, rule, "module_loss")

    @property
    def any_enabled(self) -> bool:
        return bool(self.ice.enabled or self.irm.enabled or self.tcp.enabled)

    def check_net(self, net: PremRetriever) -> None:
        """The net must carry the heads the enabled modules need (and the same settings)."""
        if self.irm.enabled and net.irm_projection is None:
            raise ValueError("model.irm.enabled needs model.net.irm=true (the FC of Eq. 9)")
        if self.tcp.enabled and net.tcp_heads is None:
            raise ValueError("model.tcp.enabled needs model.net.tcp=true (TCP's classifiers)")

    def terms(
        self,
        net: PremRetriever,
        batch: Mapping[str, Tensor],
        queries: Mapping[str, Tensor | None],
        videos: Mapping[str, Tensor],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Every enabled module's terms for one batch (`queries` `[B, D]` per stream, `videos`
        the batch's encoded videos `[V, L, D]`, `batch["query_video"]` `[B]`)."""
        out: dict[str, Tensor] = {}
        y = batch["query_video"]
        rule = self.rule
        streams = {s: (queries[s], videos[s], net.stream_mask(videos, s)) for s in net.streams}
        if self.ice.enabled:
            out.update(
                prem_ice_loss(
                    streams,  # type: ignore[arg-type]
                    y,
                    self.ice.threshold,
                    rule.margin,
                    rule.nce_sim,
                    rule.tau,
                    rule.nce_average,
                    nce_weight=self.ice.nce_weight,
                )
            )
        if self.irm.enabled:
            irm_streams: dict[str, dict[str, Tensor]] = {}
            for s, (q, clips, valid) in streams.items():
                assert q is not None
                target, target_valid = net.target_clips(queries, videos, s, y)
                v = net.video_feature(videos, s)[y]  # [B, D]
                r_v, r_q = net.redundant_features(v, target, q)
                cos, nce, _ = stream_moment_scores(q, clips, valid, rule.nce_sim)
                irm_streams[s] = {
                    "q": q,
                    "r_v": r_v,
                    "r_q": r_q,
                    "target_valid": target_valid,
                    "moment_cos": cos,
                    "moment_nce": nce,
                }
            out.update(
                prem_irm_loss(
                    irm_streams,
                    y,
                    rule.margin,
                    rule.nce_sim,
                    rule.tau,
                    rule.nce_average,
                    self.irm.neg,
                    self.irm.red,
                    neg_nce_weight=self.irm.neg_nce_weight,
                    red_nce_weight=self.irm.red_nce_weight,
                )
            )
        if self.tcp.enabled:
            out.update(self._tcp_terms(net, batch, videos, generator))
        return out

    def _tcp_terms(
        self,
        net: PremRetriever,
        batch: Mapping[str, Tensor],
        videos: Mapping[str, Tensor],
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """Shuffle β_r of each stream's clip positions (independently per stream), re-encode
        the batch's videos with the same encoder, classify both encodings' groups."""
        clip_mask = videos["clip_mask"].bool()
        lengths = clip_mask.sum(1)  # [V] clips of each video
        V, L = clip_mask.shape
        permutation = {}
        for s in net.streams:
            dummy = clip_mask.new_zeros((V, L, 1), dtype=torch.float32)
            permutation[s] = tcp_shuffle(dummy, lengths, self.tcp.ratio, generator)[1]
        shuffled = net.encode_videos(
            batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"], permutation
        )
        streams = {}
        for s in net.streams:
            labels = tcp_stream_labels(net.stream_mask(videos, s), lengths, self.tcp.groups)
            labels_s = labels.gather(1, permutation[s])  # y_s: the group of the clip now there
            streams[s] = (
                net.tcp_logits(videos, s),
                labels,
                net.tcp_logits(shuffled, s),
                labels_s,
            )
        return prem_tcp_loss(streams)

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The retriever loss plus the enabled modules' weighted terms (PRVR Eq. 13)."""
        weights = {"ice": self.ice.weight, "irm": self.irm.weight, "tcp": self.tcp.weight}
        return prem_modules_total(terms, weights)
