"""Plain nn.Modules: no Lightning, no Hydra, no file I/O."""
