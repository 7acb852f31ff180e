"""lowtide workers."""
