"""lowtide activator."""
