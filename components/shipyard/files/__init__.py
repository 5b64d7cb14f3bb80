"""File-system primitives every adapter shares: owned directories and locks, storage faults
turned into clear errors, trees copied as hard links."""
