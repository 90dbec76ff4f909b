"""Reading YAML with positions: every value's line is kept, every error names file, line and key.

`Reader.get` converts a value with a function that raises ValueError (`bridge.config.values`);
`Reader.secret` reads `X`, `X_env` or `X_file` and remembers where each secret came from; file
paths name environment variables and are relative to the config file's folder.
"""

from __future__ import annotations

import difflib
import os
import re
import wave
from pathlib import Path
from typing import Any, Callable

import yaml

from .model import RINGBACK_TONES, SecretOrigin
from .values import env_name, nonempty_str


class Map(dict):
    """A mapping that remembers the line of itself and of each key."""

    line: int = 0
    lines: dict[Any, int]


class Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: Loader, node: yaml.MappingNode) -> Map:
    loader.flatten_mapping(node)
    result = Map()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.MarkedYAMLError("while constructing a mapping", node.start_mark,
                                       f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class Reader:
    """Reads typed values out of _Maps, collecting errors with file, line and key."""

    def __init__(self, path: str, env: dict[str, str]) -> None:
        self.path = path
        self.env = env
        self.errors: list[str] = []
        self.secrets: list[SecretOrigin] = []

    def error(self, where: Map, key: str, keypath: str, message: str) -> None:
        line = where.lines.get(key, where.line) if isinstance(where, Map) else 0
        self.errors.append(f"{self.path}:{line}: {keypath}: {message}")

    def section(self, parent: Map, key: str, keypath: str, known: set[str] | None,
                required: bool = False) -> Map:
        """The mapping at `key` (empty if absent); `known` lists its keys (None: any)."""
        value = parent.get(key)
        if value is None or not isinstance(value, Map):
            if value is not None:
                self.error(parent, key, keypath, "must be a mapping")
            elif required:
                self.error(parent, key, keypath, "missing section")
            empty = Map()                  # (a list or a scalar given for a section: an empty one)
            empty.line = parent.lines.get(key, parent.line)
            empty.lines = {}
            return empty
        if known is not None:
            self.unknown(value, keypath, known)
        return value

    def unknown(self, where: Map, keypath: str, known: set[str]) -> None:
        for key in where:
            if isinstance(key, str) and key.endswith("_file") and f"{key[:-5]}_env" in known:
                continue                    # every secret with an `_env` may come from a file
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                what = f"unknown key in {keypath}" if keypath else "unknown top-level key"
                self.error(where, key, f"{keypath}.{key}" if keypath else str(key),
                           f"{what} ({hint}expected one of: {', '.join(sorted(known))})")

    def get(self, where: Map, key: str, keypath: str, convert: Callable[[Any], Any],
            default: Any = None, required: bool = False) -> Any:
        if key not in where or where[key] is None:
            if required:
                self.error(where, key, keypath, "is required")
            return default
        try:
            return convert(where[key])
        except (ValueError, TypeError) as exc:
            self.error(where, key, keypath, str(exc))
            return default

    def secret(self, where: Map, key: str, keypath: str, required: bool = True,
               sensitive: bool = True) -> str | None:
        """The value of secret `key`: from `<key>_env`'s variable if set, else from the file
        `<key>_file` names (systemd's LoadCredential=), else inline.
        `sensitive` secrets are recorded in `secrets` (an API key is an id, not a secret)."""
        env_key, file_key = f"{key}_env", f"{key}_file"
        name = self.get(where, env_key, f"{keypath}_env", env_name)
        lines = where.lines if isinstance(where, Map) else {}
        if file_key in where:
            if name:
                self.error(where, file_key, f"{keypath}_file", f"give {env_key} or {file_key}, not both")
            value = self.get(where, file_key, f"{keypath}_file", self.secret_file)
            if value is not None and sensitive:
                self.secrets.append(SecretOrigin(keypath, lines.get(file_key, 0), "file", None, value))
            if value is None and where.get(file_key) is None and required:
                self.error(where, file_key, f"{keypath}_file", "secret is missing: name a file")
            return value
        if name and self.env.get(name):
            if sensitive:
                self.secrets.append(SecretOrigin(keypath, lines.get(env_key, 0), "env", name, self.env[name]))
            return self.env[name]
        value = self.get(where, key, keypath, nonempty_str)
        if value is None and required:
            hint = f"set {key}, or the environment variable {name}" if name else f"set {key} or {env_key}"
            self.error(where, key if key in where else env_key, keypath, f"secret is missing: {hint}")
        if value is not None and sensitive:
            self.secrets.append(SecretOrigin(keypath, lines.get(key, 0), "inline", name, value))
        return value


    def file_path(self, value: Any) -> str:
        """A file path; `$NAME` / `${NAME}` are taken from the environment (e.g.
        `${CREDENTIALS_DIRECTORY}/sip-password` under systemd's LoadCredential=)."""
        if not isinstance(value, str) or not value:
            raise ValueError("must be a file path")

        def variable(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            if not self.env.get(name):
                raise ValueError(f"names ${name}, which is not set")
            return self.env[name]
        text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", variable, value)
        return str(Path(self.path_base) / text) if not os.path.isabs(text) else text

    @property
    def path_base(self) -> str:
        """Relative paths are relative to the config file's folder."""
        return str(Path(self.path).resolve().parent) if self.path != "<config>" else os.getcwd()

    def secret_file(self, value: Any) -> str:
        """The secret held in a file (one trailing newline dropped)."""
        path = self.file_path(value)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        text = text[:-1] if text.endswith("\n") else text
        if not text:
            raise ValueError(f"{path} is empty")
        return text

    def wav_file(self, value: Any) -> str:
        """A 16-bit PCM WAV file that holds audio (any rate, any channels), checked at load."""
        path = self.file_path(value)
        try:
            with wave.open(path, "rb") as w:
                if w.getsampwidth() != 2:
                    raise ValueError(f"{path} is {8 * w.getsampwidth()}-bit: give a 16-bit PCM WAV file")
                if w.getnframes() == 0:
                    raise ValueError(f"{path} holds no audio")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (wave.Error, EOFError) as exc:
            raise ValueError(f"{path} is not a PCM WAV file ({exc or 'truncated'})") from None
        return path

    def ringback(self, value: Any) -> str:
        """A national ringing tone (RINGBACK_TONES) or a WAV file."""
        if isinstance(value, str) and value.lower() in RINGBACK_TONES:
            return value.lower()
        if not isinstance(value, str) or not value.lower().endswith(".wav"):
            raise ValueError(f"must be {', '.join(RINGBACK_TONES)} or a .wav file")
        return self.wav_file(value)

    def record_file(self, value: Any) -> str | None:
        """A file that lines are appended to (`off`: none); its folder must exist."""
        if value is False or value == "off":
            return None
        path = self.file_path(value)
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError(f"the folder of {path} does not exist")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder: name a file")
        return path


# PyYAML's wording -> what to fix; (problem fragment, message, report the context's line)
_YAML_PROBLEMS = (
    ("mapping values are not allowed", "a `key: value` where none can start: check this line's "
     "indentation, or quote a value that holds ': '", False),
    ("expected <block end>", "this line's indentation does not match the lines above it (keys of one "
     "section need the same number of spaces)", False),
    ("could not find expected ':'", "a line that is not `key: value` (a missing ':', or an indentation "
     "that does not match the lines above)", False),
    ("'\\t'", "a tab: YAML indents with spaces only", False),
    ("cannot start any token", "a character that cannot start a value here (a tab? indent with spaces; "
     "quote values that start with @ or `)", False),
    ("end of stream", "a quote, bracket or brace opened here is never closed", True),
    ("expected ',' or ']'", "a [list] opened here is not closed with ]", True),
    ("expected ',' or '}'", "a {mapping} opened here is not closed with }", True),
)


def yaml_error(path: str, exc: yaml.MarkedYAMLError) -> str:
    """A YAML syntax error as `file:line: what to fix`, not in PyYAML's parser terms."""
    problem = f"{exc.problem or ''} {exc.context or ''}"
    for fragment, message, at_context in _YAML_PROBLEMS:
        if fragment in problem:
            mark = (exc.context_mark if at_context else None) or exc.problem_mark or exc.context_mark
            break
    else:
        message = f"{exc.problem or exc.context}"
        mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 0
    return f"{path}:{line}: YAML syntax: {message}"
