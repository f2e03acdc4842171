"""Everything that touches disk: annotations, feature stores, preprocessing, datamodules."""
