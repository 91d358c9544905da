"""Calico's network policy model: the resources (NetworkPolicy, GlobalNetworkPolicy, Profile,
NetworkSet, GlobalNetworkSet), their validation and defaults as libcalico-go applies them, the
conversion of Kubernetes NetworkPolicies, and the calculation of what applies to an endpoint.

    model.py     parse and check a stored or submitted resource into typed, resolved objects
                 (a rule's selectors already carry the namespace, as felix receives them)
    resources.py the calicoctl side: kinds, defaults, table columns
    k8s.py       networking.k8s.io/v1 NetworkPolicy -> Calico NetworkPolicy knp.default.<name>
    calc.py      which policies and profiles apply to which endpoint, in felix's order, and
                 which endpoints each selector matches; incremental, shared by calico-node
                 and `calicoctl node policy`
"""
