"""Client library and demo (filled in by later issues)."""
