"""Flannel: flanneld (subnet leases in etcd; VXLAN and host-gw between nodes) and the `flannel`
CNI plugin, with the flags, etcd layout and file formats of flannel-io/flannel and
flannel-io/cni-plugin. Depends on the core (pycni.spec, pycni.net, pycni.runtime) only."""
