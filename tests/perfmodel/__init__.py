"""Tests of recpar.perfmodel."""
