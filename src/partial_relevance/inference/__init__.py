"""Corpus encoding, chunked exact top-k, span decoding, NMS and the VCMR pipeline."""
