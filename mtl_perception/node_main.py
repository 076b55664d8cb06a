"""``mtl-perception-node``: the command line around :class:`mtl_perception.node.PerceptionNode`.

Checks ``--params-file`` arguments before rcl does (one line naming the file), applies the node's
Fast DDS profile before ``rclpy.init``, builds the node and spins it on the executor
``executor_threads`` asks for (:func:`make_executor`) until SIGINT/SIGTERM; every start-up error
is one line with exit 1 (runtime) or 2 (usage) (docs/errors.md). The console script enters
through :mod:`mtl_perception.startup`, which installs the signal handling before this module
imports rclpy and torch.
"""

from __future__ import annotations

import os
import sys

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

from .node import PerceptionNode


def _params_files(argv: list[str]) -> list[str]:
    """The ``--params-file`` arguments of a ROS command line."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--params-file"]


def _params_file_problem(path: str) -> str | None:
    """A one-line description of why ``path`` is not a ROS params file, or None if it parses."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        return f"{path}{where}: YAML syntax error: {e.problem or e.context}"
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        return f"{path}: cannot be read as YAML: {str(e).splitlines()[0]}"
    if not isinstance(data, dict) or not data:
        return f"{path}: expected a mapping '<node name>: {{ros__parameters: {{...}}}}', got {data!r:.60}"
    return None


def _rcl_message(error: BaseException) -> str:
    """rcl's init error on one line, without its C source locations (", at /project/src/...")."""
    return str(error).splitlines()[0].split(", at /")[0]


def _retrieve_late_exceptions(executor: Executor) -> None:
    """Callbacks cut short by the shutdown (a publish on a context already invalid) leave tasks
    whose exception nobody fetched; rclpy then prints "The following exception was never
    retrieved" when they are collected. Fetch them here: they are expected at shutdown."""
    for task in list(getattr(executor, "_futures", [])):
        if task.done():
            task.exception()


def make_executor(threads: int) -> Executor:
    """The executor for the node's short callbacks (inference has its own thread): a
    ``SingleThreadedExecutor`` for ``executor_threads: 1`` (measured quieter,
    docs/node_performance.md), else a ``MultiThreadedExecutor`` of that many threads."""
    return SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)


def main(args: list[str] | None = None) -> int:
    """Console script ``mtl-perception-node`` (through :mod:`mtl_perception.startup`).

    Exit 0 on SIGINT/SIGTERM at any moment, 1 on a start-up error (model, parameter, params file
    content), 2 on a usage error (a ``--params-file`` that does not exist, malformed ``--ros-args``);
    every error is one line naming the file or parameter (docs/errors.md).
    """
    from . import dds_profile, startup

    startup.install()
    prog = "mtl-perception-node"
    argv = list(sys.argv if args is None else args)
    for path in _params_files(argv):
        if not os.path.isfile(path):
            print(f"{prog}: --params-file {path!r}: no such file", file=sys.stderr)
            return 2
        problem = _params_file_problem(path)
        if problem:  # checked here: rcl would log a second, vaguer line of its own
            print(f"{prog}: --params-file {problem}", file=sys.stderr)
            return 1
    node = executor = None
    try:
        from rclpy.exceptions import ParameterException

        from .backends.base import BackendError
        from .model import CheckpointError, ConfigError

        try:
            dds_line = dds_profile.apply()  # before rclpy.init: the participant reads it once
        except ValueError as e:
            print(f"{prog}: start-up failed: {e}", file=sys.stderr)
            return 1
        try:
            rclpy.init(args=args)
        except Exception as e:  # noqa: BLE001 - RCLError: bad --ros-args or params file content
            files = _params_files(argv)
            print(f"{prog}: {_rcl_message(e)}", file=sys.stderr)
            return 1 if files and "params file" in str(e) else 2
        try:
            node = PerceptionNode()
        except (CheckpointError, ConfigError, BackendError, ParameterException, ValueError, OSError) as e:
            if startup.signalled():
                raise startup.StartupInterrupted(startup.signalled()) from None
            print(f"{prog}: start-up failed: {e}", file=sys.stderr)
            return 1
        node.get_logger().info(dds_line)
        # inference has its own thread (node.py); the executor only serves short callbacks
        n = int(node.get_parameter("executor_threads").value)
        executor = make_executor(n)
        node.get_logger().info(f"executor: {type(executor).__name__} (executor_threads: {n})")
        executor.add_node(node)
        startup.started()
        if startup.signalled():  # arrived between the last check and here: rclpy did not see it
            return 0
        while True:
            try:
                executor.spin()
            except (KeyboardInterrupt, ExternalShutdownException):
                pass
            except RuntimeError as e:
                # rclpy (Kilted) may raise RuntimeError from a wait set torn down by a signal-triggered
                # shutdown. While still running, the one expected case is the lazy input: the image
                # subscription (and its message-lost event) destroyed by another executor thread
                # while this one builds its wait set (InvalidHandle); the executor makes a new wait
                # set on the next spin. Anything else while running is a real error.
                if rclpy.ok() and type(e).__name__ == "InvalidHandle":
                    continue
                if rclpy.ok():
                    raise
            return 0
    except startup.StartupInterrupted:
        return startup.interrupted_exit(prog)
    except Exception:
        # e.g. RCLError "context is invalid" from create_subscription: rclpy's own handler shut the
        # context down under us; the signal, not the error, is what happened.
        if startup.signalled():
            return startup.interrupted_exit(prog)
        raise
    finally:
        startup.started()  # clean-up below must not be interrupted
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
            _retrieve_late_exceptions(executor)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
