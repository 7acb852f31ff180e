"""lowtide platform."""
