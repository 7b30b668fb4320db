"""The ``cms`` console script.

It runs ``emr``, ``help`` and ``version`` itself, so the plugin works without the
rest of cloudmesh; where cloudmesh-cmd5 is installed, every other command goes to it.

An ``emr`` command goes to this user's agent first (cloudmesh/emr/agent.py), which runs
it in a warm process; when no agent takes it, it runs here, and an agent is started in
the background for the commands that follow (unless the agent is off).
"""

import sys

OWN = ("emr", "help", "version")


def _cmd5_main():
    try:
        from cloudmesh.shell.shell import main as cmd5_main
    except ImportError:
        return None
    return cmd5_main


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from cloudmesh.emr import agent

    try:
        outcome = agent.run(argv)
    except KeyboardInterrupt:  # Ctrl-C while waiting for the agent: nothing ran, nor will
        print("ERROR: interrupted", file=sys.stderr, flush=True)
        return 130
    if outcome.code is not None:
        return outcome.code
    code = run_here(argv)
    if outcome.start:
        _start_agent()
    return code


def _start_agent():
    """Start an agent in the background when it is on; never a reason for this command
    to fail (a broken cloudmesh.yaml is the command's to report, and it has)."""
    from cloudmesh.emr import agent

    try:
        if agent.enabled():
            agent.start_detached()
    except Exception:  # noqa: BLE001  a setting the command itself reported, or an OS refusal
        pass


def run_here(argv):
    """Run ``cms ARGV`` in this process; the exit code."""
    from cloudmesh.emr.command.emr import EmrCommand, say

    if not argv or argv[0] in ("help", "-h", "--help"):
        say(EmrCommand.usage())
        return 0
    if argv[0] in ("version", "--version"):
        from cloudmesh.emr import __version__

        say(f"cloudmesh-emr {__version__}")
        return 0
    if argv[0] == "emr":
        return EmrCommand().run(argv[1:])
    cmd5_main = _cmd5_main()
    if cmd5_main is None:
        print(f"ERROR: unknown command '{argv[0]}'; this cms runs emr, help and version "
              "(install cloudmesh-cmd5 for the others)", file=sys.stderr)
        return 2
    sys.argv = ["cms", *argv]
    return cmd5_main()


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
