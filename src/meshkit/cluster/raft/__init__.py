"""The replicated store: pysyncobj driven from the event loop, and the sealing of secrets kept in
it.
"""
