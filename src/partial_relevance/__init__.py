"""partial-relevance."""
