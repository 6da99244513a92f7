"""Model code the project owns (architectures not importable from installed libraries)."""
