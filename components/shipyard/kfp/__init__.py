"""KFP v2 components over the same core as the CLI and the TFX component."""
