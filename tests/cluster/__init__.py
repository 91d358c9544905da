"""A cluster on one machine: nodes are network namespaces on a shared underlay bridge, each with
private bind mounts of the directories its daemons own, and one etcd every node reaches."""
