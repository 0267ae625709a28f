"""vpncrypt: operator tool.

Usage:
  vpncrypt genkey
  vpncrypt genid
  vpncrypt check-config FILE
  vpncrypt show [INTERFACE] [--json | --prometheus] [--state-dir=DIR]
  vpncrypt add-client NAME --config=FILE [--endpoint=HOST:PORT] [--transport=KIND]
  vpncrypt remove-client NAME --config=FILE
  vpncrypt --version
  vpncrypt -h | --help

Commands:
  genkey        Print a fresh 256-bit key (base64). Keys are symmetric: the same key
                goes in the server's [client NAME] section and in that client's file.
  genid         Print a fresh random server id (1-4294967295) for server_id: every
                server needs its own, and its clients the same.
  check-config  Validate a configuration file without starting anything; warn (on
                stderr) about a valid but risky one, e.g. server_id 0.
  show          Status of the running daemons (all, or the one on INTERFACE): a table,
                the JSON document (--json, see docs/CONTROL.md) or Prometheus text.
  add-client    Add [client NAME] to a server config (next free id and addresses, a new
                key; a random server_id for the first client of a server without one),
                reload the running daemon, print the client's config on stdout.
  remove-client Remove [client NAME] from a server config and reload the running daemon.

Options:
  --json            Print the status as JSON (one document per daemon, in a list).
  --prometheus      Print the status in Prometheus text format (node_exporter textfile).
  --state-dir=DIR   Where the daemons' control sockets are [default: /run/vpncrypt].
  --config=FILE     The server configuration that add-client/remove-client edit.
  --endpoint=HOST:PORT  How the client reaches the server (default: the listen address,
                    or a placeholder to edit when the server listens on all addresses).
  --transport=KIND  How the client sends: udp (the default where the server has a
                    listen) or tcp, to the server's listen_tcp, for networks that drop UDP.
"""

import os
import sys

from .. import __version__
from . import fail, parse_args

PROG = "vpncrypt"


def main(argv=None) -> None:
    args = parse_args(__doc__, argv, f"vpncrypt {__version__}", PROG)
    if args["genkey"]:
        from ..protocol.keys import generate_key

        print(generate_key())
    elif args["genid"]:
        from ..provision import generate_server_id

        print(generate_server_id())
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
        # Valid, so still status 0: the FreeBSD rc script starts on it and shows this.
        for warning in configmod.warnings_for(cfg):
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
    elif args["show"]:
        show(args)
    elif args["add-client"] or args["remove-client"]:
        from .. import provision

        try:
            if args["add-client"]:
                result = provision.add_client(args["--config"], args["NAME"], args["--endpoint"],
                                              transport=args["--transport"])
            else:
                result = provision.remove_client(args["--config"], args["NAME"])
        except provision.ProvisionError as e:
            fail(PROG, str(e), 1)
        for note in result.notes:
            print(f"{PROG}: {note}", file=sys.stderr)
        if args["add-client"]:
            sys.stdout.write(result.client_config)


def show(args) -> None:
    import json

    from .. import control, status

    state_dir = args["--state-dir"]
    if args["INTERFACE"]:
        paths = [control.socket_path(state_dir, args["INTERFACE"])]
    else:
        paths = control.sockets(state_dir)
        if not paths:
            fail(PROG, f"no running vpncryptd (no control socket in {state_dir})", 1)
    docs, down = [], []
    for path in paths:
        try:
            docs.append(control.request(path, {"command": "show"}))
        except control.ControlError as e:
            if args["INTERFACE"]:
                fail(PROG, str(e), 1)
            # One stale socket (a daemon that was killed) must not hide the others.
            print(f"{PROG}: {e}", file=sys.stderr)
            down.append(os.path.basename(path)[:-len(".sock")])
    if args["--json"]:
        print(json.dumps(docs, indent=2, sort_keys=True))
    elif args["--prometheus"]:
        sys.stdout.write(status.render_prometheus(docs, down))
    else:
        print("\n\n".join(status.render_table(doc) for doc in docs))
    if not docs and not args["--prometheus"]:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
