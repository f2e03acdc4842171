"""Rank-based retrieval metrics, temporal IoU, VCMR/SVMR/VR and submission I/O."""
