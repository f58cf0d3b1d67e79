"""C headers and Cython declarations (.pxd) of the fast path; nothing to import at run time."""
