"""Tests of the model registry and the models."""
