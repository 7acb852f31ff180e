"""Models served with lowtide: see the README, "Serving a model"."""
