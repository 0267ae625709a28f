"""INI reading with line numbers: configparser's own line walk, keeping where each
section and key is (configparser forgets), so that every later error names its line;
files configparser would refuse are handed to it for its exact diagnosis."""

from __future__ import annotations

import os
import re

from .errors import _KEYLIKE, ConfigError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import configparser

_SECT_RE = re.compile(r"\[(?P<header>.+)\]")  # configparser's SECTCRE
_OPT_RE = re.compile(r"(?P<option>.*?)\s*=\s*(?P<value>.*)$")  # its OPTCRE for '=' only
_INLINE_COMMENTS = (";", "#")
_SAFE_KEY_NAME = re.compile(r"[a-z0-9_.-]{1,32}")


def _new_parser() -> configparser.ConfigParser:
    import configparser  # only for files it refuses (see _Context), and the fuzz oracle

    return configparser.ConfigParser(
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=_INLINE_COMMENTS,
        strict=True,
        empty_lines_in_values=False,
        interpolation=None,
        # '\n' can never be a section header, so there is no magic [DEFAULT] section.
        default_section="\n",
    )


def _comment_start(line: str) -> int | None:
    """Where configparser's comment handling cuts the line (mirrors RawConfigParser._read)."""
    if line.strip().startswith(("#", ";")):
        return 0
    comment_start = None
    prefixes = {prefix: -1 for prefix in _INLINE_COMMENTS}
    while comment_start is None and prefixes:
        following = {}
        for prefix, index in prefixes.items():
            index = line.find(prefix, index + 1)
            if index == -1:
                continue
            following[prefix] = index
            if index == 0 or line[index - 1].isspace():
                comment_start = index if comment_start is None else min(comment_start, index)
        prefixes = following
    return comment_start


_NONSPACE = re.compile(r"\S")


class _Context:
    """The file being parsed and where its sections and keys are (configparser forgets).

    The line walk is configparser's own (``RawConfigParser._read`` with the options of
    :func:`_new_parser`), so it also yields the sections and their values: ``sections``
    is ``{header: {key: value}}`` exactly as configparser would read them, or None when
    configparser would refuse the file (duplicate section or key, a line before the
    first header, a line that is not ``key = value``); :func:`_parse_ini` then runs
    configparser itself for its exact diagnosis. A 5 000-client file is read several
    times faster this way than through configparser.
    """

    def __init__(self, path: str, text: str):
        self.path = path
        self.dir = os.path.dirname(path)
        self.text = text
        self.section_lines: dict[str, int] = {}
        self.key_lines: dict[tuple[str, str], int] = {}
        self.sections: dict[str, dict[str, str]] | None = None
        self.header_junk_line: int | None = None  # "[server] junk": configparser ignores junk
        self._raw_lines: list[str] | None = None
        self._scan()

    @property
    def raw_lines(self) -> list[str]:
        """The file's lines, without line ends (only error messages need them)."""
        if self._raw_lines is None:
            self._raw_lines = self.text.split("\n")
        return self._raw_lines

    def _scan(self) -> None:
        # Same walk as configparser with empty_lines_in_values=False and '=' as delimiter.
        # `section`/`optname` drive the position bookkeeping (as before); `cursect` and
        # `values` build configparser's result for as long as configparser would accept.
        section = None
        optname = None
        indent_level = 0
        section_lines, key_lines = self.section_lines, self.key_lines
        sections: dict[str, dict[str, list[str]]] | None = {}
        cursect = None
        comment_start, sect_match, nonspace = _comment_start, _SECT_RE.match, _NONSPACE.search
        for lineno, line in enumerate(self.text.split("\n"), start=1):
            # (io.StringIO, which configparser reads, splits lines at "\n" only.)
            if "#" in line or ";" in line:
                value = line[: comment_start(line)].strip()
            else:
                value = line.strip()
            if not value:
                indent_level = 1 << 62
                continue
            # `value` is not empty, so the line has a non-space character.
            cur_indent = nonspace(line).start() if line[0].isspace() else 0
            if section is not None and optname and cur_indent > indent_level:
                if sections is not None:  # continuation of the previous value
                    cursect[optname].append(value)
                continue
            indent_level = cur_indent
            mo = sect_match(value) if value[0] == "[" else None
            if mo:
                section = mo.group("header")
                if section in section_lines:
                    sections = None  # configparser: DuplicateSectionError
                else:
                    section_lines[section] = lineno
                    if sections is not None:
                        cursect = sections[section] = {}
                if mo.end() != len(value) and self.header_junk_line is None:
                    self.header_junk_line = lineno
                optname = None
                continue
            if section is None:
                sections = None  # configparser: MissingSectionHeaderError
                continue
            eq = value.find("=")  # the first '=' ends the key, as in configparser's OPTCRE
            name = value[:eq].rstrip() if eq > 0 else ""
            if not name:
                sections = None  # configparser: ParsingError (no '=', or nothing before it)
                continue
            optname = name.lower()
            if (section, optname) in key_lines:
                sections = None  # configparser: DuplicateOptionError
                continue
            key_lines[(section, optname)] = lineno
            if sections is not None:
                cursect[optname] = [value[eq + 1:].strip()]
        if sections is not None:
            self.sections = {
                header: {k: v[0] if len(v) == 1 else "\n".join(v).rstrip()
                         for k, v in options.items()}
                for header, options in sections.items()
            }

    def error(self, problem, *, header=None, section=None, key=None, line=None):
        if line is None and header is not None:
            if key is not None:
                line = self.key_lines.get((header, key))
            if line is None:
                line = self.section_lines.get(header)
        return ConfigError(self.path, problem, line=line, section=section, key=key)


def _section_label(header: str) -> str:
    if _KEYLIKE.search(header):
        return "[<name not shown: it looks like key material>]"
    return f"[{header}]"


def _safe_key_name(name: str) -> bool:
    return bool(_SAFE_KEY_NAME.fullmatch(name))


def _parse_ini(ctx: _Context) -> dict[str, dict[str, str]]:
    """``{header: {key: value}}`` in file order, as configparser reads the file; its
    errors as one-line ConfigErrors."""
    if ctx.sections is not None:
        if ctx.header_junk_line is not None:
            raise ctx.error("unexpected text after the section header", line=ctx.header_junk_line)
        return ctx.sections
    # The walk in _Context found something configparser refuses: let it say what.
    import configparser

    cp = _new_parser()
    try:
        cp.read_string(ctx.text, source=ctx.path)
    except configparser.MissingSectionHeaderError as e:
        raise ctx.error(
            "text before the first section header (a file starts with [server] or [client])",
            line=e.lineno,
        ) from None
    except configparser.DuplicateSectionError as e:
        first = ctx.section_lines.get(e.section)
        raise ctx.error(
            f"duplicate section {_section_label(e.section)} (first at line {first})", line=e.lineno
        ) from None
    except configparser.DuplicateOptionError as e:
        first = ctx.key_lines.get((e.section, e.option))
        if _safe_key_name(e.option):
            raise ctx.error(
                f"duplicate key (first set at line {first})",
                section=e.section, key=e.option, line=e.lineno,
            ) from None
        raise ctx.error(f"[{e.section}] duplicate line (first at line {first})", line=e.lineno) from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0] if e.errors else None
        raw = ctx.raw_lines[lineno - 1] if lineno and lineno <= len(ctx.raw_lines) else ""
        hint = " (use '=' between key and value, not ':')" if ":" in raw and "=" not in raw else ""
        raise ctx.error(
            "cannot parse this line: expected 'key = value', a [section] header or a comment" + hint,
            line=lineno,
        ) from None
    except (configparser.Error, ValueError) as e:
        raise ctx.error(f"cannot parse the file ({type(e).__name__})") from None
    if ctx.header_junk_line is not None:
        raise ctx.error("unexpected text after the section header", line=ctx.header_junk_line)
    return {header: dict(cp[header]) for header in cp.sections()}
