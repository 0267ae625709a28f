"""The sans-IO protocol core: wire format, keys, AEAD, replay window, time sync and sessions.

Nothing in this package touches sockets, files or clocks; time is always an argument.
"""
