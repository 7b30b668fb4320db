"""The ``cms`` console script.

It runs ``emr``, ``help`` and ``version`` itself, so the plugin works without the
rest of cloudmesh; where cloudmesh-cmd5 is installed, every other command goes to it.
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
