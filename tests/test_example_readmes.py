"""The example READMEs work as written: the commands of every examples/*/README.md run for real, in order.

How a README is read — the convention a README follows so that this test can check it:

- Only fenced ```bash blocks are read; other fences (```yaml, a bare ``` file listing) are not.
- A command is a line of such a block that is neither blank nor a `#` comment, together with its backslash
  continuation lines and, for a heredoc (`python - <<'PY'`), every line up to the terminator (`PY`).
- **Expected output**: the `# ` comment lines directly under a command (no blank line between) are what it prints to
  stdout, line by line, compared exactly. Inside a line, `...` matches any text of that line; a line that is only
  `...` matches any number of whole lines. A comment with a blank line above it is prose (it usually introduces the
  command below it), and a command with no comment lines under it has its output left unchecked.
- **A trailing comment** on a command's line (`curl ... # the API's summary`) is an explanation, not output. The
  command still runs and must exit 0.
- **HTTP status**: every request a `curl` command makes must get a status below 400, unless the README shows an
  error: a trailing comment that starts with a status code (`# 418: ...`) requires exactly that status, and an
  expected output that is a JSON error (`{"error":...`) requires a status of 400 or more.

How the commands run:

- In README order, each with `bash -c`, from the repository root — a scratch copy of it (see `scratch_root`): the
  READMEs write into the examples (`build_model.py` writes tensorflow-iris's `model/`, mpg-estimator adds a model
  version), and the working tree must stay as it is even when a test is interrupted. The paths are the same.
- With this test's Python environment first on PATH (`engine`, `python`); `127.0.0.1:8888` becomes the test
  server's address. A `curl` shell function around the real curl reports each request's status on stderr.
- `engine serve PROJECT [ARGS]` is not run by bash: the test starts it (engine.testing.Server, on a free port, with
  the README's ARGS), waits for /readyz before the next command, and stops it (SIGTERM, exit 0) after the last one.
- `pip install ...` lines: test_readme_install_commands (marked packaging) runs them exactly as written, from the
  repository root, in a fresh virtual environment, and then the rest of each README with that environment's
  `engine` and `python`. test_readme_commands does not run them: every distribution they name must already be
  installed here (`make setup` installs the core, every plugin and the test tools; a missing one fails the test
  with its name), with one substitution: a local project directory that is not installed (the msgpack plugin, which
  `make setup` leaves out) is installed with `pip install --target` into a scratch directory put on PYTHONPATH for
  the rest of that README, so that this environment is left as it is.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from unittest import mock

import httpx
import pytest
from support import clean_env

from engine.testing import Server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
READMES = sorted(REPO.glob("examples/*/README.md"))
README_ADDRESS = "127.0.0.1:8888"
# Each curl request's status, on stderr (curl -w; a -w of the README's own would replace it, and go unchecked).
STATUS_MARK = "readme-test-http-status:"
CURL_WITH_STATUS = "curl() { command curl -w '%{stderr}\\n" + STATUS_MARK + " %{http_code}\\n' \"$@\"; }\n"
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
COMMAND_TIMEOUT = 180  # seconds: a bound for a command that hangs, not a wait (build_model.py takes ~10 s)
READY_TIMEOUT = 120    # seconds for /readyz: TensorFlow's import is the slowest start


@dataclass
class Command:
    """One command of a README's ```bash blocks."""

    text: str                    # as written: continuation lines and the heredoc included
    line: int                    # where it starts in the README (1-based)
    shell_line: str              # the command line itself: its continuation lines, not the heredoc's body
    comment: str                 # its trailing comment, without the '#'; '' if none
    expected: list[str] | None   # the `# ` lines right under it, without the '# '; None if there are none

    @property
    def words(self) -> list[str]:
        """The command line's words, as the shell splits them (the comment left out)."""
        return shlex.split(self.shell_line.replace("\\\n", " "), comments=True)

    @property
    def kind(self) -> str:
        """'pip' (an install line), 'serve' (`engine serve`) or 'run' (anything else)."""
        words = self.words
        if words[:2] in (["pip", "install"], ["pip3", "install"]) or words[1:4] == ["-m", "pip", "install"]:
            return "pip"
        if words[:2] == ["engine", "serve"]:
            return "serve"
        return "run"

    def where(self, readme: Path) -> str:
        return f"{readme.relative_to(REPO)}:{self.line}: {self.text}"


def readme_commands(readme: Path) -> list[Command]:
    """The commands of a README's ```bash blocks, in order (see the module's docstring)."""
    return parse_commands(readme.read_text(), str(readme))


def parse_commands(text: str, name: str) -> list[Command]:
    """The commands of the ```bash blocks of a Markdown text; `name` is for messages."""
    lines = text.splitlines()
    commands, language, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            language = line.strip()[3:].strip() if language is None else None
            i += 1
            continue
        if language != "bash" or not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        start, body = i, [line]
        while body[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            body.append(lines[i])
        shell_line, comment = "\n".join(body), trailing_comment(body[-1])
        heredoc = HEREDOC.search(shell_line)
        if heredoc:
            terminator = heredoc.group(2)
            while i + 1 < len(lines) and lines[i].strip() != terminator:
                i += 1
                body.append(lines[i])
            assert lines[i].strip() == terminator, f"{name}:{start + 1}: heredoc without its {terminator} line"
        i += 1
        expected = []
        while i < len(lines) and (lines[i].startswith("# ") or lines[i] == "#"):
            expected.append(lines[i][2:])
            i += 1
        commands.append(Command("\n".join(body), start + 1, shell_line, comment, expected or None))
    return commands


def trailing_comment(line: str) -> str:
    """The text after a `#` that starts a shell comment on this line (outside quotes, at a word's start)."""
    quote, escaped = None, False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[index + 1:].strip()
    return ""


def output_pattern(expected: list[str]) -> re.Pattern:
    """A regular expression for the expected lines: `...` is any text in a line, a `...` line any lines."""
    parts = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(piece) for piece in line.split("...")) + "\n")
    return re.compile("".join(parts))


def status_allowed(command: Command, status: int) -> bool:
    """The HTTP status rule of the module's docstring."""
    shown = re.match(r"(\d{3})\b", command.comment)
    if shown:
        return status == int(shown.group(1))
    if command.expected and command.expected[0].startswith('{"error"'):
        return status >= 400
    return status < 400


def scratch_root(directory: Path) -> Path:
    """A stand-in for the repository root: a copy of examples/ (its files as git sees them: tracked and untracked,
    not ignored, so no built model/ or build/), next to links to everything else at the top of the repository."""
    root = directory / "repository"
    root.mkdir(parents=True)
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=False)
    if listed.returncode == 0:
        paths = [path for path in listed.stdout.decode().split("\0") if path]
        for path in paths:
            if path.startswith("examples/") and (REPO / path).is_file():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / path, root / path)
        top = {path.split("/", 1)[0] for path in paths} - {"examples"}
    else:  # not a git checkout: copy all but build outputs
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "build", "*.egg-info", ".pytest_cache", "*.log"))
        top = {path.name for path in REPO.iterdir()} - {"examples", ".git", ".venv"}
    for name in sorted(top):
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    return root


def pip_targets(command: Command) -> list[tuple[str, bool]]:
    """What a pip install line names: (local directory or requirement, editable)."""
    words = command.words
    words = words[words.index("install") + 1:]
    targets, editable = [], False
    for word in words:
        if word in ("-e", "--editable"):
            editable = True
        elif word.startswith("-"):
            continue
        else:
            targets.append((word, editable))
            editable = False
    return targets


def local_project(root: Path, target: str) -> Path | None:
    """The project directory a pip target names, if it is one (`.`, `plugins/x`, `./examples/x`)."""
    path = root / target
    return path if (path / "pyproject.toml").is_file() else None


def distribution_name(root: Path, target: str) -> str:
    """The distribution a pip target installs: a local project's [project].name, else the requirement's name."""
    project = local_project(root, target)
    if project:
        return tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"]
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", target).group(0)


def is_installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


class ReadmeRun:
    """Runs one README's commands (all but its pip lines, see pip()) from a scratch repository root."""

    def __init__(self, readme: Path, root: Path, env: dict[str, str], python: str = sys.executable) -> None:
        self.readme, self.root, self.env, self.python = readme, root, env, python
        self.server: Server | None = None
        self.server_env = {key: env[key] for key in ("PATH", "PYTHONPATH") if key in env}

    def pip(self, command: Command) -> None:
        """In this test's environment: check that what the line names is installed (see the module's docstring)."""
        for target, _ in pip_targets(command):
            name = distribution_name(self.root, target)
            if is_installed(name):
                continue
            project = local_project(self.root, target)
            assert project, f"{command.where(self.readme)}\nneeds {name}, which this environment lacks: install " \
                            f"it (it belongs with the test tools, in pyproject.toml's test extra)"
            site = self.root.parent / "site-packages"
            installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                        "--no-build-isolation", "--target", str(site), str(project)],
                                       capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT)
            if installed.returncode != 0:
                pytest.fail(f"{command.where(self.readme)}\ninstalling {project} into {site} failed:\n"
                            f"{installed.stdout}{installed.stderr}", pytrace=False)
            path = os.pathsep.join(filter(None, [str(site), self.env.get("PYTHONPATH")]))
            self.env["PYTHONPATH"] = self.server_env["PYTHONPATH"] = path

    def serve(self, command: Command) -> None:
        """Start `engine serve PROJECT [ARGS]` on a free port and wait until it is ready."""
        words = command.words
        project, args = (words[2], words[3:]) if len(words) > 2 and not words[2].startswith("-") else (".", words[2:])
        assert "--port" not in args and "--host" not in args, f"{command.where(self.readme)}: the test sets the port"
        self.stop()
        with mock.patch.object(sys, "executable", self.python):  # engine.testing.Server runs `sys.executable -m engine`
            self.server = Server(self.root / project, *args, env=self.server_env)
        try:
            self.server.wait_ready(READY_TIMEOUT)
        except httpx.TransportError as error:  # it stopped answering: it exited while starting
            self.server.process.wait(30)
            pytest.fail(f"{command.where(self.readme)}\nexited with {self.server.process.returncode} while starting "
                        f"({error!r}){self.server_output()}", pytrace=False)

    def run(self, command: Command) -> None:
        """Run a command with bash; check its exit status, HTTP statuses and output."""
        text = command.text
        if README_ADDRESS in text:
            assert self.server, f"{command.where(self.readme)}\ntalks to the server before `engine serve`"
            text = text.replace(README_ADDRESS, f"127.0.0.1:{self.server.port}")
        result = subprocess.run(["bash", "-c", CURL_WITH_STATUS + text], cwd=self.root, env=self.env,
                                capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        stdout = result.stdout.decode(errors="replace")
        stderr = result.stderr.decode(errors="replace")
        statuses = [int(status) for status in re.findall(rf"^{STATUS_MARK} (\d+)$", stderr, re.MULTILINE)]
        stderr = re.sub(rf"\n?{STATUS_MARK} \d+\n", "", stderr)
        report = f"{command.where(self.readme)}\n--- HTTP statuses: {statuses}\n--- stdout\n{stdout}\n--- stderr\n" \
                 f"{stderr}" + self.server_output()
        if result.returncode != 0:
            pytest.fail(f"exit status {result.returncode}: {report}", pytrace=False)
        if not all(status_allowed(command, status) for status in statuses):
            pytest.fail(f"HTTP status {statuses} is not what the README shows: {report}", pytrace=False)
        printed = stdout if stdout.endswith("\n") else stdout + "\n"
        if command.expected is not None and not output_pattern(command.expected).fullmatch(printed):
            pytest.fail(f"the output is not what the README shows: {report}\n--- the README shows\n"
                        + "\n".join(command.expected), pytrace=False)

    def server_output(self) -> str:
        return f"\n--- server output\n{self.server.output[-6000:]}" if self.server else ""

    def stop(self) -> None:
        """Stop the server, if one runs: SIGTERM must end it with exit status 0."""
        if self.server:
            server, self.server = self.server, None
            output = server.output
            code = server.stop()
            assert code == 0, f"engine serve exited with {code} on SIGTERM:\n{output[-6000:]}"

    def close(self) -> None:
        if self.server:
            self.server.close()


def run_readme(readme: Path, root: Path, env: dict[str, str], *, python: str = sys.executable,
               run_pip: bool = True) -> None:
    """Run every command of a README (its pip lines too, unless run_pip is False) from `root`."""
    commands = readme_commands(readme)
    assert commands, f"{readme}: no commands in ```bash blocks"
    run = ReadmeRun(readme, root, env, python)
    try:
        for command in commands:
            if command.kind == "pip":
                if run_pip:
                    run.pip(command)
            elif command.kind == "serve":
                run.serve(command)
            else:
                run.run(command)
        run.stop()
    finally:
        run.close()


def test_parsing_follows_the_convention():
    """The reading rules themselves, on a README written for the purpose."""
    text = "\n".join([
        "```bash", "engine serve examples/x --model-poll-interval 1   # every second",
        "```", "prose", "```bash", "# prose, above", 'curl -s -X POST "http://127.0.0.1:8888/a" \\',
        "     -d '#not-a-comment'   # 418: why", '# {"error":"x"}', "", "python - <<'PY'", "print(1)", "PY",
        "# 1", "# ...", "pip install -e . numpy", "```", "```", "not a command", "```",
    ])
    serve, curl, heredoc, pip = parse_commands(text, "README.md")
    assert (serve.kind, serve.words[2:], serve.comment) == ("serve", ["examples/x", "--model-poll-interval", "1"],
                                                            "every second")
    assert curl.kind == "run" and curl.line == 7 and curl.text.count("\n") == 1
    assert curl.comment == "418: why" and curl.expected == ['{"error":"x"}']
    assert status_allowed(curl, 418) and not status_allowed(curl, 400)
    assert heredoc.text == "python - <<'PY'\nprint(1)\nPY" and heredoc.expected == ["1", "..."]
    assert pip.kind == "pip" and pip_targets(pip) == [(".", True), ("numpy", False)]
    pattern = output_pattern(["...", "b ... d", "..."])
    assert pattern.fullmatch("b c d\n") and pattern.fullmatch("a\nb c d\ne\nf\n") and not pattern.fullmatch("b c\n")


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=[readme.parent.name for readme in READMES])
def test_readme_commands(readme, tmp_path):
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "engine").is_file(), f"{bin_dir} has no `engine` command: run the tests in engine's venv"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run_readme(readme, scratch_root(tmp_path), env)


@pytest.mark.packaging
@pytest.mark.slow
def test_readme_install_commands(tmp_path):
    """Every README's `pip install` lines, exactly as written, from the repository root, into one fresh venv.

    The READMEs in alphabetical order, each one's pip lines in order, and right after them the rest of that README
    runs with the fresh venv's `engine` and `python` (from a scratch root, as in test_readme_commands): proof that
    what the README installs is enough for what it runs. One venv for all means that a README can lean on what an
    earlier one installed (payloads gets numpy from onnx-iris); the first ones (greeter, mpg-estimator,
    msgpack-plugin) cannot. TensorFlow is installed for real: its line took 31 s and the whole test 110 s on a
    2-core machine with the wheels in pip's cache or a local index (PyPI's tensorflow-cpu is a 250 MB download).

    pip builds `./examples/msgpack-plugin` in place, leaving build/ and *.egg-info (git-ignored) there; the ones this
    test made are removed.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env(), timeout=300)
    bin_dir = venv / "bin"
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    built_in_place = [project for readme in READMES for command in readme_commands(readme) if command.kind == "pip"
                      for target, editable in pip_targets(command)
                      if not editable and (project := local_project(REPO, target))]
    there_before = {path for project in built_in_place for path in build_outputs(project)}
    try:
        for readme in READMES:
            for command in readme_commands(readme):
                if command.kind == "pip":
                    started = time.monotonic()
                    result = subprocess.run(["bash", "-c", command.text], cwd=REPO, env=env, capture_output=True,
                                            text=True, timeout=900, check=False)
                    assert result.returncode == 0, \
                        f"{command.where(readme)}\nexit status {result.returncode} after " \
                        f"{time.monotonic() - started:.0f} s\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            run_readme(readme, scratch_root(tmp_path / readme.parent.name), dict(env), python=str(bin_dir / "python"),
                       run_pip=False)
    finally:
        for path in {path for project in built_in_place for path in build_outputs(project)} - there_before:
            shutil.rmtree(path, ignore_errors=True)


def build_outputs(project: Path) -> list[Path]:
    """What building a project in place leaves in it (setuptools: build/ and NAME.egg-info/)."""
    return [path for path in (project / "build", *project.glob("*.egg-info")) if path.exists()]
