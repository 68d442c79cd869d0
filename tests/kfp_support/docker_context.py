"""The Docker build context and Dockerfile instructions, read as `docker build` reads them.

No Docker engine is needed: `.dockerignore` patterns follow Docker's rules
(Go `filepath.Match` syntax plus `**`, leading `!` re-includes, the last
matching pattern wins, and a pattern that matches a folder matches everything
in it).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence

Pattern = tuple[bool, re.Pattern]


def _translate(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith('**', i):
            i += 2
            if pattern.startswith('/', i):
                i += 1
                out.append('(?:.*/)?')
            else:
                out.append('.*')
            continue
        if c == '*':
            out.append('[^/]*')
        elif c == '?':
            out.append('[^/]')
        elif c == '[':
            end = pattern.index(']', i)
            body = pattern[i + 1 : end]
            out.append('[' + ('^' + body[1:] if body.startswith('^') else body) + ']')
            i = end
        elif c == '\\' and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(''.join(out) + r'\Z')


def read_dockerignore(path: str) -> list[Pattern]:
    """(is_exception, regex) for each pattern of a `.dockerignore` file."""
    patterns = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            negate = line.startswith('!')
            text = os.path.normpath(line[1:] if negate else line).lstrip('/')
            patterns.append((negate, _translate(text)))
    return patterns


def is_excluded(relpath: str, patterns: Sequence[Pattern]) -> bool:
    """Whether `relpath` (relative to the context, `/`-separated) stays out of the context."""
    parts = relpath.split('/')
    candidates = ['/'.join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def copy_build_context(source: str, dest: str, patterns: Sequence[Pattern]) -> list[str]:
    """Copies what `docker build source` would send (and `COPY ./ ./` copy); returns the files."""
    copied = []
    reincludes = [regex.pattern for negate, regex in patterns if negate]
    for dirpath, dirnames, filenames in os.walk(source):
        rel_dir = os.path.relpath(dirpath, source).replace(os.sep, '/')
        rel_dir = '' if rel_dir == '.' else rel_dir + '/'
        # Skip excluded folders no exception pattern could reach into (e.g. .venv).
        dirnames[:] = [
            d
            for d in dirnames
            if not is_excluded(rel_dir + d, patterns)
            or any(p.startswith(re.escape(rel_dir + d)) for p in reincludes)
        ]
        for name in filenames:
            rel = rel_dir + name
            if is_excluded(rel, patterns):
                continue
            os.makedirs(os.path.join(dest, rel_dir), exist_ok=True)
            shutil.copy2(os.path.join(dirpath, name), os.path.join(dest, rel))
            copied.append(rel)
    return sorted(copied)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with `\\` continuations joined and comments dropped."""
    with open(dockerfile, encoding='utf-8') as f:
        lines = [line.rstrip('\n') for line in f if not line.lstrip().startswith('#')]
    joined, current = [], ''
    for line in lines:
        if line.endswith('\\'):
            current += line[:-1] + ' '
            continue
        current += line
        if current.strip():
            joined.append(current.strip())
        current = ''
    result = []
    for text in joined:
        instruction, _, args = text.partition(' ')
        result.append((instruction.upper(), args.strip()))
    return result


def arg_defaults(dockerfile: str) -> dict[str, str]:
    """The `ARG NAME=default` values of a Dockerfile (those before FROM set its base)."""
    found = {}
    for instruction, args in instructions(dockerfile):
        if instruction == 'ARG':
            name, _, default = args.partition('=')
            found[name.strip()] = default.strip()
    return found


def substitute(text: str, values: dict[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced as `docker build` does with build arguments."""
    return re.sub(r'\$\{(\w+)\}|\$(\w+)', lambda m: values[m.group(1) or m.group(2)], text)
