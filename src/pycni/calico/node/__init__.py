"""calico-node: the per-node daemon beside the CNI plugins (routing between nodes, natOutgoing,
network policy), configured by its environment as Calico's calico/node is."""
