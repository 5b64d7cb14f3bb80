"""Batch validation of a published version on real examples, as an Apache Beam pipeline."""
