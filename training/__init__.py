"""Offline training: a UTF-8 text file in, a model directory out."""
