"""Pure vocabulary and rules: no outside system is imported here."""
