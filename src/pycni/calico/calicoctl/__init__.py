"""calicoctl: Calico's command-line tool for the pycni datastore (ipam, get, create/apply/delete)."""
