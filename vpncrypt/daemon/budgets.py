"""Per-client budgets both packet loops enforce (the Python loop here in the daemon, the
native loop in _fast_receive.pxi, which compiles these numbers in through the generated
_fast_rules.pxi): how much a sender that is not where its client was may cost us."""

# (Their buckets are protocol/bucket.py's; this module stays free of imports, as the
# generator loads it alone.)

# DATA a second and client opened when it does not come from the client's endpoint:
# see daemon/server.py PeerState.may_open and the native loop's on_datagram.
ROAM_RATE = 1000.0
# Keepalives and time-sync packets a second and client the native loop hands up to the
# Python side (which decides them with the sans-IO core); the Python loop decides them
# itself, so this one is the native loop's only.
CTL_RATE = 50.0
