"""Network policy in calico-node: Calico's policy model (pycni.calico.policy) enforced on nftables.

render.py     names, and the rule compiler: a Calico rule -> nftables rule expressions (JSON)
dataplane.py  the wanted objects of `table inet calico` for what changed, diffed with what is
              programmed and applied in one transaction
component.py  the calico-node component: datastore events -> calculation -> dataplane
"""
