"""Ipam plugins."""
