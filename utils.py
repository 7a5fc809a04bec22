"""What the LightNAS scripts share: user-error handling, help texts,
metrics, logging and progress bars, seeding, atomic checkpoints and
distributed launching.

Scripts end with `run_cli(main, get_args_parser())`, so bad input (a
`UserError` raised anywhere) prints one line and exits with status 2:

    $ python3 evaluate.py --model LightNet-99ms ...
    error: --model: unknown network 'LightNet-99ms'; registered: LightNet-20ms, ...
"""

import argparse
import contextlib
import csv
import dataclasses
import datetime
import errno
import fcntl
import glob
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import warnings
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm import tqdm

USER_ERROR_EXIT_CODE = 2  # the same status argparse uses for bad arguments


class UserError(Exception):
    """Bad input from the user: reported as one line, never a traceback."""


def user_error_message(error):
    """The one-line message of a UserError. One raised in a DataLoader worker
    arrives re-wrapped, its message holding the worker's traceback; its
    original message ends that traceback (all of it: a path in it may hold
    a line break)."""
    message = str(error).strip()
    if "Traceback (most recent call last)" in message:
        name = f"{UserError.__name__}: "
        message = message[message.rfind(name) + len(name):] if name in message else message.splitlines()[-1]
    # A path the user gave may hold a line break; the message stays one line.
    return message.replace("\r", "\\r").replace("\n", "\\n")


def is_plain_integer(text):
    """Whether `text` is ASCII digits (spaces around allowed): str.isdigit()
    takes '²' too, which int() then refuses."""
    return re.fullmatch(r"\s*[0-9]+\s*", text) is not None


def check_thread_setting(environment=None):
    """OMP_NUM_THREADS as OpenMP reads it: anything but a positive integer,
    or a list of them for nested levels ("2,1": torch's threads are the
    first), is refused; more threads than cores only warned about (the
    threads of each process then wait for each other: runs measured 40-60x
    slower)."""
    environment = os.environ if environment is None else environment
    value = environment.get("OMP_NUM_THREADS")
    if value is None:
        return
    levels = value.split(",")
    if not all(is_plain_integer(level) and int(level) >= 1 for level in levels):
        raise UserError(f"OMP_NUM_THREADS={value!r} is not a number of threads; unset it or set e.g. "
                        f"OMP_NUM_THREADS={os.cpu_count() or 1}")
    cores = os.cpu_count() or 1
    if int(levels[0]) > cores:
        print(f"warning: OMP_NUM_THREADS={levels[0]} on {cores} cores: the threads wait for each other and a run "
              f"can be tens of times slower; set at most {cores}", file=sys.stderr)


def check_plotting_setting(environment=None):
    """MPLBACKEND as matplotlib reads it on import: a name it does not know
    makes that import fail, which would end a run where its first figure is
    drawn. The figures are written as PNG files and need no backend, so the
    check imports matplotlib without the variable and only validates it."""
    environment = os.environ if environment is None else environment
    check_plotting_cache(environment.get("MPLCONFIGDIR"))
    value = environment.get("MPLBACKEND")
    if not value:  # matplotlib ignores an empty one too
        return
    hidden = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib.rcsetup
    finally:
        if hidden is not None:
            os.environ["MPLBACKEND"] = hidden
    try:
        matplotlib.rcsetup.validate_backend(value)
    except ValueError:
        raise UserError(f"MPLBACKEND={value!r} is not a matplotlib backend; unset it (the figures are written as "
                        "files and need none) or set MPLBACKEND=agg") from None


def check_plotting_cache(folder):
    """MPLCONFIGDIR, where matplotlib keeps its font cache: one it cannot
    write makes it print a two-line warning on every run and rebuild the
    cache in a temporary folder each time; name the setting instead."""
    if not folder:
        return
    if os.path.lexists(folder) and not os.path.isdir(folder):
        reason = "it is a file"
    else:
        try:
            os.makedirs(folder, exist_ok=True)  # as matplotlib would
            reason = None if os.access(folder, os.W_OK | os.X_OK) else "Permission denied"
        except OSError as error:
            reason = error.strerror or str(error)
    if reason:
        raise UserError(f"MPLCONFIGDIR={folder!r} is not a writable folder ({reason}); unset it or point it at one")


def run_cli(main, parser, argv=None):
    """Parse arguments, run `main(args)`, and turn a UserError into one
    `error: ...` line on stderr and exit status 2 (a complaint of the
    parser's too)."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): every print would vanish without a word
        print("error: standard output is closed; give the command somewhere to write (a file or /dev/null)",
              file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    print_any_path()
    complain_in_one_line(parser)
    args = parser.parse_args(argv)
    try:
        refuse_empty_values(parser, args)
    except UserError as error:
        print(f"error: {user_error_message(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    global _terminated_process, _resumable_checkpoint, _continued_by_rerun, _stopping_on_signal
    _terminated_process = os.getpid()
    # Set again by this run (one process may run several).
    _resumable_checkpoint, _continued_by_rerun, _stopping_on_signal = None, False, False
    previous_handlers = {number: signal.signal(number, raise_terminated) for number in signals_to_take_over()}
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, raise_interrupt):
        previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, raise_interrupt)
    try:
        check_thread_setting()
        check_plotting_setting()
        check_process_group_setting()
        main(args)
    except UserError as error:
        print(f"error: {user_error_message(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except BrokenPipeError:  # output piped to a reader that stopped (`| head -1`): nothing more to say
        discard_stdout()  # the exit's flush must not fail again
        sys.exit(1)
    except OSError as error:
        if error.errno in (errno.EMFILE, errno.ENFILE):  # the loading processes' pipes and shared memory count
            print(f"error: too many open files for this process (ulimit -n is {open_file_limit()}); raise the "
                  "limit (ulimit -n 4096) or give fewer --workers", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)
        if not is_output_failure(error):
            raise
        discard_stdout()
        print(f"error: cannot write the output ({error.strerror or error}); send it elsewhere", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        stop_on_signal(signal.SIGINT)
    except Terminated:
        stop_on_signal(signal.SIGTERM)
    except RuntimeError as error:
        # A signal to the process group reaches the DataLoader's workers too; the loader then
        # reports their death while the main process is already stopping for the same signal.
        if isinstance(error.__context__, KeyboardInterrupt):
            stop_on_signal(signal.SIGINT)
        if isinstance(error.__context__, Terminated):
            stop_on_signal(signal.SIGTERM)
        stop_if_out_of_memory(error)
        stop_if_a_peer_was_lost(error)
        raise
    finally:
        if not _stopping_on_signal:  # a process stopping on a signal keeps ignoring them to its end
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)


def print_any_path():
    """A terminal or log that cannot show a character of a path the user
    gave (PYTHONIOENCODING=ascii, LANG=C on old Pythons) gets it escaped
    (\\xe9) rather than a UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a real text stream, not a test's capture
            stream.reconfigure(errors="backslashreplace")


def refuse_running_a_library(name, instead):
    """What a library module says when run as a script: it has no command
    of its own (it would otherwise exit 0 having done nothing)."""
    print(f"error: {name} is a library and has no command of its own; {instead}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def stop_if_out_of_memory(error):
    """An allocation the machine (or GPU) cannot make, from a batch too
    large for it, is one line with what to lower, not torch's traceback."""
    message = str(error)
    if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in message:
        wanted = re.search(r"allocate (\d+) bytes", message)
        size = f" ({int(wanted.group(1)) / 2**30:.1f} GiB in one piece)" if wanted else ""
        print(f"error: out of memory{size}; lower --batch_size (or the image size) until it fits", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


def stop_on_signal(number):
    """One line for a run stopped by Ctrl-C or SIGTERM (with the command
    that resumes it, once there is a checkpoint), and the shell's exit status."""
    message = interrupted_message("interrupted" if number == signal.SIGINT else "terminated")
    if message is not None:
        print(message, file=sys.stderr)
    # The DataLoader's SIGCHLD handler would report its workers, stopped by the same signal, once more
    # as a traceback while the loader is torn down at exit.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.exit(128 + number)


def complain_in_one_line(parser):
    """argparse answers a bad option with the whole usage text (37 lines for
    the search) before its complaint; give the complaint alone, as every
    other bad input gets it, and where to read the options."""
    for each in [parser] + subcommand_parsers(parser):
        def refuse(message, prog=each.prog):
            if message.endswith("expected one argument"):
                # argparse reads a value such as -1% as the next option
                message += "; a value that starts with '-' goes after '=', e.g. --option=-1"
            print(f"error: {message} (options: {prog} --help)", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)
        each.error = refuse


def refuse_empty_values(parser, args):
    """An option given an empty value (--out '', a shell variable that was
    never set) is no value: taken as "not given", it wrote over a shipped
    table and into the current folder. An option whose default is empty
    (extra options to pass on) may be empty."""
    for action in [action for each in [parser] + subcommand_parsers(parser) for action in each._actions]:
        if not action.option_strings or action.default == "":
            continue
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and not item.strip() for item in values):
            raise UserError(f"{action.option_strings[-1]} is empty; give a value or leave the option out")
        # A quoted '~/runs' reaches the program unexpanded: it would make a folder named '~' here.
        unexpanded = [item for item in values if isinstance(item, str) and (item == "~" or item.startswith("~/"))
                      and not os.path.lexists(item)]
        if unexpanded:
            raise UserError(f"{action.option_strings[-1]} {unexpanded[0]}: the shell did not expand '~' (it was "
                            f"quoted); write {os.path.expanduser(unexpanded[0])} or leave '~' unquoted")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (raise_terminated). Not an
    Exception, so that no `except Exception` swallows it."""


_terminated_process = None  # the process whose run_cli installed raise_terminated


# Signals that stop a run as SIGTERM does (its new files cleaned up, the resume
# command logged) instead of ending it on the spot: a closed terminal (SIGHUP),
# Ctrl-\ (SIGQUIT), a batch system's warning before its time limit (SLURM's
# --signal sends SIGUSR1 or SIGUSR2), a soft CPU-time limit (SIGXCPU) and the
# timer signals, whose default action also ends a process (SIGALRM, SIGVTALRM,
# SIGPROF).
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU,
                    signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF)


def signals_to_take_over():
    """The STOPPING_SIGNALS this process turns into a clean stop: those at
    their default action (which would end the run on the spot) or already
    turned. One the process was started ignoring stays ignored (nohup ignores
    SIGHUP: a closed terminal must not stop the run), and a handler another
    program installed stays its own (a sampling profiler's SIGPROF)."""
    return [number for number in STOPPING_SIGNALS if signal.getsignal(number) in (signal.SIG_DFL, raise_terminated)]


def raise_terminated(signum, frame):
    """SIGTERM as an exception rather than an instant end: `finally` blocks
    run, so a file being written is removed (atomic_write) and children are
    stopped, and run_cli says how to resume. A forked child (a DataLoader
    worker) inherits the handler; it ends as SIGTERM always ended it."""
    if os.getpid() != _terminated_process:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    ignore_further_stops()
    raise Terminated()


def raise_interrupt(signum, frame):
    """Ctrl-C as the KeyboardInterrupt Python raises by default, except
    that the run, now stopping, ignores a second one (see
    ignore_further_stops). A forked child raises it as before."""
    if os.getpid() == _terminated_process:
        ignore_further_stops()
    raise KeyboardInterrupt


_stopping_on_signal = False  # set by the first stop signal a run_cli process receives


def ignore_further_stops():
    """From the first stop signal on, the process is ending; a second one
    would cut its cleanup short (a KeyboardInterrupt inside a progress bar's
    __del__ at exit is a traceback). `timeout -s INT` sends two: one to the
    process and one to its process group. SIGKILL still ends it."""
    global _stopping_on_signal
    _stopping_on_signal = True
    for number in (signal.SIGINT,) + STOPPING_SIGNALS:
        if signal.getsignal(number) in (raise_interrupt, raise_terminated):
            signal.signal(number, signal.SIG_IGN)


# Set by a script once it knows where its checkpoint goes (resumable_at):
# on Ctrl-C, run_cli then prints the command that continues the run.
_resumable_checkpoint = None


def resumable_at(checkpoint_path):
    """Ctrl-C from now on prints the command that resumes from
    `checkpoint_path` (once the run has written it)."""
    global _resumable_checkpoint
    _resumable_checkpoint = checkpoint_path


# Set by a composite tool (closed_loop.py, reproduce_tables.py, the
# benchmarks) whose rerun continues its kept steps (continued_by_rerun).
_continued_by_rerun = False
# Set for a composite tool's step: on Ctrl-C the tool, not the step, says how
# to continue (one line, the tool's own command).
STEP_OF_TOOL_VARIABLE = "LIGHTNAS_STEP_OF_TOOL"


def continued_by_rerun():
    """Ctrl-C or SIGTERM from now on prints the command that continues this
    run (the same one: its finished steps are kept); the steps it starts
    (with step_environment) leave that line to it."""
    global _continued_by_rerun
    _continued_by_rerun = True


def step_environment():
    """The environment for a step a composite tool starts: this one's,
    marked as a step (interrupted_message)."""
    return {**os.environ, STEP_OF_TOOL_VARIABLE: os.path.basename(sys.argv[0])}


def interrupted_message(what):
    """What run_cli prints on Ctrl-C or SIGTERM (`what`: "interrupted",
    "terminated"): the resume command where there is a checkpoint to resume
    from, or the composite tool's own command; None in a step of a composite
    tool, which says it instead."""
    if _continued_by_rerun:
        command = shlex.join(["python3", *sys.argv])
        return f"{what}; the same command continues it, keeping the finished steps: {command}"
    if os.environ.get(STEP_OF_TOOL_VARIABLE):
        return None
    if _resumable_checkpoint is None:
        return what
    if not os.path.isfile(_resumable_checkpoint):
        return (f"{what} before the first checkpoint ({_resumable_checkpoint}) was written: nothing to resume; "
                "run the same command again to start over")
    return f"{what}; continue with: {resume_command(sys.argv, _resumable_checkpoint)}"


def resume_command(argv, checkpoint_path):
    """The command line `argv` with its --resume, if any, replaced by one
    from `checkpoint_path`, quoted for a POSIX shell."""
    arguments, skip_next = [], False
    for argument in argv[1:]:
        if skip_next:
            skip_next = False
        elif argument == "--resume":
            skip_next = True
        elif not argument.startswith("--resume="):
            arguments.append(argument)
    return shlex.join(["python3", argv[0], *arguments, "--resume", checkpoint_path])


def parse_forwarded_arguments(parser, arguments, what, head=(), sets_itself=(), owner="this script"):
    """Parse `head + arguments` meant for another script's `parser` before
    any work starts; a complaint becomes one UserError line naming `what`
    instead of that script's whole usage text. `sets_itself` names the
    options the calling script gives that script itself: one the user also
    put in `arguments`, in any spelling argparse takes (--save=x, --sav x),
    is refused rather than left to decide which of the two wins. Returns the
    parsed options, the own ones at placeholder values."""
    def refuse(message):
        raise UserError(f"{what}: {message}")

    for each in [parser] + subcommand_parsers(parser):
        each.error = refuse
    # Each own option is put before the user's with two different values:
    # where the user gave it too, the user's wins both times.
    placeholders = {name: _two_values(parser, name) for name in sets_itself}
    first, second = ([*head, *[item for name in sets_itself for item in (f"--{name}", placeholders[name][which])],
                      *arguments] for which in (0, 1))
    first, second = parser.parse_args(first), parser.parse_args(second)
    for name in sets_itself:
        if getattr(first, name) == getattr(second, name):
            raise UserError(f"{what}: --{name} is set by {owner}; remove it")
    return first


# Options of the project's scripts whose value is a place on disk: compared
# as the place they lead to ("data/", "./data", "data" and a link to it are
# one setting).
PATH_OPTIONS = frozenset({"dataset", "lut", "resume", "save", "out", "out_dir", "arch_config"})


def setting_value(name, value):
    """An option's value as a run's plan compares it: a path as the place
    it leads to (an --arch_config that names no file is a network's name
    or list, kept as written)."""
    if name not in PATH_OPTIONS or not isinstance(value, str):
        return value
    if name == "arch_config" and not os.path.exists(value):
        return value
    return os.path.realpath(value)


def forwarded_settings(parser, arguments, what, head=(), sets_itself=(), owner="this script"):
    """The settings `arguments` give another script's `parser`, checked as
    parse_forwarded_arguments checks them, as a JSON-able dict: the same
    options in another order or spelling (or left at their defaults, or a
    path written otherwise) give the same dict. The calling script's own
    options (`sets_itself`) and a subcommand's handler are left out."""
    parsed = parse_forwarded_arguments(parser, arguments, what, head, sets_itself, owner)
    return {name: setting_value(name, value) for name, value in sorted(vars(parsed).items())
            if name not in sets_itself and not callable(value)}


def drop_options(parser, arguments, names):
    """`arguments` (valid for `parser`) without the options whose destination
    is in `names`, in any spelling argparse takes (--name v, --name=v, a
    unique prefix), together with their values."""
    kept, tokens = [], iter(arguments)
    for token in tokens:
        action = _option_action(parser, token.split("=", 1)[0]) if token.startswith("--") else None
        if action is None or action.dest not in names:
            kept.append(token)
        elif "=" not in token and action.nargs != 0:
            next(tokens, None)  # its value
    return kept


def _option_action(parser, option):
    """The action argparse gives `option`: its exact string or the one
    option it abbreviates."""
    actions = parser._option_string_actions
    if option in actions:
        return actions[option]
    matches = {actions[string] for string in actions if string.startswith(option)}
    return matches.pop() if len(matches) == 1 else None


def _two_values(parser, name):
    """Two different values option --name accepts (two of its choices)."""
    for action in [action for each in [parser] + subcommand_parsers(parser) for action in each._actions]:
        if action.dest == name:
            return [str(choice) for choice in action.choices][:2] if action.choices else ["1", "2"]
    raise ValueError(f"{parser.prog} has no option --{name}")


def subcommand_parsers(parser):
    """The parsers of `parser`'s subcommands (argparse keeps them in its
    subparsers action and offers no public way to reach them)."""
    return [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for sub in action.choices.values()]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after an option's help, only where it adds
    something.

    ArgumentDefaultsHelpFormatter appends the default to every help text. It
    is left out where it would repeat or contradict the text: a help text
    that already says "default:", a required option (it has none), and a
    default of None, which is no value the option takes: the script fills
    it in later (from --schedule, from the predictor) or leaves the feature
    off, and the help text says which.
    """

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.required or action.default is None or "default:" in help_text:
            return action.help
        return super()._get_help_string(action)


# What gloo and NCCL say when another process of the run has gone away.
LOST_PEER_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                   "NCCL communicator was aborted", "Socket Timeout", "Connection refused")


def stop_if_a_peer_was_lost(error, prefix=""):
    """A collective that failed because another process died (killed,
    out of memory, its own error) is not this process's fault: say so in
    one line and exit 1, instead of a backend's multi-line traceback."""
    text = str(error)
    if any(sign in text for sign in LOST_PEER_SIGNS) and ("gloo" in text or "NCCL" in text or "nccl" in text):
        print(f"error: {prefix}another process of this run stopped (lost the connection to it); its own output "
              "says why", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------- metrics


class AverageMeter:
    """Running sum and count of a per-sample quantity."""

    def __init__(self):
        self.sum = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def average(self):
        return self.sum / max(1, self.count)


def hit_counts(logits, targets, topk=(1, 5)):
    """Number of samples whose target is among the top-k logits, per k (k
    capped at the number of classes), as one tensor on the logits' device:
    counting needs no host-device synchronisation."""
    max_k = min(max(topk), logits.size(1))
    hits = logits.topk(max_k, dim=1).indices.eq(targets.unsqueeze(1))
    return torch.stack([hits[:, :min(k, max_k)].any(dim=1).sum() for k in topk])


def correct_counts(logits, targets, topk=(1, 5)):
    """`hit_counts` as Python ints."""
    return [int(count) for count in hit_counts(logits, targets, topk)]


def accuracy(logits, targets, topk=(1, 5)):
    """Top-k accuracy in percent, per k."""
    batch_size = targets.size(0)
    return [100.0 * hits / batch_size for hits in correct_counts(logits, targets, topk)]


# ----------------------------------------------------------------- figures


def new_figure(figsize, rows=1, columns=1, **subplot_options):
    """A figure and its axes for a PNG file. Built without pyplot: no global
    state, no display, safe in worker threads."""
    from matplotlib.figure import Figure  # imported here: only plotting needs it

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, **subplot_options)


def save_figure(figure, path, dpi=120):
    """The figure as a file (its format from the name), written atomically:
    a full disk or a file-size limit is named as such, with the file."""
    figure.tight_layout()
    with atomic_write(path, binary=True) as file:
        figure.savefig(file, dpi=dpi, format=os.path.splitext(path)[1].lstrip(".").lower() or "png")


# A run's figures are redrawn at most this often, and after its last epoch:
# after every epoch when epochs take an hour (ImageNet), once for a short
# run (drawing them costs about as much as a tiny run's whole epoch).
REDRAW_INTERVAL_S = 60.0


class RedrawClock:
    """Says whether a run's figures are due: REDRAW_INTERVAL_S after the
    run started or they were last drawn, or when `last` (the run's final
    epoch, or a stop asked for) says so."""

    def __init__(self, interval_s=REDRAW_INTERVAL_S):
        self.interval_s = interval_s
        self.drawn_at = time.monotonic()

    def due(self, last=False):
        now = time.monotonic()
        if last or now - self.drawn_at >= self.interval_s:
            self.drawn_at = now
            return True
        return False


# ------------------------------------------------------------ logging, seed


LOG_NAME = "log.txt"  # a run's log in its --save folder


def create_logger(save_dir=None, name="lightnas"):
    """A logger printing to stdout and, given `save_dir`, appending to
    `save_dir/log.txt`."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.disabled = False
    formatter = logging.Formatter("%(asctime)s %(message)s", "%m/%d %H:%M:%S")
    handlers = [StdoutHandler(sys.stdout)]
    if save_dir is not None:
        handlers.append(log_file_handler(os.path.join(save_dir, LOG_NAME)))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


class StdoutHandler(logging.StreamHandler):
    """The log's lines on stdout. Once stdout's reader has gone (`| head -1`)
    or stdout cannot be written (a full disk, /dev/full) the run goes on,
    its log.txt still complete, instead of printing a logging traceback per
    line; stdout then leads to /dev/null, so that later prints and the
    exit's flush do not fail either."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            discard_stdout()
            if not isinstance(error, BrokenPipeError):  # a full disk or /dev/full: say so, once
                print(f"warning: cannot write the output ({error.strerror or error}); the run goes on, its log in "
                      "log.txt", file=sys.stderr)
            return
        super().handleError(record)


class LogFileHandler(logging.FileHandler):
    """The run's log.txt. A line that cannot be written there (a full disk)
    stops the run with one line naming the file, instead of logging's
    traceback on stderr while the run goes on without its log."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise UserError(f"cannot write the run's log {self.baseFilename} ({error.strerror or error}); free space "
                            "there or choose another --save") from None
        super().handleError(record)


def discard_stdout():
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def open_file_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def is_output_failure(error):
    """Whether an OSError that reached the top is printing to a full disk or
    /dev/full: the project's own files are written by functions that turn
    such errors into UserErrors naming the file, and these name none."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO) and error.filename is None


def refuse_outputs_that_are_not_files(folder, names):
    """Before a run: an output it will write (arch.json, best.pth.tar, ...)
    that is already there as a folder, pipe or broken link would fail it only
    at the end, when the file is written."""
    odd = sorted(name for name in names if not os.path.isfile(os.path.join(folder, name)))
    if odd:
        raise UserError(f"--save {folder} holds {name_a_few(odd)}, which the run writes, as something other than a "
                        "file (a folder, a pipe or a broken link); remove it")


def refuse_save_inside_dataset(save, dataset, options=("--save", "--dataset")):
    """An output folder inside a dataset: in train/ or val/ it would be read
    as a class (a run's figures as its images) by this run or the next, and
    a dataset is no place for outputs anywhere else either (copied, shared
    or linked as a whole, it would carry them). `options` name the two."""
    if dataset is None:
        return
    inside = os.path.realpath(save)
    root = os.path.realpath(dataset)
    if os.path.commonpath([inside, root]) == root:
        raise UserError(f"{options[0]} {save} is inside {options[1]} {dataset}: keep it out of the dataset (in its "
                        "train/ or val/ it would be read as a class of images); choose a folder outside it")


def refuse_files_of_others_or_earlier_runs(folder, kind, outputs, results):
    """Before a run of `kind` ("search", "training") writes its `outputs`
    into `folder`: none of them may be there as something other than a file;
    the folder may hold nothing else (another tool's run, the shipped tables,
    a dataset: the log and figures would land among them); and it may hold
    no earlier run's `results` whose checkpoint is gone, which would be
    replaced in silence (give no `results` when resuming: they are its own)."""
    names = [name for name in (os.listdir(folder) if os.path.isdir(folder) else []) if not name.startswith(".")]
    refuse_outputs_that_are_not_files(folder, set(names) & set(outputs))
    foreign = sorted(name for name in names if name not in outputs)
    if foreign:
        raise UserError(f"--save {folder} holds files a {kind} does not write ({name_a_few(foreign)}); "
                        "choose a new or empty folder")
    earlier = sorted(set(results) & set(names))
    if earlier:
        raise UserError(f"--save {folder} holds an earlier {kind}'s {' and '.join(earlier)}; choose another "
                        f"--save, or move them away to start a new {kind} there")


def log_file_handler(path):
    """A handler appending to the run's log; a log.txt that is a folder, a
    pipe (opening it would wait for a reader) or unwritable is refused."""
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UserError(f"the run's log {path} is not a regular file (a folder, a pipe or a broken link); remove it")
    try:
        return LogFileHandler(path, encoding="utf-8", errors="backslashreplace")  # a path of any bytes
    except OSError as error:
        raise UserError(f"cannot append to the run's log {path} ({error.strerror or error}); make it writable "
                        "or choose another --save") from None


def stderr_is_terminal():
    """Whether standard error is a terminal (it may be replaced by an object without isatty, or be None)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def progress_bar(iterable, enabled=True, **options):
    """`iterable` with a tqdm bar on standard error, drawn only when
    `enabled` (e.g. in the main process) and standard error is a terminal.

    A bar redraws itself in place with carriage returns. In a file (output
    redirected, a job's log) every redraw stays: one line of thousands of
    characters per pass. A bar only shows how far a pass has come; what a
    run measures is in the lines it prints or logs. `options` go to tqdm
    (desc, unit, leave, ...).
    """
    return tqdm(iterable, disable=not (enabled and stderr_is_terminal()), **options)


def run_logger(context, save_dir, name):
    """A run's logger in this process: the main process prints (and, given
    `save_dir`, appends to its log.txt); every other process is silent."""
    if context.is_main:
        return create_logger(save_dir, name)
    logger = logging.getLogger(f"{name}.rank{context.rank}")
    logger.disabled = True
    return logger


# numpy seeds must lie below 2**32; runs add small offsets (the process rank,
# one per data loader) to --seed, so --seed stays below 2**31.
MAX_SEED = 2**31 - 1


# Cross-entropy starts near ln(classes), a uniform guess; a mean loss many
# times that (logits tens of units wrong on every image) means the weights
# blew up, even while every number is still finite.
EXPLODED_LOSS_FACTOR = 25


def loss_exploded(loss, num_classes):
    """Whether a mean cross-entropy is NaN or beyond what a run that learns
    reaches: EXPLODED_LOSS_FACTOR times a uniform guess's."""
    return not loss <= EXPLODED_LOSS_FACTOR * uniform_guess_loss(num_classes)


def uniform_guess_loss(num_classes):
    return math.log(max(num_classes, 2))


def non_finite_entries(state_dict):
    """Names of the floating-point tensors of a state_dict that hold NaN or
    an infinity (a diverged run's weights or BatchNorm statistics)."""
    return [name for name, value in state_dict.items()
            if torch.is_floating_point(value) and not torch.isfinite(value).all()]


def non_finite_settings(value, name):
    """Paths ("optimizer.param_groups.0.lr") of the NaN or infinite numbers
    and tensors in nested dicts and lists, such as an optimizer's or a
    schedule's state_dict."""
    if isinstance(value, dict):
        return [path for key, item in value.items() for path in non_finite_settings(item, f"{name}.{key}")]
    if isinstance(value, (list, tuple)):
        return [path for index, item in enumerate(value) for path in non_finite_settings(item, f"{name}.{index}")]
    if isinstance(value, float) and not math.isfinite(value):
        return [name]
    if isinstance(value, torch.Tensor) and torch.is_floating_point(value) and not torch.isfinite(value).all():
        return [name]
    return []


def settings_mismatch(saved, fresh, name):
    """Paths where `saved` (an optimizer's param_groups or a schedule's
    state from a checkpoint) differs in kind or length from `fresh`, the
    same object's state as this run built it: torch's load_state_dict takes
    any value and fails at the first step. Keys only one of them has are
    left to torch (another version's)."""
    if fresh is None:  # a setting torch fills in itself (foreach, fused)
        return []
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return [name]
        return [path for key in fresh if key in saved for path in settings_mismatch(saved[key], fresh[key],
                                                                                   f"{name}.{key}")]
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return [name]
        return [path for index, (item, fresh_item) in enumerate(zip(saved, fresh))
                for path in settings_mismatch(item, fresh_item, f"{name}.{index}")]
    if isinstance(saved, float) and not math.isfinite(saved):
        return [name]
    return [] if saved is not None and same_kind_of_value(saved, fresh) else [name]


def load_keeping_this_runs_settings(optimizer, saved_optimizer, scheduler=None, saved_scheduler=None):
    """A checkpoint's optimizer state (momentum buffers) and place in the
    schedule, with the settings this run built them with: torch's
    load_state_dict brings back the saved ones (lr, weight decay, momentum),
    so a resumed run given another --lr would log the change and silently not
    apply it, and an edited checkpoint's would be used unchecked. Unchanged,
    they are the saved ones, and so is every lr set here."""
    settings = [{key: value for key, value in group.items() if key not in ("params", "lr")}
                for group in optimizer.param_groups]
    base_lrs = None if scheduler is None else list(scheduler.base_lrs)
    optimizer.load_state_dict(saved_optimizer)
    for group, setting in zip(optimizer.param_groups, settings):
        group.update(setting)
    if scheduler is not None:
        scheduler.load_state_dict(saved_scheduler)
        scheduler.base_lrs = base_lrs
        for group, base_lr, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(scheduler.last_epoch)


def schedule_position_mismatch(saved_scheduler, name):
    """A schedule saved before its start (a negative step: a negative lr)."""
    position = saved_scheduler.get("last_epoch") if isinstance(saved_scheduler, dict) else None
    return [] if isinstance(position, int) and not isinstance(position, bool) and position >= 0 else \
        [f"{name}.last_epoch"]


def optimizer_state_mismatch(optimizer, saved, name):
    """Paths where an optimizer's saved state_dict does not fit `optimizer`
    as this run built it: settings of another kind (settings_mismatch) or
    per-parameter state (momentum buffers) of another shape."""
    if not isinstance(saved, dict):
        return [name]
    wrong = settings_mismatch(saved.get("param_groups"), optimizer.state_dict()["param_groups"],
                              f"{name}.param_groups")
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    state = saved.get("state", {})
    if not isinstance(state, dict):
        return wrong + [f"{name}.state"]
    for index, entries in state.items():
        if not (isinstance(index, int) and 0 <= index < len(parameters) and isinstance(entries, dict)):
            wrong.append(f"{name}.state.{index}")
            continue
        # Buffers have their parameter's shape; a count (Adam's step) is a tensor of no dimensions.
        wrong += [f"{name}.state.{index}.{key}" for key, value in entries.items()
                  if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameters[index].shape]
    return wrong


def state_dict_mismatch(model, state_dict):
    """How `state_dict` does not fit `model`, in words ("missing: a, b;
    wrong shape: c"), or None when it fits exactly."""
    expected = model.state_dict()
    if not isinstance(state_dict, dict):
        return "not a state_dict"
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [key for key in expected if key in state_dict and getattr(state_dict[key], "shape", None)
                   != expected[key].shape]
    problems = [f"{label}: {name_a_few(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
    return "; ".join(problems) or None


def any_process_diverged(diverged, device):
    """Whether `diverged` holds on any process, on every process alike: each
    decides from its own numbers (BatchNorm statistics are per process), and
    all must stop together, not only the one whose numbers overflowed."""
    return bool(all_reduce_sum(torch.tensor([float(diverged)], device=device)).item() > 0)


def file_identity(path):
    """What makes two paths one file: its device and inode when it exists
    (a symbolic or hard link, or a ../ path, leads to the same pair), else
    its resolved path."""
    try:
        status = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return status.st_dev, status.st_ino


def refuse_files_given_twice(paths, option):
    """Each input file once: one given twice (under any name) would count
    twice."""
    repeated = first_repeated(paths, key=file_identity)
    if repeated is not None:
        raise UserError(f"{option}: {repeated} is given twice (under this or another name); give each file once")


def name_a_few(names, limit=3, separator=", "):
    return separator.join(names[:limit]) + (" ..." if len(names) > limit else "")


# Upper bounds of numeric options, far above any real use and low enough
# that nothing overflows or tries to allocate the impossible.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_LEARNING_RATE = 10.0  # SGD or Adam steps beyond this leave finite numbers within a few steps
MAX_IMAGE_SIZE = 2048  # pixels per side
MAX_CLASSES = 100_000  # a 1280 x 100,000 classifier is 0.5 GB already
MAX_WORKERS = 256
MAX_WIDTH_MULT = 4.0  # a LightNet 4x wider has 16x the weights (about 110 M)


def fill_from_schedule(args, schedules):
    """Fill the options left unset (None) from `schedules[args.schedule]`;
    without --schedule, "paper" when --dataset is given and "demo" without
    (search and training share this rule). Explicit values always win."""
    if args.schedule is None:
        args.schedule = "paper" if args.dataset is not None else "demo"
    for name, value in schedules[args.schedule].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def check_number_rules(args, rules):
    """Each rule is (option names, test, description): every named option's
    value must pass `test` and, if a float, be finite (NaN fails every
    comparison, an infinity is refused here). The first that does not is one
    UserError: "--name must be <description>, got <value>". An option the
    command does not have (another subcommand's) is passed over."""
    for names, test, description in rules:
        for name in names:
            if not hasattr(args, name):
                continue
            value = getattr(args, name)
            finite = not isinstance(value, float) or math.isfinite(value)
            if not (finite and test(value)):
                raise UserError(f"--{name} must be {description}, got {value}")


def is_finite_number(value):
    """A real int or float that is finite (a bool is no number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_saved_epoch(checkpoint, epochs, path):
    """A checkpoint's epoch count must be a whole number of epochs this run
    can continue from (1 to --epochs: one is written after an epoch ends): a
    damaged one would skip the run, redo trained epochs or stop it with a
    traceback."""
    epoch = checkpoint.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= epochs:
        raise UserError(f"--resume: {path} records epoch {epoch!r}, not a whole number in [1, {epochs}] for this "
                        f"run's --epochs {epochs}; it is damaged or from a longer run")


def check_seed(seed, option="--seed"):
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{option} must be in [0, {MAX_SEED}], got {seed}")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states():
    """The state of every random generator, in a form `torch.load(...,
    weights_only=True)` accepts (numpy's state becomes plain lists)."""
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -------------------------------------------------------------- checkpoints


def temporary_prefix(path):
    return f".{os.path.basename(path)}.tmp-"


TEMPORARY_RANDOM_CHARACTERS = 8  # what tempfile.mkstemp adds after the prefix


@contextlib.contextmanager
def atomic_write(path, binary=False):
    """Open a temporary file beside `path` and, once the block succeeds,
    move it over `path`: a crash mid-write leaves the old file (or none),
    never a truncated one. The temporary file is `.NAME.tmp-*`; a process
    killed mid-write cannot delete its own, so the next successful write of
    NAME removes any left over (a run folder has one writer: its lock)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = temporary_prefix(path)
    # Moving the file over it would replace a folder's name or a device
    # node (/dev/full, a FIFO) with a regular file.
    refuse_non_file_output(path, f"cannot write {path}: it is")
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temp_path = tempfile.mkstemp(dir=directory, prefix=prefix)
    except OSError as error:
        raise write_failure(path, error) from None
    try:
        with os.fdopen(handle, "wb" if binary else "w") as file:
            yield file
        os.chmod(temp_path, 0o666 & ~_current_umask())  # mkstemp's 0600 is too private for results
        os.replace(temp_path, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):  # a signal may land just after the move
            os.unlink(temp_path)
        if _is_write_failure(error):
            raise write_failure(path, error) from None
        raise
    for leftover in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)


# What torch.save says when the disk fills up under it (its own writer, not an OSError).
TORCH_WRITE_FAILURES = ("file write failed", "PytorchStreamWriter failed writing", "unexpected pos")


def _is_write_failure(error):
    """An error of the disk (full, read-only, no permission, quota), not of
    the code, nor a signal that stopped torch's writer mid-file (Ctrl-C,
    SIGTERM: the run stops for it and says so)."""
    if isinstance(error.__context__, (KeyboardInterrupt, Terminated)):
        return False
    if isinstance(error, OSError):
        return True
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in TORCH_WRITE_FAILURES)


def torch_write_failure_reason():
    """Why torch's writer failed, as far as can be told: it does not say."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:  # `ulimit -f`: a file past it fails as a full disk would
        return f"the write was refused: is the disk full, or the file over this shell's size limit ({limit} bytes)?"
    return "the disk refused the write; is it full?"


def write_failure(path, error):
    """The UserError for a write to `path` that failed with `error` (an
    OSError, or torch's own writer's complaint)."""
    reason = path_error_reason(error) if isinstance(error, OSError) else torch_write_failure_reason()
    kept = " (the earlier file is kept)" if os.path.exists(path) else ""
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return UserError(f"cannot write {path}: {reason}; choose a shorter name")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if isinstance(error, OSError) and error.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
        return UserError(f"cannot write {path}: {reason}{kept}: the file would pass this shell's size limit "
                         f"({limit} bytes, `ulimit -f`); raise the limit, then run again")
    return UserError(f"cannot write {path}: {reason}{kept}; {write_remedy(error)}, then run again")


def write_remedy(error):
    """What to do about a failed write: room for a full disk, another place
    for one that takes no writes (read-only, not permitted, or a place like
    /proc where no file can be made), else either."""
    errors = getattr(error, "errno", None)
    if errors in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if errors in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
        return "choose a writable folder"
    return "free some space or choose a writable folder"


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


MAX_JSON_INTEGER_DIGITS = 18  # a count or size past this is a mistake (and may not fit a float)


def _bounded_integer(text):
    if len(text.lstrip("-")) > MAX_JSON_INTEGER_DIGITS:
        raise ValueError(f"integer {text[:20]}... has {len(text.lstrip('-'))} digits")
    return int(text)


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


# The largest text file (table, architecture, CSV) any script reads: the
# shipped tables are about 100 KB; a file far larger is the wrong file.
MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024


def check_regular_file(path, what, max_bytes=None):
    """Refuse, before opening it, a path that is not a regular file of at
    most `max_bytes` (a link counts as what it points to): a device would be
    read until memory runs out, a FIFO would block forever."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UserError(f"{what} {path} is a link to {os.readlink(path)}, which does not exist") from None
        raise UserError(f"{what} {path} not found") from None
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({path_error_reason(error)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} {path} is a folder; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file (a device, pipe or socket); give a file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UserError(f"{what} {path} is {info.st_size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                        "of any such file this project reads; is it the right file?")


@contextlib.contextmanager
def open_for_reading(path, what, newline=None, max_bytes=MAX_TEXT_FILE_BYTES, encoding=None):
    """open(path) for reading a user's file: a missing file, a folder, a
    device or pipe, a file over `max_bytes` or an unreadable file is one
    UserError line naming `what`."""
    check_regular_file(path, what, max_bytes)
    try:
        file = open(path, newline=newline, encoding=encoding)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder; give a file") from None
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({error})") from None
    with file:
        yield file


def _object_without_repeated_keys(pairs):
    """A JSON object; one that names a key twice is ambiguous (json keeps
    the last value without a word), so it is refused."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object; keep one")
        result[key] = value
    return result


def first_repeated(items, key=None):
    """The first item whose `key` (the item itself by default) an earlier
    item shares, or None when all differ."""
    seen = set()
    for item in items:
        identity = item if key is None else key(item)
        if identity in seen:
            return item
        seen.add(identity)
    return None


def same_kind_of_value(saved, current):
    """Whether a setting saved in a checkpoint is of the kind the option
    takes now (any number for a number; None, the option unset, for any),
    so that comparing the two means something."""
    if saved is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float))
    return type(saved) is type(current)


def read_json(path, what):
    """A user-supplied JSON file, refused in one line when it cannot be read,
    is not JSON, holds NaN/Infinity, an integer of more than 18 digits or a
    key twice in one object, or nests too deeply for Python to read."""
    with open_for_reading(path, what) as file:
        try:
            return json.load(file, parse_int=_bounded_integer, parse_constant=_no_constant,
                             object_pairs_hook=_object_without_repeated_keys)
        except RecursionError:
            raise UserError(f"{what} {path} nests too deeply to be a file this project wrote") from None
        except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError included
            if zipfile.is_zipfile(path):  # a checkpoint (.pth.tar) given where its JSON belongs
                raise UserError(f"{what} {path} is a zip archive such as a checkpoint, not a JSON file; give the "
                                "JSON file itself (a search's arch.json, a table's .json)") from None
            raise UserError(f"{what} {path} is not valid JSON here ({error})") from None


def write_json(path, content, indent=2):
    with atomic_write(path) as file:
        json.dump(content, file, indent=indent)
        file.write("\n")


def file_sha256(path):
    """SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(content):
    """SHA-256 of a JSON-able value, independent of its keys' order."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_sealed_json(path, content):
    """`content` as JSON with its digest: a file this project keeps for its
    own later use (measurements a rerun reuses), so that one cut short or
    edited since is noticed on reading instead of failing deep inside."""
    write_json(path, {"content": content, "sha256": content_digest(content)})


def read_sealed_json(path, remedy):
    """The content of a file write_sealed_json wrote, or one line naming the
    change with `remedy` (what to do instead)."""
    try:
        sealed = read_json(path, "the file")
    except UserError as error:
        raise UserError(f"{error}; {remedy}") from None
    if not isinstance(sealed, dict) or set(sealed) != {"content", "sha256"} or \
            sealed["sha256"] != content_digest(sealed["content"]):
        raise UserError(f"{path} was changed since this project wrote it (edited, cut short, or from an older "
                        f"version); {remedy}")
    return sealed["content"]


def write_csv(path, header, rows):
    """A CSV file with a header row, written atomically."""
    with atomic_write(path) as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_json_lines(path, rows):
    with atomic_write(path) as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def read_json_lines(path, up_to_epoch=None):
    """The rows of a metrics.jsonl file ([] if there is none); with
    `up_to_epoch`, only rows of epochs up to it (a resumed run drops the rows
    of epochs it is about to redo)."""
    if not os.path.lexists(path):
        return []
    rows = []
    # A folder, pipe or device there is named (open_for_reading), not read as
    # no rows. An editor's byte-order mark is no reason to fail; a file of gigabytes is not one of ours.
    with open_for_reading(path, "JSON-lines file", encoding="utf-8-sig") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: a line of 200,000 '['
                    row = None
                # A row this project wrote: one object, and in a run's metrics a whole-number epoch.
                epoch = row.get("epoch") if isinstance(row, dict) else None
                if not isinstance(row, dict) or (up_to_epoch is not None and (
                        not isinstance(epoch, int) or isinstance(epoch, bool))):
                    raise UserError(f"{path}: line {number} is not a row this project wrote (cut short, or "
                                    "edited?); repair or remove that line")
                rows.append(row)
    return rows if up_to_epoch is None else [row for row in rows if row["epoch"] <= up_to_epoch]


class MetricsFile:
    """A run's metrics.jsonl: one JSON object per epoch, rewritten atomically
    after each. A run resumed after `resume_epoch` keeps the rows up to it
    (rows of later epochs were written before an interruption and are about
    to be redone); a fresh run starts empty."""

    def __init__(self, path, resume_epoch=0, resumed_in_place=False, digests=None):
        """`resumed_in_place`: the checkpoint is this folder's own, so its
        rows must be here (a run resumed from another folder's checkpoint,
        such as a shared warm-up, starts its file at that epoch), and they
        must be the rows whose content_digest the checkpoint records
        (`digests`: {"rows": digest of every row up to its epoch} or, from
        checkpoints of earlier versions, {"last_row": that epoch's row's};
        None or empty for a checkpoint that records neither)."""
        self.path = path
        self.rows = read_json_lines(path, up_to_epoch=resume_epoch) if resume_epoch else []
        if resumed_in_place and resume_epoch and not self.rows:
            raise UserError(f"--resume: the checkpoint records epoch {resume_epoch}, but {path} is missing or empty "
                            "(deleted?), and with it the record of those epochs; restore it, or start again")
        # Each epoch's row is written before its checkpoint, so a checkpoint past the last row was edited.
        if self.rows and self.rows[-1]["epoch"] < resume_epoch:
            raise UserError(f"--resume: the checkpoint records epoch {resume_epoch}, but {path} ends at epoch "
                            f"{self.rows[-1]['epoch']} (each epoch's row is written before its checkpoint): one was "
                            "edited; resume from another checkpoint or start again")
        if resumed_in_place and self.rows and not self._vouched_for(digests or {}):
            raise UserError(f"--resume: {path} holds other rows up to epoch {resume_epoch} than the checkpoint "
                            "records (another run's checkpoint put in its place, or one of the two edited); resume "
                            "from that run's own folder, or start again")

    def _vouched_for(self, digests):
        if "rows" in digests:
            return content_digest(self.rows) == digests["rows"]
        if "last_row" in digests:
            return content_digest(self.rows[-1]) == digests["last_row"]
        return True

    def append(self, row):
        self.rows.append(row)
        write_json_lines(self.path, self.rows)


def run_metrics_file(path, start_epoch, resume_path=None, checkpoint=None):
    """The MetricsFile of a run starting after `start_epoch`, resumed from
    `resume_path` (its loaded `checkpoint`) or not: one resumed in its own
    folder must find its record there, the rows its checkpoint vouches
    for."""
    in_place = resume_path is not None and same_folder(resume_path, os.path.dirname(path))
    recorded = {"rows": "metrics_sha256", "last_row": "metrics_row_sha256"}  # the second: earlier versions'
    digests = {kind: checkpoint[key] for kind, key in recorded.items() if key in (checkpoint or {})}
    return MetricsFile(path, start_epoch, resumed_in_place=in_place, digests=digests)


def same_folder(file_path, folder):
    """Whether `file_path` lies directly in `folder` (a run resumed from its
    own checkpoint)."""
    return os.path.abspath(os.path.dirname(file_path)) == os.path.abspath(folder)


def save_checkpoint(state, path):
    """Write `state` to `path` atomically (see atomic_write)."""
    with atomic_write(path, binary=True) as file:
        torch.save(state, file)


def check_archive_intact(path, what):
    """torch's checkpoint is a zip archive holding a CRC-32 of every record,
    which torch.load never checks: a flipped bit in a weight loads without a
    word. Check them (a third of a second for a 186 MB supernet)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # torch's format before 1.6, or no checkpoint at all: torch.load says which
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return  # an archive too broken to walk: torch.load's own error names it
    if damaged is not None:
        raise UserError(f"{what} {path} is damaged: its record {damaged} no longer matches the checksum written "
                        "with it (a bit changed on the disk or in a copy); use another copy, or start again")


def save_checkpoint_again(source, path):
    """Give the checkpoint just written at `source` a second name, `path`,
    atomically: a hard link (a supernet's checkpoint is hundreds of MB, not
    worth serializing twice), or a byte copy where the file system has no
    links. A link is safe because checkpoints are only ever replaced by a
    new file (atomic_write), never rewritten in place."""
    temp_path = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-link")
    with contextlib.suppress(FileNotFoundError):
        os.remove(temp_path)
    try:
        os.link(source, temp_path)
    except OSError:
        shutil.copyfile(source, temp_path)
    os.replace(temp_path, path)


@contextlib.contextmanager
def damaged_checkpoint_refused(path, what="--resume"):
    """Around restoring a checkpoint's states (weights, optimizers, random
    generators) and reading its records: one whose parts were edited, cut or
    written by another version fails deep inside torch or Python with a
    KeyError or TypeError; it is named instead, in one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        detail = f"{type(error).__name__}: {error}"
        raise UserError(f"{what}: {path} is damaged or of another version ({detail[:160]}); resume from another "
                        "checkpoint or start again") from None


def load_checkpoint(path, what="checkpoint"):
    """Load a checkpoint safely (tensors and plain containers only). A
    missing, unreadable, truncated, damaged (check_archive_intact) or foreign
    file is a UserError; any other exception is a bug and propagates."""
    check_regular_file(path, what)
    check_archive_intact(path, what)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning adds nothing to the error
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {path} could not be loaded (not a checkpoint of tensors and plain containers; "
                        "anything else, such as code, is refused)") from None
    except EOFError:
        raise UserError(f"{what} {path} could not be loaded (the file is empty or cut short)") from None
    except (RuntimeError, OSError, ValueError) as error:  # a damaged archive, an unreadable file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in reason:
            # torch's advice (load with weights_only=False) is neither possible here nor safe
            reason = "not a PyTorch checkpoint: the file is corrupt or of another format"
        raise UserError(f"{what} {path} could not be loaded ({reason})") from None
    return checkpoint


# A key only one script's checkpoint holds: what tells a search folder from a
# training folder (both save checkpoint.pth.tar).
CHECKPOINT_MARKERS = (("search", "arch_optimizer"), ("training", "scheduler"))
RUN_DESCRIPTIONS = {"search": "a search (search_imagenet.py)", "training": "a training run (train_imagenet.py)"}


def checkpoint_kind(checkpoint):
    """'search' or 'training' for a loaded checkpoint of this project's two
    scripts, None for anything else."""
    if isinstance(checkpoint, dict):
        for kind, key in CHECKPOINT_MARKERS:
            if key in checkpoint:
                return kind
    return None


def refuse_search_checkpoint(checkpoint, path, option):
    """A supernet's checkpoint given where a network's weights belong."""
    if checkpoint_kind(checkpoint) == "search":
        raise UserError(f"{option}: {path} is a search's checkpoint (a supernet, search_imagenet.py); train its "
                        "arch.json with train_imagenet.py --arch_config first, then use that run's best.pth.tar")


def describe_saved_run(path):
    """What the checkpoint at `path` holds, in words (for an error message)."""
    try:
        kind = checkpoint_kind(load_checkpoint(path))
    except UserError:
        kind = None
    return RUN_DESCRIPTIONS.get(kind, f"a {os.path.basename(path)} this project did not write")


@contextlib.contextmanager
def frozen(parameters):
    """Within the block, `parameters` need no gradient; afterwards (also
    after an exception) they need one again."""
    parameters = list(parameters)
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def strip_module_prefix(state_dict):
    """Remove the `module.` prefix that DataParallel/DDP wrappers add (the
    released LightNet checkpoints carry it)."""
    prefix = "module."
    if all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)


# -------------------------------------------------------------- distributed
#
# One process per GPU. `--gpus N` spawns N processes on this machine, as the
# authors' scripts do; under torchrun (which sets RANK, LOCAL_RANK and
# WORLD_SIZE) each process is already started and `launch` just runs it, so
# multi-node runs use torchrun's own rendezvous options.


def add_device_arguments(parser):
    """The device options shared by the search and the retraining."""
    group = parser.add_argument_group("devices")
    group.add_argument("--gpus", type=int, default=1,
                       help="processes to start on this machine, one per GPU (default: 1); "
                            "under torchrun, use torchrun's --nproc_per_node instead")
    group.add_argument("--visible", default=None,
                       help="GPU ids to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES; default: all)")
    group.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                       help="auto: CUDA when available, else CPU; --device cpu with --gpus N "
                            "runs N CPU processes with gloo (default: auto)")
    return group


def check_process_group_setting(environment=None):
    """torchrun's variables, set by hand or left over in a shell: numbers
    that are not, or a process group without the address of its first
    process, fail deep in torch.distributed (a ValueError traceback)."""
    environment = os.environ if environment is None else environment
    names = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name in environment]
    if not names:
        return
    fix = "start runs of several processes with torchrun (docs/training.md), or unset RANK, WORLD_SIZE and LOCAL_RANK"
    for name in names:
        if not is_plain_integer(environment[name]):
            raise UserError(f"{name}={environment[name]!r} is not a process number; {fix}")
    if "WORLD_SIZE" in environment:
        rank, world_size = int(environment.get("RANK", 0)), int(environment["WORLD_SIZE"])
        if world_size < 1 or rank >= world_size:
            raise UserError(f"RANK={rank} with WORLD_SIZE={world_size}: not a process of that group; {fix}")
        absent = [name for name in ("MASTER_ADDR", "MASTER_PORT") if world_size > 1 and not environment.get(name)]
        if absent:
            raise UserError(f"WORLD_SIZE={world_size} without {' and '.join(absent)}: the processes cannot find each "
                            f"other; {fix}")
        if world_size > 1:
            check_group_address(environment["MASTER_ADDR"], environment["MASTER_PORT"])


def check_group_address(host, port):
    """MASTER_ADDR and MASTER_PORT that torch would retry until its timeout
    (a port that is no number, a host no name server knows)."""
    if not is_plain_integer(port) or not 1 <= int(port) <= 65535:
        raise UserError(f"MASTER_PORT={port!r} is not a port number (1 to 65535); give the port process 0 listens on")
    try:
        socket.getaddrinfo(host, int(port))
    except (socket.gaierror, UnicodeError) as error:
        raise UserError(f"MASTER_ADDR={host!r} cannot be found ({error}); give the address of the machine that "
                        "runs process 0") from None


def _under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name):
    """A single device named by the user (cpu or cuda), checked."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: {name!r} is not supported; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return device


NVIDIA_GPU_FOLDER = "/proc/driver/nvidia/gpus"  # one entry per installed NVIDIA GPU (Linux driver)


def installed_nvidia_gpus():
    """NVIDIA GPUs the driver lists, whatever CUDA_VISIBLE_DEVICES says (0
    without the driver: a CPU machine, where --visible only documents intent)."""
    try:
        return len(os.listdir(NVIDIA_GPU_FOLDER))
    except OSError:
        return 0


def check_visible_without_gpu(visible, available):
    """On a machine that sees no GPU, --visible 0 (the authors' commands
    carry `--gpus 1 --visible 0`) runs on the CPU; any other id names a GPU
    that is not there, and the run would fall back to the CPU in silence."""
    if visible is None or available:
        return
    ids = [gpu_id.strip() for gpu_id in visible.split(",")]
    if ids != ["0"]:
        raise UserError(f"--visible {visible}: this machine has no CUDA GPU, so there is no GPU {', '.join(ids)}; "
                        "drop --visible to run on the CPU")


def resolve_device_type(args):
    """Validate --device/--gpus/--visible and return "cuda" or "cpu".

    Sets CUDA_VISIBLE_DEVICES from --visible before CUDA is first used.
    """
    if args.visible is not None and args.device == "cpu":
        raise UserError(f"--visible {args.visible} picks GPUs, but --device cpu runs on the CPU; drop one of them")
    if args.visible is not None:
        ids = args.visible.split(",")
        if not all(is_plain_integer(gpu_id) for gpu_id in ids):
            raise UserError(f"--visible {args.visible!r}: expected GPU ids separated by commas, e.g. 0,1,2,3")
        if len({int(gpu_id) for gpu_id in ids}) < len(ids):
            raise UserError(f"--visible {args.visible} names a GPU twice; name each once, e.g. 0,1")
        if len(ids) < args.gpus:
            raise UserError(f"--visible lists {len(ids)} GPU(s) but --gpus is {args.gpus}")
        installed = installed_nvidia_gpus()
        missing = [gpu_id.strip() for gpu_id in ids if installed and int(gpu_id) >= installed]
        if missing:  # CUDA would see none of them, and the run would fall back to the CPU in silence
            raise UserError(f"--visible {args.visible}: this machine has {installed} GPU(s), ids 0-{installed - 1}; "
                            f"there is no GPU {', '.join(missing)}")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_id.strip() for gpu_id in ids)
    if args.gpus < 1:
        raise UserError("--gpus must be at least 1")
    available = torch.cuda.device_count()
    device_type = args.device if args.device != "auto" else ("cuda" if available else "cpu")
    if device_type == "cuda":
        needed = 1 if _under_torchrun() else args.gpus
        if available < needed:
            raise UserError(f"--gpus {args.gpus}: only {available} CUDA GPU(s) available"
                            + ("" if available else "; use --device cpu to run on the CPU"))
    elif args.device == "auto" and args.gpus > 1 and not _under_torchrun():
        raise UserError(f"--gpus {args.gpus}: no CUDA GPU is available; add --device cpu to run "
                        f"{args.gpus} CPU processes with gloo (slow; meant for testing)")
    elif args.gpus > (os.cpu_count() or 1) and not _under_torchrun():
        # each process would get a sliver of a core, and gloo's collectives stall behind them for minutes
        raise UserError(f"--gpus {args.gpus} on the CPU starts {args.gpus} processes, and this machine has "
                        f"{os.cpu_count()} cores; use at most --gpus {os.cpu_count()}")
    check_visible_without_gpu(args.visible, available)
    return device_type


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        """Only this process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def init_distributed(device_type):
    """Join the process group torchrun or `launch` set up (gloo on CPU,
    NCCL on GPU); a single process needs none."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun's agent hosts the store and has gathered every process
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=gathered_store(rank, world_size), rank=rank, world_size=world_size)
    return DistributedContext(rank, local_rank, world_size, device)


RENDEZVOUS_POLL_S = 2  # how long one attempt to reach rank 0 blocks (a signal is handled between attempts)
STORE_ANSWER_LIMIT_S = 20  # process 0's store answers a client at once; something else at its port never does
STORE_CLIENT_GRACE_S = 15  # for a refused client's last try to end (its timeout is 2 s; slower on a loaded machine)
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # torch's default for the group's operations


def accepts_connections(host, port):
    """Whether something listens at host:port (process 0's store, once it
    has started)."""
    try:
        with socket.create_connection((host, port), timeout=RENDEZVOUS_POLL_S):
            return True
    except (ConnectionResetError, ConnectionAbortedError):
        return True  # something is there: it took the connection and dropped it at once (not process 0's store)
    except OSError:
        return False


def gathered_store(rank, world_size):
    """The group's store at MASTER_ADDR:MASTER_PORT (hosted by rank 0) once
    all `world_size` processes have joined it. torch's own rendezvous waits
    in C++ for up to 30 minutes, deaf to Ctrl-C and SIGTERM and without a
    word; here a process that waits says so, and is stopped like any run."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    poll = datetime.timedelta(seconds=RENDEZVOUS_POLL_S)
    announced = False

    def announce():
        nonlocal announced
        if not announced:
            print(f"process {rank} of {world_size}: waiting for the group's other processes at {host}:{port} "
                  "(Ctrl-C stops)", flush=True)
            announced = True

    answer_due = None  # while something listens at the port: when it must have answered as a store
    while True:
        if rank != 0 and not accepts_connections(host, port):
            announce()  # asked before torch's client, which prints its C++ errors on every failed try
            answer_due = None
            time.sleep(RENDEZVOUS_POLL_S)
            continue
        if rank != 0:
            announce()
            answer_due = answer_due or time.monotonic() + STORE_ANSWER_LIMIT_S
            store = store_client(host, port, world_size, poll, answer_due)
            if store is not None:
                break
            time.sleep(RENDEZVOUS_POLL_S)  # refused (a program that answers otherwise, or process 0 restarting)
            continue
        try:
            store = dist.TCPStore(host, port, world_size, is_master=True, timeout=poll, wait_for_workers=False)
            break
        except (RuntimeError, OSError) as error:  # torch's DistNetworkError is a RuntimeError
            raise UserError(f"MASTER_PORT {port}: process 0 cannot listen there ({str(error).splitlines()[0]}); "
                            "choose a free port") from None
    store.add("joined", 1)
    while store.add("joined", 0) < world_size:
        announce()
        time.sleep(0.2)
    store.set_timeout(PROCESS_GROUP_TIMEOUT)
    return store


def store_client(host, port, world_size, timeout, answer_due):
    """A client of process 0's store at host:port, or None after a refused
    try. torch's client blocks in C++ until its handshake is answered, deaf
    to Ctrl-C and SIGTERM, and prints a stack dump for every refused try; a
    program that is not a store never answers (a web server) or refuses every
    time (one that sends a banner and closes). So the client is made in a
    helper thread, its C++ output sent to /dev/null, while this thread waits,
    stoppable; past `answer_due` (time.monotonic()) it gives up in one line
    (the helper, if left blocked, ends with the process)."""
    made = {}

    def connect():
        try:
            made["store"] = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout,
                                          wait_for_workers=False)
        except (RuntimeError, OSError):  # torch's DistNetworkError is a RuntimeError
            made["store"] = None

    stderr_copy = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        helper = threading.Thread(target=connect, name="store-client", daemon=True)
        helper.start()
        while "store" not in made and time.monotonic() < answer_due:
            helper.join(0.2)  # short waits: a signal's handler runs between them
        # A client still retrying (refused each time) ends soon after its timeout: let it, since one left in
        # the middle of a try when the process exits aborts it (SIGABRT). One blocked for good (never
        # answered) is left: that one does not.
        finish_by = time.monotonic() + STORE_CLIENT_GRACE_S
        while helper.is_alive() and "store" not in made and time.monotonic() < finish_by:
            helper.join(0.2)
    finally:
        os.dup2(stderr_copy, 2)
        os.close(stderr_copy)
    if made.get("store") is None and time.monotonic() >= answer_due:
        raise UserError(f"MASTER_ADDR:MASTER_PORT {host}:{port}: something accepts connections there but did not "
                        f"answer as process 0's store within {STORE_ANSWER_LIMIT_S} s (another program on that "
                        "port?); give every process the address and port process 0 listens on")
    return made.get("store")


def cleanup_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor):
    """Sum a tensor over all processes in place (no-op for one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def planned_world_size(args):
    """How many processes the run will have, known before they start:
    torchrun's WORLD_SIZE, else --gpus."""
    return int(os.environ["WORLD_SIZE"]) if _under_torchrun() else args.gpus


def broadcast_buffers(module, src=0):
    """Give every process rank `src`'s buffers. DDP keeps parameters equal,
    but each process updates BatchNorm running statistics with its own
    batches; before evaluating, all should hold the statistics that rank 0
    saves."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)
    return module


def all_gather_objects(value):
    """Every process's `value` (any picklable object), in rank order."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def share_cpu_threads(context):
    """Processes computing on one machine's CPU share its cores rather than
    each taking all of them (they would spin, waiting for each other's
    cores). Counted by host name, so two "nodes" on one machine share too.
    An explicit OMP_NUM_THREADS (torchrun sets 1 for several processes per
    node) is left as given."""
    if context.device.type != "cpu" or not context.distributed or "OMP_NUM_THREADS" in os.environ:
        return
    host = socket.gethostname()
    processes_here = all_gather_objects(host).count(host)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes_here))


def _free_local_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawned_process(local_rank, worker, args, world_size, port):
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        worker(args)
    except UserError as error:
        # Any process may meet bad input (an unreadable image in its shard);
        # each one that does says so, naming itself unless it is rank 0.
        print(f"error: {process_prefix(local_rank)}{user_error_message(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except RuntimeError as error:
        stop_if_a_peer_was_lost(error, process_prefix(local_rank))
        raise


def process_prefix(local_rank):
    return "" if local_rank == 0 else f"process {local_rank}: "


def refuse_link_loop(path, what):
    """A path whose links lead back to themselves looks missing to
    os.path.exists; say what it is instead of "not found"."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"{what} {path} is a loop of links (each leads to the other); point it at a real "
                            "file or folder") from None


def refuse_link_to_nothing(path, what, remedy="point it at it again"):
    """A link whose target is gone (or a loop of links) looks missing to
    os.path.exists; say what it is instead of naming what it should hold."""
    refuse_link_loop(path, what)
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"{what} {path} is a link to nothing (was what it names moved?); {remedy}")


def refuse_non_folder(path, what):
    """A path given where a folder belongs that is something else (a file,
    a pipe, a loop of links) is named as such, rather than as a folder that
    lacks what it should hold."""
    refuse_link_loop(path, what)
    refuse_link_to_nothing(path, what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is {non_folder_kind(path)}, not a folder; give a folder")


def non_folder_kind(path):
    """What a path that exists and is no folder is, in the user's words."""
    return "a file" if os.path.isfile(path) else "a pipe, device or socket"


def path_error_reason(error):
    """Why an OSError on a path happened, in the user's terms."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return "a part of the path is a file, not a folder"
    return error.strerror or type(error).__name__


PLAN_NAME = "plan.json"


def check_run_plan(out, plan, tool):
    """A rerun into `out` continues only the run it started: the settings
    that decide its steps (`plan`, a JSON-able dict) are kept in
    out/plan.json with the `tool` that made them, and a rerun with other
    settings is refused in one line, naming them, instead of reusing steps
    made under the old ones. The file is sealed (write_sealed_json): one
    edited by hand would otherwise let steps made under other settings pass
    as this run's."""
    path = os.path.join(out, PLAN_NAME)
    if not os.path.lexists(path) and os.path.isdir(out) and os.listdir(out):
        # Steps whose settings nothing records (plan.json deleted, or the folder put together by hand).
        raise UserError(f"--out {out} holds files but no {PLAN_NAME}, so the settings that made them are unknown; "
                        "choose another --out, or delete it to start over")
    if os.path.lexists(path):
        previous = read_plan(path, "--out")
        _refuse_another_tools_folder(out, previous, tool, "--out")
        previous.pop("tool", None)
        plan = json.loads(json.dumps(plan))  # as it reads back (a tuple is a list there)
        if set(previous) != set(plan) or not all(same_kind_of_value(previous[key], plan[key]) for key in plan):
            raise UserError(f"--out {out} holds a run whose plan.json is in another form than this version of {tool} "
                            "writes (made by an earlier version, or edited); choose another --out, or delete it to "
                            "start over")
        if previous != plan:
            changed = sorted(key for key in set(plan) | set(previous) if previous.get(key) != plan.get(key))
            raise UserError(f"--out {out} holds a run with other settings ({', '.join(changed)}); "
                            f"{earlier_settings_remedy(previous, changed)}")
    write_sealed_json(path, {"tool": tool, **plan})


def earlier_settings_remedy(previous, changed):
    """The way out of a rerun with other settings; where a file option
    changed (another path, perhaps to a copy of the same table), the path
    the run was made with, to give again and continue it."""
    earlier = [f"--{key} {previous[key]}" for key in changed
               if key in PATH_OPTIONS and isinstance(previous.get(key), str)]
    again = f"it was made with {', '.join(earlier)}: give that to continue it, " if earlier else ""
    return f"{again}choose another --out, or delete it to start over"


def read_plan(path, option):
    """A folder's plan.json, which this project writes as one sealed JSON
    object."""
    plan = read_sealed_json(path, f"choose another {option}, or delete the folder to start over")
    if not isinstance(plan, dict):
        raise UserError(f"{option}: {path} is not a plan this project wrote (not a JSON object); choose another "
                        f"{option}, or delete the file")
    return plan


def _refuse_another_tools_folder(out, plan, tool, option):
    """A plan.json written by another tool: its steps and files are not this
    tool's to continue or overwrite."""
    owner = plan.get("tool")
    if owner is not None and owner != tool:
        raise UserError(f"{option} {out} holds a run of {owner}; choose another {option}")


def make_output_folder(path, option="--out"):
    """Create the folder a command writes into (fine if it exists) and make
    sure a file can be written there, before any long work starts; a path
    that cannot be one (a file, under a file, read-only, /proc) is a UserError."""
    refuse_link_to_nothing(path, option, f"create the folder it names, or choose another {option}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path} is a file, not a folder; choose another {option}")
    created = _first_missing_folder(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"{option} {path}: cannot write there ({path_error_reason(error)}); choose a "
                        "writable folder") from None
    try:
        _check_folder_takes_a_file(path, option)
    except UserError:
        if created is not None:  # the folders made here on a full disk are not left behind empty
            shutil.rmtree(created, ignore_errors=True)
        raise


def _first_missing_folder(path):
    """The outermost folder of `path` that does not exist yet (None when
    `path` exists): what os.makedirs(path) would create."""
    path, missing = os.path.abspath(path), None
    while not os.path.lexists(path):
        path, missing = os.path.dirname(path), path
    return missing


@contextlib.contextmanager
def output_folder(path, option="--out"):
    """make_output_folder for the length of a command: a folder it created
    and that is still empty when the command fails (a full disk at the
    first write, Ctrl-C) is removed, so a failed run leaves nothing."""
    first_made = _first_missing_folder(path)
    make_output_folder(path, option)
    try:
        yield path
    except BaseException:
        if first_made is not None:
            _remove_empty_folders(path, up_to=first_made)
        raise


def _first_missing_folder(path):
    """The outermost folder of `path` that does not exist yet (os.makedirs
    will make it and those inside it), or None when `path` exists."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.lexists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _remove_empty_folders(path, up_to):
    """Remove `path` and its parents up to `up_to`, each only while empty
    (one already removed, by the command's own clean-up, is passed over)."""
    path = os.path.abspath(path)
    while True:
        if os.path.isdir(path) and not os.path.islink(path):
            if os.listdir(path):
                return
            os.rmdir(path)
        elif os.path.lexists(path):
            return
        if path == up_to:
            return
        path = os.path.dirname(path)


@contextlib.contextmanager
def tool_folder(path, tool, option="--out"):
    """output_folder for the --out of `tool` (peers, closed loop, the
    benchmarks), once check_tool_folder accepts it, locked while the tool
    runs: a second run into the same --out is refused, not mixed in."""
    refuse_folder_in_use(path, option)
    check_tool_folder(path, tool, option)
    with output_folder(path, option):
        descriptor = _locked_folder(path, option)
        try:
            yield path
        finally:
            os.close(descriptor)


def check_tool_folder(path, tool, option="--out"):
    """A folder holding a search's or training's checkpoint, or another
    tool's run (its plan.json), is refused as the --out of `tool`, since this
    tool's files there would stop that run's resume or mix with its own."""
    checkpoint = os.path.join(path, "checkpoint.pth.tar")
    if os.path.isfile(checkpoint):
        raise UserError(f"{option} {path} holds {describe_saved_run(checkpoint)}; choose another {option}")
    plan = os.path.join(path, PLAN_NAME)
    if os.path.isfile(plan):
        _refuse_another_tools_folder(path, read_plan(plan, option), tool, option)


def refuse_non_file_output(path, prefix):
    """An output path that exists as something other than a regular file
    (a folder, device, pipe or socket) is refused: "<prefix> <what>; ..."."""
    if os.path.exists(path) and not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not a regular file (a device, pipe or socket)"
        raise UserError(f"{prefix} {what}; give the path of a file")


def check_output_file(path, option):
    """Refuse, before any long work, an output file that could not be
    written at the end: its folder missing or not writable, or the path a
    folder, device or pipe (a file already there is fine: it is replaced)."""
    if str(path).endswith(os.sep) or os.path.basename(path) in ("", ".", ".."):
        raise UserError(f"{option} {path} names a folder, not a file; add the file's name to it")
    refuse_link_to_nothing(path, option, "remove the link or choose another path")  # a loop too
    refuse_non_file_output(path, f"{option} {path} is")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{option}: {folder} is a file, not a folder; choose another path")
    if not os.path.isdir(folder):
        _refuse_missing_output_folder(folder, option)
    _check_folder_takes_a_file(folder, option)
    _check_name_fits(path, folder, option)


def _refuse_missing_output_folder(folder, option):
    """A missing folder for an output file: under a file, or where no folder
    can be made (/proc), that is the problem; else the folder is to create."""
    existing = os.path.dirname(_first_missing_folder(folder))
    if not os.path.isdir(existing):
        raise UserError(f"{option} {folder}: cannot write there (a part of the path is a file, not a folder); "
                        "choose another path")
    _check_folder_takes_a_file(existing, option)
    raise UserError(f"{option}: folder {folder} does not exist; create it or choose another path")


def _check_name_fits(path, folder, option):
    """The file is written under a longer temporary name first (atomic_write):
    a name that fits the file system alone would fail only then, at the end."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255  # what Linux file systems allow
    longest = limit - len(os.fsencode(temporary_prefix(""))) - TEMPORARY_RANDOM_CHARACTERS
    length = len(os.fsencode(os.path.basename(path)))
    if length > longest:
        raise UserError(f"{option}: the file name is {length} bytes long, and at most {longest} fit in {folder} "
                        "(with the temporary name it is written under first); choose a shorter name")


# Bytes the writability probe writes: a page, so that a full disk (which
# still takes an empty file) refuses it too.
WRITE_PROBE_BYTES = 4096


def _check_folder_takes_a_file(folder, option):
    """A file can be created and filled there: what permission bits do not
    tell (root, read-only mounts) and a full disk."""
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(WRITE_PROBE_BYTES))
            probe.flush()
    except OSError as error:
        raise UserError(f"{option} {folder}: cannot write there ({path_error_reason(error)}); "
                        f"{write_remedy(error)}") from None


@contextlib.contextmanager
def run_folder_lock(folder, option="--save", checkpoint=None):
    """Hold an exclusive lock on `folder` (created if missing) while a run
    writes into it, so that a second run given the same folder is refused
    instead of mixing its files with this one's. Only the process that
    starts the run takes it (under torchrun, rank 0).

    A run that stops on bad input (an unreadable image found mid-epoch, a
    divergence) or on Ctrl-C or SIGTERM before it has written `checkpoint`
    leaves nothing behind: the files it created are removed, and the folder
    too if this run made it. Files that were there before are kept."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    created = not os.path.isdir(folder)
    make_output_folder(folder, option)
    present_before = set(os.listdir(folder))
    descriptor = _locked_folder(folder, option)
    try:
        yield
    except BaseException as error:
        # Stopped on bad input, or by Ctrl-C or SIGTERM, before there is anything to resume: nothing is kept,
        # so that the same command can start over (an earlier metrics.jsonl would make it refuse).
        stopped = _stopped_on_bad_input(error) or _stopped_by_signal(error)
        if stopped and not (checkpoint and os.path.exists(os.path.join(folder, checkpoint))):
            _remove_new_files(folder, present_before)
        raise
    finally:
        os.close(descriptor)  # releases the lock
        if created and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def _locked_folder(folder, option):
    """An open descriptor of `folder` holding its exclusive lock; refused
    when another run holds it."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UserError(f"{option} {folder} is in use by another run; wait for it to end or choose another "
                        f"{option}") from None
    return descriptor


def refuse_folder_in_use(folder, option="--save"):
    """Before checks that read a run folder's files: a folder another run
    is writing (it holds run_folder_lock) is named as such, not its files
    as an earlier run's to resume or move away. Only the process that
    starts the run checks, as only it takes the lock."""
    if os.environ.get("RANK", "0") == "0" and os.path.isdir(folder):
        os.close(_locked_folder(folder, option))  # closing releases it


def _stopped_on_bad_input(error):
    """A UserError here, or the exit status a spawned process gives for one."""
    return isinstance(error, UserError) or (isinstance(error, SystemExit) and error.code == USER_ERROR_EXIT_CODE)


def _stopped_by_signal(error):
    """Ctrl-C or SIGTERM, raised here or while torch was inside its own code
    (which then reports a RuntimeError in its place)."""
    signals = (KeyboardInterrupt, Terminated)
    return isinstance(error, signals) or isinstance(error.__context__, signals)


def _remove_new_files(folder, present_before):
    for name in set(os.listdir(folder)) - present_before:
        path = os.path.join(folder, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)


def launch(worker, args, num_processes):
    """Run `worker(args)` in `num_processes` processes on this machine (or
    once, in this process, when there is one or torchrun started us)."""
    if num_processes == 1 or _under_torchrun():
        worker(args)
        return
    # When one process fails, torch logs a warning for each sibling it stops;
    # the failing process's own message is the one line worth reading.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    # A killed process leaves its semaphores to multiprocessing's resource
    # tracker, which warns about them in two lines after our one-line error.
    quiet_tracker = "ignore:resource_tracker:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet_tracker]))
    try:
        mp.spawn(_spawned_process, args=(worker, args, num_processes, _free_local_port()),
                 nprocs=num_processes, join=True)
    except mp.ProcessExitedException as error:
        if error.exit_code is not None and error.exit_code < 0:  # killed: it could not report itself
            print(f"error: process {error.error_index} of this run was killed (signal {-error.exit_code}); the "
                  "others were stopped", file=sys.stderr)
            sys.exit(1)
        # The failing process has already reported; exit with its status.
        sys.exit(error.exit_code if error.exit_code and error.exit_code > 0 else 1)
