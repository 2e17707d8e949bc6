"""The command base class: help from the parser, error translation, completion, output.

A command subclass gives ``command`` (its name), a docstring whose first line is the one-sentence
summary, ``build_parser()`` and ``run(args)``. The base appends the parser's help to the docstring
(so ``help xen-pte-walk`` and the options can never drift apart), calls ``dont_repeat()`` before
anything can fail, and turns engine errors into one-line ``gdb.GdbError``s.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
from typing import IO, Iterable, List, Optional, Union

import gdb

from ..errors import XenpteError
from ..outfile import replacing
from ..render import Style
from .args import GdbArgumentParser

__all__ = [
    "XenPteCommand",
    "output_to",
    "style",
    "write_lines",
]


# The -o FILE of the running command, if any: output goes there instead of gdb's pager.
_sink: List[IO[str]] = []


def write_lines(lines: Iterable[str], chunk: int = 256) -> None:
    """Write lines through gdb's pager (a 'q' at its prompt raises KeyboardInterrupt here), or
    to the command's ``-o FILE``.

    Lines go out in chunks: one ``gdb.write`` per line costs more than the JSON encoding.
    """
    out = _sink[-1].write if _sink else gdb.write
    buf: List[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= chunk:
            out("\n".join(buf) + "\n")
            buf.clear()
    if buf:
        out("\n".join(buf) + "\n")


def _inputs(args: argparse.Namespace) -> List[str]:
    """The files a command reads (so ``-o`` never overwrites one)."""
    raw = getattr(args, "raw", None)
    return [f for f in (getattr(args, "core", None), raw.rpartition("@")[0] or raw if raw else None,
                        getattr(args, "xen_syms", None)) if f]


@contextlib.contextmanager
def output_to(path: Optional[str], inputs: Iterable[str] = ()):
    """Send :func:`write_lines` to ``path`` while the block runs (nothing when None); see
    :func:`gdb_xenpte.outfile.replacing`.

    :raises OptionError: for an output that is an input, or that cannot be written.
    """
    if path is None:
        yield
        return
    with replacing(path, inputs) as f:
        _sink.append(f)
        try:
            yield
        finally:
            _sink.pop()


def _complete_path(prefix: str) -> List[str]:
    """File names starting with ``prefix`` (directories end in '/'), as a shell would offer."""
    head, tail = os.path.split(os.path.expanduser(prefix))
    try:
        names = os.listdir(head or ".")
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name.startswith(tail) and (tail.startswith(".") or not name.startswith(".")):
            full = os.path.join(head, name) if head else name
            out.append(prefix[:len(prefix) - len(tail)] + name + ("/" if os.path.isdir(full)
                                                                  else ""))
    return out


def style() -> Style:
    """Colours when gdb would style its own output.

    ``style enabled`` is off in batch mode and after ``set style enabled off``; like gdb, also
    emit no escapes when stdout is no terminal (MI front ends, pipes) or TERM is dumb, nor into
    a ``-o`` file.
    """
    if _sink:
        return Style(False)
    try:
        enabled = bool(gdb.parameter("style enabled"))
    except gdb.error:
        enabled = False
    return Style(enabled and os.isatty(1) and os.environ.get("TERM", "dumb") != "dumb")


class XenPteCommand(gdb.Command):
    """Base of the xen-pte commands (not registered itself)."""

    command = ""
    takes_address = False  # positional arguments are gdb expressions (complete as such)

    def __init__(self):
        self.parser = self.build_parser()
        self.parser.add_argument("-o", "--output", metavar="FILE",
                                 help="write the output to FILE instead of the screen (no "
                                      "colour; FILE is replaced only when the command succeeds)")
        doc = type(self).__dict__.get("_summary") or inspect.cleandoc(type(self).__doc__)
        type(self)._summary = doc
        summary, _, rest = doc.partition("\n")
        self.parser.description = rest.strip() or None
        # gdb's help invariants: first line ends with '.', no trailing newline (style.md §5.1).
        type(self).__doc__ = summary + "\n\n" + self.parser.format_help().rstrip()
        super().__init__(self.command, gdb.COMMAND_DATA)

    def build_parser(self) -> GdbArgumentParser:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> None:
        raise NotImplementedError

    def invoke(self, argument: str, from_tty: bool) -> None:
        self.dont_repeat()
        try:
            # Parsing evaluates gdb expressions ($cr3, symbols): Ctrl-C can land there too.
            args = self.parser.parse(argument)
            with output_to(args.output, _inputs(args)):
                self.run(args)
        except XenpteError as err:
            raise gdb.GdbError(f"{self.command}: {err}") from None
        except KeyboardInterrupt:
            raise gdb.GdbError(f"{self.command}: interrupted") from None

    def complete(self, text: str, word: str) -> Union[int, List[str]]:
        # gdb calls this twice: word=None to learn word breaks, then with the word. Its default
        # breaks split "--core" at '-', so work on whole tokens and return the part after word.
        if word is None:
            return []
        current = "" if not text or text[-1].isspace() else text.split()[-1]
        before = text[:len(text) - len(current)].split()
        prev = before[-1] if before else ""
        if prev in self.parser.takes_file():
            found = _complete_path(current)
        elif self.parser.choices_of(prev):
            found = [c for c in self.parser.choices_of(prev) if c.startswith(current)]
        elif current.startswith("-"):
            found = [o for o in self.parser.option_strings() if o.startswith(current)]
        else:
            return gdb.COMPLETE_EXPRESSION if self.takes_address else []
        cut = len(current) - len(word)
        return [f[cut:] for f in found]
