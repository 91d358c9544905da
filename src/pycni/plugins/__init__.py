"""The plugins pycni ships: `main` (interfaces), `ipam` (addresses), `meta` (chained)."""
