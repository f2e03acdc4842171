"""Feature stores behind one interface (`FeatureStore`)."""
