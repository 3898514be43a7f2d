"""Scores of a trained generator and of its discriminator's features."""
