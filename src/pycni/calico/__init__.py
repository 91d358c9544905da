"""Calico-style L3 networking: the datastore, IPAM, WorkloadEndpoints, the dataplane and calicoctl.

The `calico` and `calico-ipam` plugins (`pycni.plugins.main.calico`,
`pycni.plugins.ipam.calico_ipam`) are thin layers over these modules; `calicoctl`
reads and writes the same datastore.
"""
