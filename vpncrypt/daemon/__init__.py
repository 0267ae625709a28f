"""The daemon: thin shells that move packets between a TUN device, a UDP socket and the core."""
