"""``cms emr``: the command line. Parses, validates, calls the Provider, prints.

The docstring of ``EmrCommand.do_emr`` is the docopt usage text and the single
source of truth of the CLI: ``cms emr --help`` prints it. The command never calls
boto3 itself; it turns errors into one ``ERROR:`` line and an exit code
(0 success, 1 the operation failed, 2 bad input).
"""

import functools
import os
import sys

from cloudmesh.emr.errors import EmrError, UsageError, shorten, undecodable

try:  # inside the cloudmesh shell, this is one of its plugin commands
    from cloudmesh.shell.command import PluginCommand
except ImportError:  # standalone: our own `cms` runs it
    PluginCommand = object

BIG_FILE = 8 * 1024 * 1024  # show upload progress above this size, on a terminal
# the verbs that work on a cloud; each runs as EmrCommand._<verb>(arguments, provider, format)
VERBS = ("list", "describe", "start", "stop", "upload", "copy", "run", "stream", "cancel", "logs",
         "diagnose", "wait", "modify", "protect", "add", "resize", "metrics", "cost", "reap",
         "doctor", "history", "sync")


def say(line=""):
    """One line (or block) on stdout. When the reader has gone (`cms emr ... | head -1`),
    the rest of the output is dropped quietly and the command finishes its work.
    Text AWS sent that is not valid Unicode is shown with backslash escapes."""
    try:
        try:
            print(line, flush=True)
        except UnicodeEncodeError:
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            print(str(line).encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit has somewhere to go
        os.close(devnull)


def check_not_empty(arguments):
    """An option given with nothing after it (an empty shell variable) is bad input, never
    quietly the default."""
    for key, value in arguments.items():
        values = value if isinstance(value, list) else [value]
        if key.startswith("--") and any(isinstance(v, str) and not v.strip() for v in values):
            raise UsageError(f"{key}: no value given")


class StateLine:
    """What `wait` shows on stderr: one line per change when stderr is not a terminal, one
    live line (with the time waited) when it is."""

    def __init__(self, stream=None):
        import time

        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.last = None
        self.width = 0
        self.start = time.monotonic()

    def __call__(self, ident, state, reason=None):
        import time

        from cloudmesh.emr import durations

        line = " ".join(f"{ident}: {state}{f' ({reason})' if reason else ''}".split())
        if self.live:
            waited = durations.human(int(time.monotonic() - self.start))
            line = f"{line} [{waited}]"
            self.stream.write("\r" + line + " " * max(self.width - len(line), 0))
            self.stream.flush()
            self.width = len(line)
        elif (ident, state, reason) != self.last:
            print(line, file=self.stream, flush=True)
        self.last = (ident, state, reason)

    def close(self):
        if self.live and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def warn(line):
    """One line on stderr, whatever the message held."""
    print(" ".join(str(line).split()), file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=2)
def _grammar(usage):
    """(usage, options, pattern) of the usage text, parsed and fixed once per process, as
    docopt-ng's docopt() does on every call (about 50 ms of every command); None with
    another docopt (classic docopt, which cmd5 pins), which then parses each time."""
    import docopt

    try:
        sections = docopt.parse_docstring_sections(usage)
        docopt.lint_docstring(sections)
        options = [*docopt.parse_options(sections.before_usage),
                   *docopt.parse_options(sections.after_usage)]
        pattern = docopt.parse_pattern(docopt.formal_usage(sections.usage_body), options)
        known = set(pattern.flat(docopt.Option))
        for shortcut in pattern.flat(docopt.OptionsShortcut):
            shortcut.children = [option for option in options if option not in known]
        pattern.fix()
    except AttributeError:  # not docopt-ng
        return None
    return sections.usage_header + sections.usage_body, options, pattern


def _match(grammar, argv):
    """docopt-ng's docopt(usage, argv, default_help=False) on a parsed grammar: matching
    reads the pattern and never changes it; the lists it answers are copies."""
    import docopt

    usage, options, pattern = grammar
    docopt.DocoptExit.usage = usage
    given = docopt.parse_argv(docopt.Tokens(argv), list(options), False)
    matched, left, collected = pattern.match(given)
    if matched and left == []:
        return docopt.ParsedOptions(
            (a.name, list(a.value) if isinstance(a.value, list) else a.value)
            for a in pattern.flat() + collected)
    if left:
        raise docopt.DocoptExit(f"Warning: found unmatched (duplicate?) arguments {left}")
    raise docopt.DocoptExit(collected=collected, left=left)


class EmrCommand(PluginCommand):
    """The `emr` command of the cloudmesh shell."""

    def do_emr(self, args, arguments=None):
        """
        Manage Amazon EMR clusters that run Apache Spark.

        Usage:
          emr list clusters [--status=STATUS...] [--created-after=WHEN] [--created-before=WHEN] [--cached] [--format=FORMAT] [--cloud=CLOUD]
          emr list instances CLUSTERID [--status=STATUS...] [--type=TYPE...] [--format=FORMAT] [--cloud=CLOUD]
          emr list steps CLUSTERID [--state=STATE...] [--format=FORMAT] [--cloud=CLOUD]
          emr list groups CLUSTERID [--format=FORMAT] [--cloud=CLOUD]
          emr describe CLUSTERID [--format=FORMAT] [--cloud=CLOUD]
          emr start NAME [--master=MASTER] [--node=NODE] [--count=COUNT] [--release=LABEL]
                         [--task=TYPE] [--task-count=N] [--spot] [--bid=PRICE]
                         [--auto-terminate] [--idle-timeout=DURATION] [--scaling=MIN:MAX]
                         [--loguri=URI] [--key=KEYPAIR] [--subnet=SUBNET] [--zone=ZONE]
                         [--bootstrap=ACTION...] [--tag=KEY=VALUE...] [--config=FILE]
                         [--ttl=DURATION] [--max-cost=DOLLARS] [--no-check]
                         [--idempotency-key=KEY] [--wait] [--format=FORMAT] [--cloud=CLOUD]
          emr wait CLUSTERID [STEPID...] [--until=STATE] [--delay=SECONDS] [--timeout=DURATION] [--cloud=CLOUD]
          emr modify CLUSTERID [--concurrency=N] [--idle-timeout=DURATION] [--scaling=MIN:MAX] [--cloud=CLOUD]
          emr protect CLUSTERID (on|off) [--cloud=CLOUD]
          emr add task CLUSTERID [--node=NODE] [--count=COUNT] [--spot] [--bid=PRICE] [--format=FORMAT] [--cloud=CLOUD]
          emr resize CLUSTERID GROUPID COUNT [--cloud=CLOUD]
          emr metrics CLUSTERID [--since=DURATION] [--format=FORMAT] [--cloud=CLOUD]
          emr cost [CLUSTERID...] [--status=STATUS...] [--format=FORMAT] [--cloud=CLOUD]
          emr reap [--dry-run] [--idle=DURATION] [--format=FORMAT] [--cloud=CLOUD]
          emr doctor [--release=LABEL] [--master=MASTER] [--node=NODE] [--count=COUNT]
                     [--key=KEYPAIR] [--subnet=SUBNET] [--loguri=URI] [--config=FILE]
                     [--fix] [--format=FORMAT] [--cloud=CLOUD]
          emr history CLUSTERID [--format=FORMAT] [--cloud=CLOUD]
          emr sync [--cloud=CLOUD]
          emr stop CLUSTERID... [--format=FORMAT] [--cloud=CLOUD]
          emr upload FILE BUCKET BUCKETNAME [--cloud=CLOUD]
          emr copy CLUSTERID BUCKET BUCKETNAME [--cloud=CLOUD]
          emr run CLUSTERID BUCKET BUCKETNAME [ARGS...] [--class=MAIN] [--name=NAME] [--on-failure=ACTION] [--wait] [--cloud=CLOUD]
          emr stream CLUSTERID --mapper=S3URI --reducer=S3URI --input=S3URI... --output=S3URI [--name=NAME] [--on-failure=ACTION] [--wait] [--cloud=CLOUD]
          emr cancel CLUSTERID STEPID... [--format=FORMAT] [--cloud=CLOUD]
          emr logs CLUSTERID STEPID [--file=FILE] [--tail=N] [--cloud=CLOUD]
          emr diagnose CLUSTERID [STEPID] [--format=FORMAT] [--cloud=CLOUD]
          emr db (start|stop|status|sync) [--format=FORMAT]
          emr local start [--port=PORT]
          emr local status [--format=FORMAT]
          emr local stop [--force]
          emr local env [--format=FORMAT]
          emr server start [--host=HOST] [--port=PORT] [--cloud=CLOUD]
          emr agent (start|stop|status) [--format=FORMAT]
          emr -h | --help
          emr --version

        Arguments:
          CLUSTERID    a cluster id, such as j-2AXXXXXXGAPLF
          STEPID       a step id, such as s-2AXXXXXXGAPLF
          GROUPID      an instance group id, such as ig-2AXXXXXXGAPLF
          COUNT        the number of instances the group should have
          NAME         the name of the new cluster
          FILE         a local file to upload
          BUCKET       an S3 bucket that exists
          BUCKETNAME   the object name (key) in the bucket
          ARGS         arguments for the Spark program; put -- before them
                       when they start with a dash

        Options:
          --status=STATUS  clusters: all, active, start, boot, run, wait,
                           terminating, shutdown, error; instances: all, start,
                           provision, boot, run, down; AWS state names work too;
                           repeat it or separate words by commas (all;
                           cost: active)
          --type=TYPE      instance group: all, master, core, task [default: all]
          --state=STATE    steps: all, pending, canceling, running, completed,
                           cancelled, failed, interrupted [default: all]
          --format=FORMAT  table (the default), csv, json, yaml or dict;
                           local env prints shell export lines unless given;
                           describe also takes config (a file for start --config)
          --cloud=CLOUD    a cloud of cloudmesh.yaml; aws (the default) uses
                           boto3's own credentials; local is the emulator
          --master=MASTER  instance type of the master node (m5.xlarge)
          --node=NODE      instance type of the core (start) or task (add task)
                           nodes (m5.xlarge)
          --count=COUNT    start: nodes in all, 1 master plus COUNT-1 core (3);
                           add task: task nodes (1)
          --release=LABEL  EMR release label (emr-7.12.0)
          --task=TYPE      start with a task group of this instance type
          --task-count=N   instances of the task group (1)
          --spot           task nodes on the spot market
          --bid=PRICE      highest spot price in USD per hour (without it: the
                           on-demand price, as EMR does)
          --auto-terminate  end the cluster after its last step (the config
                           must have Steps)
          --idle-timeout=DURATION  end the cluster after it has been idle this
                           long, 60s to 7d; start: 1h unless given or set in
                           cloudmesh.yaml, off for none (modify: off removes it)
          --ttl=DURATION   tag the cluster to expire after this long
                           (cloudmesh:expires); 'cms emr reap' ends it then
          --max-cost=DOLLARS  tag the cluster with a spending limit in USD
                           (cloudmesh:max-cost); 'cms emr reap' ends it past it
          --no-check       start without checking roles, release and types first
          --dry-run        reap: say what would be ended and why; end nothing
          --idle=DURATION  reap: also end clusters idle this long
          --cached         list clusters from the database, without asking AWS
          --fix            doctor: create EMR's default roles and instance
                           profile first, as 'aws emr create-default-roles' does
          --scaling=MIN:MAX  managed scaling between MIN and MAX instances
                           (modify: off removes it)
          --loguri=URI     s3:// folder where EMR writes the cluster's logs
          --key=KEYPAIR    EC2 key pair for ssh to the master node
          --subnet=SUBNET  VPC subnet id to start the cluster in
          --zone=ZONE      availability zone, such as us-east-1a
          --bootstrap=ACTION  s3://bucket/script.sh[,arg1,arg2] to run on every
                           node before the cluster is ready; repeatable
          --tag=KEY=VALUE  a tag of the cluster; repeatable
          --config=FILE    a JSON or YAML file in RunJobFlow's shape; NAME and
                           the options given go over its keys
          --until=STATE    wait for: running (RUNNING or WAITING), waiting,
                           terminated (running)
          --delay=SECONDS  seconds between polls (AWS: 30, local: 1)
          --timeout=DURATION  give up after this long, such as 20m (2h)
          --concurrency=N  steps that may run at once, 1 to 256
          --since=DURATION  metrics of this last span, such as 1d (3h)
          --idempotency-key=KEY  start: while a cluster started with KEY is
                           active, print its id (with a WARNING) and start
                           nothing; without it, every start is a new request
          --port=PORT      port to listen on (local: any free one; server: 8080)
          --host=HOST      address of the REST service [default: 127.0.0.1]
          --force          stop the emulator even while clusters are active
          --class=MAIN     run: the main class of a Spark application jar
                           (default: the Main-Class of the jar's manifest)
          --name=NAME      the step's name (default: the program's file name)
          --on-failure=ACTION  continue (the default), cancel (the steps after
                           it: CANCEL_AND_WAIT) or terminate (the cluster)
          --wait           start: wait until the cluster is running, then
                           print; run, stream: wait for the step to end, exit 1
                           if it did not complete, with the probable cause
          --mapper=S3URI   stream: the mapper program (s3://...)
          --reducer=S3URI  stream: the reducer program (s3://...)
          --input=S3URI    stream: input files or folders; repeat it
          --output=S3URI   stream: the output folder (must not exist)
          --file=FILE      logs: stderr, stdout, controller or syslog
                           [default: stderr]
          --tail=N         logs: only the last N lines

        Description:
          Every result is recorded in MongoDB (collections <cloud>-emr-<kind>).
          The defaults of start come from cloudmesh.emr.default in
          cloudmesh.yaml when it sets them (idle-timeout included). Durations
          are 90s, 15m, 2h, 7d or plain seconds; WHEN is a date or time
          (2026-11-01, 2026-11-01T08:00Z) or an age (90m, 2d). wait shows the
          state on stderr while it waits. Exit codes: 0 success, 1 the
          operation failed (wait: the cluster ended or a step failed), 2 bad
          input. Commands run in a warm per-user agent when one is running
          (started by the first command; it ends after 15m idle); agent
          start, stop and status control it, CLOUDMESH_EMR_AGENT=off or
          cloudmesh.emr.agent: off in cloudmesh.yaml turns it off.
        """
        if arguments is None:  # the cloudmesh shell hands over the rest of the line
            import shlex

            words = shlex.split(args) if isinstance(args, str) else list(args or [])
            self.exit_code = self.run(words)
            return None  # a true value would end the cloudmesh shell's command loop
        return self.execute(arguments)

    # ---- parsing ---------------------------------------------------------------------

    @classmethod
    def usage(cls):
        import inspect

        return inspect.cleandoc(cls.do_emr.__doc__)

    @classmethod
    def parse(cls, argv):
        """docopt's dictionary for ``emr ARGV``; UsageError when it fits no usage."""
        import inspect

        from docopt import DocoptExit, docopt

        try:
            grammar = _grammar(cls.usage())
            if grammar is not None:
                return _match(grammar, list(argv))
            # docopt-ng calls it default_help; classic docopt (which cmd5 pins) calls it help
            flag = "default_help" if "default_help" in inspect.signature(docopt).parameters \
                else "help"
            return docopt(cls.usage(), argv=list(argv), version=None, **{flag: False})
        except DocoptExit:
            given = " ".join(argv) or "nothing"
            raise UsageError(
                f"'emr {shorten(given)}' fits no usage of cms emr; see 'cms emr --help'"
            ) from None

    def run(self, argv):
        """Parse ``argv`` (the words after ``emr``) and execute; return the exit code."""
        try:
            arguments = self.parse(argv)
        except UsageError as error:
            warn(f"ERROR: {error.message}")
            return error.exit_code
        return self.execute(arguments)

    # ---- executing -------------------------------------------------------------------

    def execute(self, arguments):
        try:
            return self._dispatch(arguments)
        except EmrError as error:
            warn(f"ERROR: {error.message}")
            return error.exit_code
        except KeyboardInterrupt:
            warn("ERROR: interrupted")
            return 130
        except Exception as error:  # a defect: say so in one line, keep the trace on request
            if os.environ.get("CLOUDMESH_EMR_DEBUG"):
                raise
            from cloudmesh.emr.redaction import redact

            warn(f"ERROR: unexpected {type(error).__name__}: {redact(str(error))} "
                 "(set CLOUDMESH_EMR_DEBUG=1 to see where; please report it)")
            return 1

    @staticmethod
    def check_text(a):
        """Every word given must be valid Unicode: a byte that is not UTF-8 ($'caf\\xe9')
        arrives surrogate-escaped, and would reach AWS as something else or break the
        database. Refused, naming the argument, before anything is called."""
        for key, value in a.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and undecodable(item):
                    raise UsageError(
                        f"{key}: '{shorten(item)}' is not valid text (it holds bytes that "
                        "are not UTF-8); give it in UTF-8"
                    )

    def _dispatch(self, a):
        self.check_text(a)
        if a.get("--help") or a.get("-h"):
            say(self.usage())
            return 0
        if a.get("--version"):
            from cloudmesh.emr import __version__

            say(__version__)
            return 0
        from cloudmesh.emr import printer

        check_not_empty(a)
        wanted = a.get("--format")
        if a.get("describe") and str(wanted).strip().lower() == "config":
            fmt = "config"
        else:
            fmt = printer.check_format(wanted)
        for word, handler in (("db", self._db), ("local", self._local), ("server", self._server),
                              ("agent", self._agent)):
            if a.get(word):
                return handler(a, fmt)

        from cloudmesh.emr.api.provider import Provider

        provider = Provider(cloud=a.get("--cloud"))
        verb = next(verb for verb in VERBS if a.get(verb))
        try:
            code = getattr(self, f"_{verb}")(a, provider, fmt)
        finally:
            provider.close()  # nothing left open for the interpreter's exit to wait on
        return self._finish(provider, code)

    @staticmethod
    def _finish(provider, code):
        for line in provider.warnings:
            warn(f"WARNING: {line}")
        if provider.journaled and provider.database_error is None:
            error = provider.journal_error
            where = str(error.cause.message).split("; check")[0]
            warn(f"WARNING: {where}; {provider.journaled} records are journaled in "
                 f"{error.journal} and will be written when the database is back "
                 "(or now: 'cms emr db sync')")
        if provider.database_error is not None:
            warn(f"ERROR: {provider.database_error.message}")
            return max(code, 1)
        return code

    def _list(self, a, provider, fmt):
        from cloudmesh.emr import printer

        status = a["--status"] if a["--status"] else None
        if a["clusters"] and a.get("--cached"):
            kind, records = "cluster", provider.cached_clusters(status=status)
        elif a["clusters"]:
            kind, records = "cluster", provider.list_clusters(
                status=status, created_after=a["--created-after"],
                created_before=a["--created-before"])
        elif a["groups"]:
            kind, records = "group", provider.list_groups(a["CLUSTERID"][0])
        elif a["instances"]:
            kind = "instance"
            records = provider.list_instances(a["CLUSTERID"][0], status=status, types=a["--type"])
        else:
            kind, records = "step", provider.list_steps(a["CLUSTERID"][0], state=a["--state"])
        say(printer.render(records, kind, fmt))
        return 0

    def _describe(self, a, provider, fmt):
        from cloudmesh.emr import printer

        if fmt == "config":
            say(printer.render_config(provider.cluster_config(a["CLUSTERID"][0])))
            return 0
        cluster = provider.describe(a["CLUSTERID"][0])
        say(printer.render_one(cluster, fmt, printer.describe_rows(cluster)))
        return 0

    def _start(self, a, provider, fmt):
        from cloudmesh.emr import printer
        from cloudmesh.emr.api import jobflow

        fmt = fmt if a.get("--format") else None
        config = jobflow.read_config(a["--config"]) if a.get("--config") else None
        action = provider.start(
            a["NAME"], config=config, master=a["--master"], node=a["--node"],
            count=a["--count"], release=a["--release"], task=a["--task"],
            task_count=a["--task-count"], spot=a["--spot"], bid=a["--bid"],
            auto_terminate=a["--auto-terminate"], idle_timeout=a["--idle-timeout"],
            scaling=a["--scaling"], loguri=a["--loguri"], key=a["--key"],
            subnet=a["--subnet"], zone=a["--zone"], bootstrap=a["--bootstrap"],
            tags=a["--tag"], idempotency_key=a["--idempotency-key"],
            ttl=a["--ttl"], max_cost=a["--max-cost"], no_check=a["--no-check"],
        )
        for line in provider.warnings:
            warn(f"WARNING: {line}")
        provider.warnings = []
        if a.get("--wait"):
            self._wait_cluster(provider, action["Target"], "running", None, None)
        self._print_action(action, fmt)
        return 0

    @staticmethod
    def _print_action(action, fmt):
        """No --format: just the target, for ID=$(cms emr ...); else the action."""
        from cloudmesh.emr import printer

        if fmt is None:
            say(action["Target"])
        elif fmt in ("table", "csv"):
            say(printer.render([action], "action", fmt))
        else:
            say(printer.render_one(action, fmt))

    @staticmethod
    def _wait_cluster(provider, cluster_id, until, delay, timeout):
        line = StateLine()
        try:
            return provider.wait_cluster(cluster_id, until=until, delay=delay,
                                         timeout=timeout, progress=line)
        finally:
            line.close()

    def _wait(self, a, provider, fmt):
        cluster_id = a["CLUSTERID"][0]
        if not a["STEPID"]:
            cluster = self._wait_cluster(provider, cluster_id, a["--until"], a["--delay"],
                                         a["--timeout"])
            say(f"{cluster_id} {cluster['Status']['State']}")
            return 0
        if a["--until"] is not None:
            raise UsageError("--until is for a cluster; steps are waited for until they end")
        return self._wait_steps(provider, cluster_id, a["STEPID"], delay=a["--delay"],
                                timeout=a["--timeout"])

    def _modify(self, a, provider, fmt):
        from cloudmesh.emr import printer

        action = provider.modify(a["CLUSTERID"][0], concurrency=a["--concurrency"],
                                 idle_timeout=a["--idle-timeout"], scaling=a["--scaling"])
        say(printer.render([action], "action", fmt))
        return 0

    def _protect(self, a, provider, fmt):
        from cloudmesh.emr import printer

        action = provider.protect(a["CLUSTERID"][0], on=bool(a["on"]))
        say(printer.render([action], "action", fmt))
        return 0

    def _add(self, a, provider, fmt):
        fmt = fmt if a.get("--format") else None
        action = provider.add_task(a["CLUSTERID"][0], node=a["--node"], count=a["--count"],
                                   spot=a["--spot"], bid=a["--bid"])
        self._print_action(action, fmt)
        return 0

    def _resize(self, a, provider, fmt):
        from cloudmesh.emr import printer

        action = provider.resize(a["CLUSTERID"][0], a["GROUPID"], a["COUNT"])
        say(printer.render([action], "action", fmt))
        return 0

    def _metrics(self, a, provider, fmt):
        from cloudmesh.emr import printer

        records = provider.metrics(a["CLUSTERID"][0], since=a["--since"])
        say(printer.render_metrics(records, fmt))
        return 0

    def _cost(self, a, provider, fmt):
        from cloudmesh.emr import printer

        status = a["--status"] if a["--status"] else None
        report = provider.cost(a["CLUSTERID"] or None, status=status)
        say(printer.render_cost(report, fmt))
        return 0

    def _reap(self, a, provider, fmt):
        from cloudmesh.emr import printer

        records = provider.reap(dry_run=a["--dry-run"], idle=a["--idle"])
        say(printer.render(records, "reap", fmt))
        return 1 if any(r["Decision"] == "failed" for r in records) else 0

    def _doctor(self, a, provider, fmt):
        from cloudmesh.emr import printer
        from cloudmesh.emr.api import jobflow

        config = jobflow.read_config(a["--config"]) if a.get("--config") else None
        records = provider.doctor(
            config=config, fix=a["--fix"], release=a["--release"], master=a["--master"],
            node=a["--node"], count=a["--count"], key=a["--key"], subnet=a["--subnet"],
            loguri=a["--loguri"])
        say(printer.render(records, "doctor", fmt))
        failed = [r["Check"] for r in records if r["Status"] == "FAIL"]
        if failed:  # the exit 1 of a failed operation comes with its one ERROR line
            warn(f"ERROR: {len(failed)} of {len(records)} checks failed "
                 f"({shorten(', '.join(failed), 120)}); see the rows marked FAIL")
        return 1 if failed else 0

    def _history(self, a, provider, fmt):
        from cloudmesh.emr import printer

        say(printer.render(provider.history(a["CLUSTERID"][0]), "event", fmt))
        return 0

    def _sync(self, a, provider, fmt):
        done = provider.sync()
        say(f"synced {done['Active']} active and {done['Ended']} ended clusters")
        return 0

    def _stop(self, a, provider, fmt):
        from cloudmesh.emr import printer

        actions = provider.stop(a["CLUSTERID"])
        say(printer.render(actions, "action", fmt))
        for action in actions:
            if action.get("Error"):
                warn(f"ERROR: {action['Error']['Message']}")
        return 1 if any(action.get("Error") for action in actions) else 0

    def _copy(self, a, provider, fmt):
        action = provider.copy(a["CLUSTERID"][0], a["BUCKET"], a["BUCKETNAME"])
        say(action["Target"])
        return 0

    def _run(self, a, provider, fmt):
        args = list(a["ARGS"])
        if "--" in args:  # docopt keeps the separator that lets ARGS start with a dash
            args.remove("--")
        action = provider.run(a["CLUSTERID"][0], a["BUCKET"], a["BUCKETNAME"], args,
                              main_class=a["--class"], name=a["--name"],
                              on_failure=a["--on-failure"])
        return self._added(a, provider, action)

    def _stream(self, a, provider, fmt):
        action = provider.stream(a["CLUSTERID"][0], a["--mapper"], a["--reducer"], a["--input"],
                                 a["--output"], name=a["--name"], on_failure=a["--on-failure"])
        return self._added(a, provider, action)

    def _added(self, a, provider, action):
        """Print the new step's id; with --wait, wait for it and explain a failure."""
        say(action["Target"])
        if not a.get("--wait"):
            return 0
        return self._wait_steps(provider, a["CLUSTERID"][0], [action["Target"]])

    def _wait_steps(self, provider, cluster_id, step_ids, delay=None, timeout=None):
        """Wait until the steps end; print each final state; diagnose the ones that did
        not complete, on stderr. 0 when all completed, else 1."""
        for line in provider.warnings:
            warn(f"WARNING: {line}")
        provider.warnings = []
        line = StateLine()
        try:
            steps = provider.wait_steps(cluster_id, step_ids, delay=delay, timeout=timeout,
                                        progress=line)
        finally:
            line.close()
        return self._explain(provider, cluster_id, steps)

    def _explain(self, provider, cluster_id, steps):
        from cloudmesh.emr import printer
        from cloudmesh.emr.api import vocabulary

        code = 0
        for step in steps:
            state = step["Status"]["State"]
            say(f"{step['Id']} {state}")
            if state in vocabulary.STEP_NOT_OK:
                code = 1
                try:
                    diagnosis = provider.diagnose(cluster_id, step["Id"])[0]
                except EmrError as error:
                    warn(f"ERROR: cannot diagnose {step['Id']}: {error.message}")
                    continue
                for line in provider.warnings:
                    warn(f"WARNING: {line}")
                provider.warnings = []
                print(printer.diagnosis_text(diagnosis), file=sys.stderr, flush=True)
        return code

    def _cancel(self, a, provider, fmt):
        from cloudmesh.emr import printer

        actions = provider.cancel(a["CLUSTERID"][0], a["STEPID"])
        say(printer.render(actions, "cancel" if fmt in ("table", "csv") else "action", fmt))
        return 0

    def _logs(self, a, provider, fmt):
        text = provider.logs(a["CLUSTERID"][0], a["STEPID"][0], file=a["--file"],
                             tail=a["--tail"])
        if text:
            say(text.rstrip("\n"))
        return 0

    def _diagnose(self, a, provider, fmt):
        from cloudmesh.emr import printer

        step = a["STEPID"][0] if a["STEPID"] else None
        found = provider.diagnose(a["CLUSTERID"][0], step)
        if fmt == "table":
            if not found:
                say(f"cluster {a['CLUSTERID'][0]}: no failed step, and the cluster did not "
                    "end with an error")
            say("\n\n".join(printer.diagnosis_text(d) for d in found))
        else:
            say(printer.render(found, "diagnosis", fmt))
        return 0

    def _upload(self, a, provider, fmt):
        from cloudmesh.emr import printer

        filename = a["FILE"]
        progress = None
        try:
            size = os.path.getsize(os.path.expanduser(filename))
        except (OSError, ValueError):  # ValueError: a NUL in the name; upload says so
            size = 0
        if size > BIG_FILE and sys.stderr.isatty():
            progress = printer.Progress(size, os.path.basename(filename))
        try:
            action = provider.upload(filename, a["BUCKET"], a["BUCKETNAME"], progress=progress)
        finally:
            if progress is not None:
                progress.close()
        say(action["Target"])
        return 0

    # ---- database, emulator, REST service ----------------------------------------------

    def _db(self, a, fmt):
        from cloudmesh.emr.database import Database

        database = Database()
        try:
            return self._db_do(a, fmt, database)
        finally:
            database.close()
            for line in database.take_warnings():
                warn(f"WARNING: {line}")

    def _db_do(self, a, fmt, database):
        from cloudmesh.emr import printer

        if a["start"] or a["stop"]:
            if database.server is None:
                raise UsageError(
                    "cloudmesh.data.mongo.MODE is native: this tool starts and stops only "
                    "the embedded database"
                )
            if a["start"]:
                state, fresh = database.server.start()
                verb = "started" if fresh else "already running"
                info = {"Database": verb, "Address": f"{state['host']}:{state['port']}",
                        "Pid": state["pid"]}
                line = f"database {verb} at {info['Address']} (pid {state['pid']})"
            else:
                state = database.server.stop()
                info = {"Database": "stopped" if state else "not running",
                        "Pid": state and state["pid"]}
                line = (f"database stopped (pid {state['pid']})" if state
                        else "database was not running")
            say(line if a["--format"] is None else printer.render_one(info, fmt))
            return 0
        if a["sync"]:
            waiting = database.journal.pending()
            written = database.sync()
            info = {"Written": written, "Journaled": database.journal.pending()}
            rejected = database.journal.pending(rejected=True)
            if rejected:
                info["Rejected"] = f"{rejected} (in {database.journal.rejected})"
            line = (f"{written} journaled records written to the database" if waiting
                    else "no journaled records wait")
            say(line if a["--format"] is None else printer.render_one(info, fmt))
            return 0
        from cloudmesh.emr.errors import DatabaseError

        try:
            info = database.status()
        except DatabaseError as error:  # unreachable: still say where, and what waits
            if getattr(error, "status", None) is None:
                raise
            self._show_status(dict(error.status), fmt)
            raise
        self._show_status(info, fmt)
        return 0

    @staticmethod
    def _show_status(info, fmt):
        from cloudmesh.emr import printer

        collections = info.pop("Collections", {})
        pairs = list(info.items()) + [(name, count) for name, count in collections.items()]
        if fmt in ("json", "yaml", "dict"):
            say(printer.render_one({**info, "Collections": collections}, fmt))
        else:
            say(printer.render_one(info, fmt, pairs))

    def _local(self, a, fmt):
        from cloudmesh.emr.local import control

        try:
            return self._local_do(a, fmt, control)
        finally:  # a lost daemon.json rebuilt, or a stale one removed
            for line in control.take_warnings():
                warn(f"WARNING: {line}")

    def _local_do(self, a, fmt, control):
        from cloudmesh.emr import printer
        from cloudmesh.emr.config import Settings

        if a["start"]:
            port = a["--port"]
            if port is not None:
                try:
                    port = int(port)
                except ValueError:
                    raise UsageError(f"--port: '{shorten(port)}' is not a port number") from None
            info = control.start(port=port, delay=Settings.load().local_delay())
            verb = "already running" if info.get("AlreadyRunning") else "started"
            say(f"local EMR emulator {verb} at {info['Endpoint']} (pid {info['Pid']})")
            say("use it with --cloud=local; for the AWS CLI, boto3 and other clients: "
                'eval "$(cms emr local env)"')
        elif a["env"]:
            variables = control.env()
            if a["--format"] is None:
                import shlex

                say("\n".join(f"export {name}={shlex.quote(value)}"
                               for name, value in variables.items()))
            else:
                say(printer.render_one(variables, fmt))
        elif a["status"]:
            info = control.status()
            clusters = info.get("Clusters") or {}
            pairs = [(k, v) for k, v in info.items() if k != "Clusters"]
            pairs += [(f"clusters {state}", count) for state, count in clusters.items()]
            say(printer.render_one(info, fmt, [(k, printer.when(v)) for k, v in pairs]))
        else:
            info = control.stop(force=bool(a["--force"]))
            if info.get("Stopped"):
                say(f"local EMR emulator stopped (pid {info['Pid']}); {info.get('Kept', '')}".rstrip("; "))
            else:
                say("local EMR emulator was not running")
        return 0

    def _server(self, a, fmt):
        from cloudmesh.emr.api import server

        port = a["--port"] or "8080"
        try:
            port = int(port)
        except ValueError:
            raise UsageError(f"--port: '{shorten(port)}' is not a port number") from None
        if not 0 < port < 65536:
            raise UsageError(f"--port: {port} is not between 1 and 65535")
        host = a["--host"] or "127.0.0.1"
        try:  # the resolver's own codec refuses labels over 63 characters with a UnicodeError
            host.encode("idna")
        except UnicodeError:
            raise UsageError(
                f"--host: '{shorten(host)}' is not a host name or address (each dot-separated "
                "label 1 to 63 characters)"
            ) from None
        return server.serve(host=host, port=port, cloud=a["--cloud"])

    def _agent(self, a, fmt):
        """agent start|stop|status: the warm process that runs commands (agent.py)."""
        import datetime

        from cloudmesh.emr import agent, printer
        from cloudmesh.emr.config import Settings

        def when(seconds):
            return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)

        def show(info, line):
            if a["--format"] is None:
                say(line)
            else:
                say(printer.render_one(info, fmt, [(k, printer.when(v)) for k, v in info.items()]))

        try:
            if a["start"]:
                if not agent.supported():
                    raise UsageError("the agent needs fork and AF_UNIX sockets, which this "
                                     "platform lacks; commands run by themselves")
                if agent.off_by_environment():
                    raise UsageError(f"{agent.ENVIRONMENT} is off: unset it to use the agent")
                if not agent.enabled(Settings.load()):
                    raise UsageError("cloudmesh.emr.agent is off in cloudmesh.yaml: remove "
                                     "that setting to use the agent")
                answer, fresh = agent.start()
                verb = "started" if fresh else "already running"
                info = {"Agent": verb, "Pid": answer["pid"], "Socket": answer["socket"],
                        "Idle exit": when(answer["exit"])}
                line = f"cms emr agent {verb} (pid {answer['pid']}) at {answer['socket']}"
                if answer.get("fingerprint") != agent.fingerprint():
                    info["Code"] = "other than this command's: the next command replaces it"
                    line += "; it runs other code than this command (an upgrade?): the " \
                        "next command replaces it"
                show(info, line)
            elif a["stop"]:
                pid = agent.stop() if agent.supported() else None
                info = {"Agent": "stopped" if pid else "not running", "Pid": pid}
                show(info, f"cms emr agent stopped (pid {pid})" if pid
                     else "cms emr agent was not running")
            else:
                answer = agent.status() if agent.supported() else None
                if answer is None:
                    info = {"Agent": "not running", "Enabled": agent.enabled()}
                else:
                    info = {"Agent": "running", "Pid": answer["pid"], "Socket": answer["socket"],
                            "Started": when(answer["started"]),
                            "Last command": when(answer["last"]),
                            "Idle exit": when(answer["exit"]),
                            "Commands": answer["served"], "Running": answer["running"]}
                say(printer.render_one(info, fmt, [(k, printer.when(v)) for k, v in info.items()]))
        except agent.AgentError as error:
            raise EmrError(error.message) from None
        return 0
