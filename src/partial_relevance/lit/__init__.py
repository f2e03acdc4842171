"""LightningModules that wire models, losses and metrics."""
