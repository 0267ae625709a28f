# _fast_constants.pxi: the native loop's own constants (batch and buffer sizes, offload
# flags and sizes, event kinds), which only the native code uses. The protocol rules'
# numbers (kinds, freshness, window, drop reasons, budgets) are in the generated
# _fast_rules.pxi, from the Python modules that own them.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

DEF BATCH = 32
DEF SLOT = 65536
DEF HEADROOM = 16     # room in front of a packet for the TUN's frame prefix
# Offloads (Engine's `offload` flags), Linux only, each probed by the Python side.
DEF OFF_VNET = 1      # the TUN speaks virtio_net_hdr: TSO super-packets in, checksums to finish
DEF OFF_GSO = 2       # UDP_SEGMENT: one send carries many equal-size datagrams
DEF OFF_GRO = 4       # UDP_GRO: one receive returns many datagrams of one sender
DEF OFF_USO = 8       # the TUN hands over UDP super-packets (Linux >= 6.2)
DEF VNET_LEN = 10     # sizeof(struct virtio_net_hdr)
DEF VNET_F_NEEDS_CSUM = 1
DEF VNET_GSO_TCPV4 = 1
DEF VNET_GSO_TCPV6 = 4
DEF VNET_GSO_UDP_L4 = 5
DEF GSO_MAX_SEGS = 64     # the kernel's UDP_MAX_SEGMENTS
DEF GSO_MAX_BYTES = 65487 # largest UDP payload over IPv6 (65507 over IPv4)
DEF TX_BYTES = 131072     # a send batch flushes past this: bounds the buffer memory touched
                          # (two 64-KB GSO messages a sendmmsg is plenty at these rates)
DEF TX_CAP = TX_BYTES + SLOT + BATCH * 16   # + the message that crossed it, + alignment
DEF RX_ROUNDS = 16        # receive batches between two polls while batches come full
DEF YIELD_WRITES = 32     # TUN writes without a pause after which the core is offered
DEF RX_GRO_MSGS = 2       # receive slots per call when each may hold 64 KB of datagrams
DEF RX_KEEP = 16384       # a receive slot past RX_GRO_MSGS keeps up to this much resident
DEF GRO_QUIET = 64        # full receive batches without a coalesced message: GRO off
DEF GRO_RETRY = 1.0       # seconds until GRO is tried again
# Event kinds sent to the Python side.
DEF EV_CONTROL = 1     # an authenticated keepalive or time-sync packet: kind, plaintext
DEF UNTRUSTED = 0x80   # in EV_CONTROL's kind: window_mark_untimed found no known run
DEF EV_ENDPOINT = 2    # a client's endpoint changed (authenticated DATA from a new address)
DEF EV_DROP = 3        # a sample of a dropped packet (rate-limited), for logs and diagnosis
DEF EV_STREAM = 5     # a TCP connection ended (closed, broken, not frames): SE_*, errno
DEF EV_TOO_BIG = 4     # a TUN packet over the tunnel MTU: Python answers with ICMP (rate-limited)
DEF TOO_BIG_SAMPLE = 1232  # what ICMPv6 "packet too big" can quote within 1280 bytes
DEF EV_HEADER = 8
DEF ADDR_MAX = 28
ROAM_RATE_PER_SECOND = ROAM_RATE  # what this build compiled in (daemon/budgets.py's, by generation)
