"""vpncrypt: a stateless, handshake-free layer-3 VPN sealed with AES-SIV over UDP."""

__version__ = "0.1.0"
