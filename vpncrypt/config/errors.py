"""The error contract of configuration input: every problem is a ConfigError whose
``str()`` is exactly one line naming the file, the line (or section/key) and the
problem, and never contains key material."""

import os
import re


def _one_line(text: str) -> str:
    """Escape line breaks and other control characters so a message stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_KEY_RUN = re.compile(r"[A-Za-z0-9+/]{43,}={0,2}")


def _redact(text: str) -> str:
    """Hide anything shaped like a base64 key (43+ characters of its alphabet)."""
    return _KEY_RUN.sub("<not shown: looks like key material>", text)


class ConfigError(Exception):
    """A problem with a configuration or key file; ``str(e)`` is exactly one line.

    ``"<path>:<line>: [section] key: <problem>"`` when the line is known, otherwise
    ``"<path>: [section] key: <problem>"``; the section and key parts are present
    when the problem belongs to one. The parts are also available as attributes.
    ``ConfigError(message)`` with a single argument is accepted too (for callers that
    already have a formatted line): ``path`` is then None and the message is kept as is.
    """

    def __init__(self, path, problem=None, *, line=None, section=None, key=None):
        if problem is None:
            self.path = self.line = self.section = self.key = None
            self.problem = str(path)
            super().__init__(_redact(_one_line(self.problem)))
            return
        self.path = os.fspath(path) if not isinstance(path, str) else path
        self.problem = problem
        self.line = line
        self.section = section
        self.key = key
        where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        if section is not None:
            where += f"[{section}] "
        if key is not None:
            where += f"{key}: "
        super().__init__(_redact(_one_line(where + problem)))

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (_rebuild_error, (self.path, self.problem, self.line, self.section, self.key))


def _rebuild_error(path, problem, line, section, key):
    if path is None:
        return ConfigError(problem)
    return ConfigError(path, problem, line=line, section=section, key=key)


_KEYLIKE = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")


def _show(value: str) -> str:
    """repr() of a user value for a message, unless it looks like key material."""
    if _KEYLIKE.search(value):
        return "<value not shown: it looks like key material>"
    return repr(value)
