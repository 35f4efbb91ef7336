"""Tests of the Ray-free engine."""
