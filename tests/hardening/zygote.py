"""A pre-loaded ``billing-bot``: imports the CLI once, then forks one child per command.

``billing-bot`` takes one to four seconds to import on this machine; tests that start it
dozens of times (ten SIGKILLs, Hypothesis-generated files) pay that once here. Each child runs
the real ``bot.cli.main`` with its own environment, working directory and standard streams,
exactly as the console script would, and can be killed like one.

Protocol, one JSON object per line on stdin: ``{"argv", "env", "cwd", "stdin", "stdout",
"stderr"}`` (paths). The zygote answers ``started PID``, then ``exited PID CODE`` (a negative
CODE is the signal that ended it), one command at a time.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from bot import cli


def child(request: dict[str, object]) -> None:
    """Become ``billing-bot ARGV``; never returns."""
    code = 1
    try:
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(str(request["cwd"]))
        for fd, key, mode in ((0, "stdin", os.O_RDONLY), (1, "stdout", None), (2, "stderr", None)):
            flags = mode if mode is not None else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            os.dup2(os.open(str(request[key]), flags, 0o600), fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the child's own
        argv = request["argv"]
        assert isinstance(argv, list)
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refusing the arguments
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
