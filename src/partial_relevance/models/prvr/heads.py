"""The plug-in heads of the PRVR modules: IRM's redundancy projection (§3.4, Eq. 9) and TCP's
temporal-group classifier (§3.5)."""

from __future__ import annotations

from torch import Tensor, nn


class IrmProjection(nn.Module):
    """IRM Eq. 9: r_v = FC(v − m^t), r_q = FC(v − q); one shared FC by default."""

    def __init__(self, dim: int, shared_fc: bool = True) -> None:
        super().__init__()
        self.fc_video = nn.Linear(dim, dim)
        self.fc_query = self.fc_video if shared_fc else nn.Linear(dim, dim)

    def forward(self, v: Tensor, target_moment: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """v, m^t, q: [n, D] -> (r_v, r_q), each [n, D]."""
        return self.fc_video(v - target_moment), self.fc_query(v - q)


class TcpClassifier(nn.Module):
    """TCP §3.5: one Linear(D, g) per branch predicting each position's temporal group."""

    def __init__(self, dim: int, groups: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, groups)

    def forward(self, x: Tensor) -> Tensor:  # [b, T, D] -> [b, T, g]
        return self.linear(x)
