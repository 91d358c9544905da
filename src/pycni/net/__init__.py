"""Kernel-facing helpers shared by plugins: namespaces, netlink, sysctl, nftables, tc."""
