"""The base layer: one grammar per concept, errors, files, network namespaces, the process
runtime."""
