"""Fruits! featurize-and-PCA job."""
