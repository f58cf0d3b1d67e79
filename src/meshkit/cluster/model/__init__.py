"""The replicated cluster model (sans-IO): records, state and the commands raft applies, services
and networks, the orchestrator.
"""
