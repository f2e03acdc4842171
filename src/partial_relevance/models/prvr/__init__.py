"""PRVR models (paper 003): three base models and the plug-in heads of ICE/IRM/TCP.

`base` (the paper's base model and the plug-in interface), `mssl` (MS-SL-style base),
`gmmformer` (GMMFormer-style base), `heads` (IRM projection, TCP classifier). The public
names are re-exported here: configs name `partial_relevance.models.prvr.<Class>`.
"""

from partial_relevance.models.prvr.base import PrvrBaseModel, PrvrVideoEncoding
from partial_relevance.models.prvr.gmmformer import (
    GAUSSIAN_MODES,
    GaussianBlock,
    GaussianEncoder,
    GaussianWindowAttention,
    GmmformerBaseModel,
)
from partial_relevance.models.prvr.heads import IrmProjection, TcpClassifier
from partial_relevance.models.prvr.mssl import (
    MsslBaseModel,
    MsslVideoEncoding,
    multiscale_proposal_weights,
)

__all__ = [
    "GAUSSIAN_MODES",
    "GaussianBlock",
    "GaussianEncoder",
    "GaussianWindowAttention",
    "GmmformerBaseModel",
    "IrmProjection",
    "MsslBaseModel",
    "MsslVideoEncoding",
    "PrvrBaseModel",
    "PrvrVideoEncoding",
    "TcpClassifier",
    "multiscale_proposal_weights",
]
