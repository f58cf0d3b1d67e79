"""Helpers shared by the tests: the netns lab, peer processes, polling, HTTP and web helpers.

Imported as `support.<module>` (tests/ is on sys.path through tests/conftest.py).
"""
