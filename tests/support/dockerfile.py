"""Read a Dockerfile well enough to check it and to run its command without Docker.

Only the parts the tests need: instructions (continuation lines joined, comments
dropped), stages, and the final stage's ENTRYPOINT, CMD, ENV, USER, WORKDIR, VOLUME,
LABEL, COPY and HEALTHCHECK. Exec (JSON) form is required where it matters, so a shell
form ENTRYPOINT is reported instead of guessed at.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT or CMD as a list; raises ValueError when it is not exec (JSON) form."""
        instruction = self.last(keyword)
        if instruction is None:
            return []
        try:
            value = json.loads(instruction.args)
        except json.JSONDecodeError:
            raise ValueError(f"line {instruction.line}: {keyword} is not in exec (JSON) form") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"line {instruction.line}: {keyword} must be a JSON array of strings")
        return value

    @property
    def command(self) -> list[str]:
        """What the container runs: ENTRYPOINT followed by CMD, both exec form."""
        return self.exec_form("ENTRYPOINT") + self.exec_form("CMD")

    @property
    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                name, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: use ENV NAME=value")
                values[name] = value
        return values

    @property
    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for token in shlex.split(instruction.args):
                name, _, value = token.partition("=")
                values[name] = value
        return values

    @property
    def user(self) -> str | None:
        instruction = self.last("USER")
        return instruction.args.strip() if instruction else None

    @property
    def workdir(self) -> str | None:
        instruction = self.last("WORKDIR")
        return instruction.args.strip() if instruction else None

    @property
    def volumes(self) -> list[str]:
        paths: list[str] = []
        for instruction in self.all("VOLUME"):
            text = instruction.args.strip()
            paths.extend(json.loads(text) if text.startswith("[") else text.split())
        return paths

    @property
    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        """Each COPY as (sources, destination, options such as from)."""
        result = []
        for instruction in self.all("COPY"):
            tokens = shlex.split(instruction.args)
            options = {}
            while tokens and tokens[0].startswith("--"):
                name, _, value = tokens.pop(0)[2:].partition("=")
                options[name] = value
            result.append((tokens[:-1], tokens[-1], options))
        return result

    def copy_source(self, destination: str) -> str | None:
        """The build-context file copied to ``destination`` (not from another stage)."""
        for sources, dest, options in self.copies:
            if dest == destination and "from" not in options and len(sources) == 1:
                return sources[0]
        return None

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]] | None:
        """HEALTHCHECK options and its exec-form command."""
        instruction = self.last("HEALTHCHECK")
        if instruction is None:
            return None
        options: dict[str, str] = {}
        rest = instruction.args.strip()
        while rest.startswith("--"):
            option, _, rest = rest.partition(" ")
            name, _, value = option[2:].partition("=")
            options[name] = value
            rest = rest.strip()
        keyword, _, command = rest.partition(" ")
        if keyword.upper() != "CMD":
            raise ValueError(f"line {instruction.line}: HEALTHCHECK must be CMD [...]")
        value = json.loads(command)
        return options, value


@dataclass
class Dockerfile:
    args: dict[str, str]
    """ARGs declared before the first FROM, with their defaults."""
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults declared inside ``stage``."""
        values = {}
        for instruction in stage.all("ARG"):
            name, _, value = instruction.args.strip().partition("=")
            values[name] = value
        return values


def parse(path: Path) -> Dockerfile:
    logical: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        text = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, args = text.partition(" ")
        logical.append(Instruction(keyword.upper(), args.strip(), start))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        if instruction.keyword == "FROM":
            tokens = instruction.args.split()
            name = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else None
            stages.append(Stage(tokens[0], name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {instruction.line}: only ARG may come before FROM")
            name, _, value = instruction.args.partition("=")
            global_args[name.strip()] = value.strip()
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)
