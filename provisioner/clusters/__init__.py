"""Clusters: which nodes serve which model with which engine."""
