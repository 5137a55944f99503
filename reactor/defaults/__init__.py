"""Files `at-rund init` copies into a new home."""
