"""vpncrypt: operator tool.

Usage:
  vpncrypt genkey
  vpncrypt check-config FILE
  vpncrypt --version
  vpncrypt -h | --help

Commands:
  genkey        Print a fresh 256-bit key (base64). Keys are symmetric: the same key
                goes in the server's [client NAME] section and in that client's file.
  check-config  Validate a configuration file without starting anything.
"""

import sys

from .. import __version__
from . import fail, parse_args

PROG = "vpncrypt"


def main(argv=None) -> None:
    args = parse_args(__doc__, argv, f"vpncrypt {__version__}", PROG)
    if args["genkey"]:
        from ..protocol.keys import generate_key

        print(generate_key())
    elif args["check-config"]:
        from .. import config as configmod

        try:
            cfg = configmod.load(args["FILE"])
        except configmod.ConfigError as e:
            fail(PROG, str(e))
        if cfg.role == "server":
            print(f"{cfg.path}: OK (server, {len(cfg.clients)} clients)")
        else:
            print(f"{cfg.path}: OK (client id {cfg.id}, server {cfg.server_host}:{cfg.server_port})")


if __name__ == "__main__":
    main(sys.argv[1:])
