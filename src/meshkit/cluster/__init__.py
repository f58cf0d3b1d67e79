"""The control plane: tokens, the cluster CA and mutual TLS, the raft-replicated store, and
the node agent with its local API."""
