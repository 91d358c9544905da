"""The CNI specification as Python types: versions, errors, results, configuration."""
