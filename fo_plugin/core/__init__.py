"""Numeric core: tensors in, tensors out. Nothing in this package imports FiftyOne."""
