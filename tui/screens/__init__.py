"""One module per screen: bundles, detail, channels, promote, gates, diff, evidence, help."""
