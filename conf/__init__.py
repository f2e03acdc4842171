"""The Hydra configs, shipped inside the package as `partial_relevance.conf` (a symlink in
src/ points here): `pkg://partial_relevance.conf` is the entry points' config search path."""
