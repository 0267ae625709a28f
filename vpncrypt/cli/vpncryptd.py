"""vpncryptd: the VPN daemon (server or client, decided by the configuration file).

Usage:
  vpncryptd -c FILE [--foreground] [--verbose] [--crypto=PATH]
  vpncryptd --version
  vpncryptd -h | --help

Options:
  -c FILE, --config=FILE  Configuration file (a [server] or a [client] section).
  -f, --foreground        Stay in the foreground and log to stderr (else detach, log to syslog).
  -v, --verbose           Debug logging.
  --crypto=PATH           Force the crypto path: native or reference [default: auto].
  --version               Print the version and exit.
  -h, --help              This help.

Signals: SIGTERM/SIGINT stop cleanly (the interface is removed); SIGHUP reloads the
client table; SIGUSR1 logs the counters.
"""

import marshal
import os
import sys

from .. import __version__
from . import fail, parse_args

PROG = "vpncryptd"

# The parsed command line, handed to the re-executed daemon (see parsed_then_exec).
ARGS_ENV = "VPNCRYPTD_PARSED_ARGS"


def parsed_then_exec(args: dict) -> None:
    """Run the daemon proper in a fresh image of this same command (same pid and command
    line, os.execv), handing it `args` through the environment. docopt-ng imports
    typing; together they stay ~1 MB resident for the life of a process that loaded
    them, and the long-running daemon needs neither once the command line is parsed.
    Returns only if the exec failed (the daemon then runs on in this process)."""
    if not sys.executable or not getattr(sys, "orig_argv", None):
        return
    os.environ[ARGS_ENV] = marshal.dumps((sys.argv[1:], dict(args))).hex()
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError:
        os.environ.pop(ARGS_ENV, None)


def handed_args() -> dict | None:
    """The arguments parsed_then_exec handed over, if they are for this very command
    line (a stale or foreign value is ignored and the command line parsed again)."""
    value = os.environ.pop(ARGS_ENV, None)
    if value is None:
        return None
    try:
        argv, args = marshal.loads(bytes.fromhex(value))
    except (ValueError, EOFError, TypeError):
        return None
    if argv != sys.argv[1:] or not isinstance(args, dict):
        return None
    return args


def daemonize():
    """Detach (double fork, new session). The original process waits until the daemon
    reports that it is up, so a start-up failure still reaches the terminal and the exit
    status. Returns the function the daemon calls to report, taking an error line or None."""
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace").strip()
        if message != "ready":
            print(f"{PROG}: {message or 'the daemon exited during start-up'}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def report(error=None):
        try:
            os.write(write_end, (error or "ready").encode())
            os.close(write_end)
        except OSError:
            pass

    return report


def main(argv=None) -> None:
    """argv None: this process's command line (and the daemon re-executes itself once
    it is parsed); a list: parse that, in this process."""
    args = handed_args() if argv is None else None
    if args is None:
        args = parse_args(__doc__, argv, f"vpncryptd {__version__}", PROG)
        if args["--crypto"] not in ("auto", "native", "reference"):
            fail(PROG, f"--crypto: unknown path '{args['--crypto']}' (native, reference or auto)")
        if argv is None:
            parsed_then_exec(args)
    crypto = args["--crypto"]
    from .. import config as configmod
    from ..daemon import logs
    from ..daemon.runtime import FatalError

    try:
        cfg = configmod.load(args["--config"])
    except configmod.ConfigError as e:
        fail(PROG, str(e))
    if crypto == "native":
        from ..protocol import aead

        if aead.native_context() is None:
            fail(PROG, "--crypto=native: the extension vpncrypt._fast is not built")
    foreground = args["--foreground"]
    logs.setup(args["--verbose"], foreground)
    for warning in configmod.warnings_for(cfg):
        logs.log.warning("%s", warning)
    if cfg.role == "server":
        from ..daemon.server import Server as Daemon
    elif len(cfg.server_list()) > 1:
        from ..daemon.multiclient import MultiClient as Daemon
    else:
        from ..daemon.client import Client as Daemon
    report = None
    try:
        if not foreground:
            report = daemonize()
        Daemon(cfg, None if crypto == "auto" else crypto).main(ready=report)
    except FatalError as e:
        logs.log.error("%s", e)
        if report is not None:
            report(str(e))
            os._exit(1)
        fail(PROG, str(e), 1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
