"""host-local IPAM internals: configuration, the on-disk store, the allocator.

The plugin itself is `pycni.plugins.ipam.host_local`.
"""
