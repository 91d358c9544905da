"""The resident agent: one long-lived process that serves every plugin call.

Kept empty: every launcher imports `pycni.agent.client` through this package.
"""
