"""Packaged hardware profiles (YAML); see recpar.perfmodel.hardware for the layout."""
