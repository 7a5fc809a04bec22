"""The whole loop on this machine: build a latency table here, search for a
target on it, then time the network the search found and print measured
against target.

    python3 closed_loop.py --target_latency 15 --out runs/closed-loop

Steps (each reused when its output exists, so an interrupted loop continues;
a rerun into the same --out with another target, table or options is
refused, so no step made under other settings is ever reused):
1. `latency_build.py build` (the default method) -> OUT/table.json,
   unless --lut names a table to use;
2. `search_imagenet.py --lut OUT/table.json --target_latency T`, on the
   synthetic demo data unless search options say otherwise (give them after
   `--`) -> OUT/search/arch.json;
3. the found network timed end to end with the table's protocol (batch,
   threads, runtime, reference network): its latency now, and scaled to the
   reference network's speed when the table was built (so drift of the
   machine since then does not count);
4. on a CPU, the found network timed as a user's script runs it: alone, in
   fresh processes started under the table's condition (the line `build`
   prints), each then pairing it call by call with the reference network
   so the machine's drift can be taken out.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import threading

import numpy as np
import torch

import latency_build
import latency_predictor as lp
import latency_timing
import retraining
import search_imagenet
from utils import (Terminated, UserError, atomic_write, check_run_plan, continued_by_rerun, forwarded_settings, run_cli,
                   setting_value, step_environment, tool_folder)

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
LOOP_ROUNDS = 100  # end-to-end rounds for the found network
LOOP_PROCESSES = 5  # fresh processes the found network is timed in (each alone, as deployed)
MAX_FRESH_PROCESSES = 1_000
LOOP_WARMUP_S = latency_timing.DEFAULT_WARMUP_S
LOOP_SEED = 3
STEP_STOP_TIMEOUT_S = 60  # a stopped step's own clean-up (a checkpoint being written) before it is killed


def run_step(arguments, what):
    """Run one of the project's commands; a failure ends the loop in one
    line, the step's own error line folded into it."""
    print(f"== {what}: {' '.join(arguments)}", flush=True)
    # In the user's folder, as their paths are; on Ctrl-C the loop, not the step, says how to continue.
    process = subprocess.Popen([sys.executable] + arguments, env=step_environment(), stderr=subprocess.PIPE,
                               text=True, errors="replace")
    error_lines = []
    relay = threading.Thread(target=relay_stderr, args=(process.stderr, error_lines), daemon=True)
    relay.start()
    try:
        returncode = process.wait()
    except BaseException:  # Ctrl-C or SIGTERM: the step stops as it would alone, cleaning up after itself
        process.terminate()
        try:
            process.wait(timeout=STEP_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    relay.join()
    if returncode != 0:
        if error_lines:
            raise UserError(f"{what} failed: {error_lines[-1].removeprefix(ERROR_PREFIX)}")
        raise UserError(f"{what} failed (exit {returncode}); its output is above")


ERROR_PREFIX = "error: "


def relay_stderr(stream, error_lines):
    """Pass a step's stderr on as it comes (warnings, a bug's traceback),
    keeping back its `error:` lines for run_step's one line."""
    for line in stream:
        if line.startswith(ERROR_PREFIX):
            error_lines.append(line.rstrip("\n"))
        else:
            sys.stderr.write(line)
            sys.stderr.flush()


def build_table(out, build_options):
    path = os.path.join(out, "table.json")
    if not os.path.isfile(path):
        run_step([os.path.join(REPO_ROOT, "latency_build.py"), "build", "--out", path] + build_options,
                 "building this machine's table")
    return path


def search(table, target, out, search_options):
    """The search step; one stopped halfway (Ctrl-C, a lost machine)
    continues from its own checkpoint, and a kept one is reused only if it
    was made with this loop's table, target and options."""
    folder = os.path.join(out, "search")
    arguments = ["--lut", table, "--target_latency", str(target)] + search_options
    if not os.path.isfile(os.path.join(folder, "arch.json")):
        resume = ["--resume", folder] if os.path.isfile(os.path.join(folder, search_imagenet.CHECKPOINT_NAME)) else []
        run_step([os.path.join(REPO_ROOT, "search_imagenet.py"), "--save", folder] + arguments + resume,
                 f"searching for {target:g} ms on it")
    return search_imagenet.read_finished_search(folder, "delete it to search again", arguments)[0]


def measure_found(table_path, arch_config, rounds):
    """(ms now, ms at the table's reference level or None) of the found network."""
    metadata = lp.load_table(table_path)["metadata"]
    protocol = latency_build.validation_protocol(metadata, metadata["device"]["type"], None, None,
                                                 latency_timing.DEFAULT_WARMUP_S, rounds, LOOP_SEED)
    sessions = latency_timing.time_networks([arch_config], protocol, metadata["num_classes"])
    now = latency_timing.session_statistics(sessions)[0]["value"]
    level = latency_build.table_reference_level(metadata)
    scaled = latency_timing.session_statistics(sessions, level)[0]["value"] if level else None
    return now, scaled


def measure_found_in_fresh_processes(table_path, arch_config, processes):
    """(ms, ms at the table's reference level or None, the condition's line)
    of the found network, timed alone in each of `processes` fresh processes
    under the table's condition (medians over the processes); None for a GPU
    table or one without a condition."""
    metadata = lp.load_table(table_path)["metadata"]
    line = latency_build.table_condition(metadata)
    if line is None or processes == 0:
        return None
    level = latency_build.table_reference_level(metadata)
    protocol = latency_build.validation_protocol(metadata, "cpu", None, None, LOOP_WARMUP_S, 1, LOOP_SEED)
    results = latency_timing.time_in_fresh_processes([arch_config] * processes, protocol, metadata["num_classes"],
                                                     "deployment", with_reference=level is not None,
                                                     desc="the found network in fresh processes")
    measured = float(np.median([result["value"] for result in results]))
    scaled = float(np.median(latency_timing.at_reference_level(results, level))) if level else None
    return measured, scaled, line


def from_target(value, target):
    return f"{lp.format_cost(value)} ms ({(value / target - 1) * 100:+.2f}% from the target)"


def other_machine_note(table):
    """A line when a CPU table was measured on another CPU model than this
    machine's (the loop's times then compare two machines), else None."""
    device = lp.table_predictor(table).metadata["device"]
    here = latency_timing.cpu_model_name()[0]
    if device.get("type") != "cpu" or device.get("name") == here:
        return None
    return (f"note: the table was measured on {device.get('name')}, this machine is {here}: the times below compare "
            "two machines (leave --lut out to build a table here)")


def report(target, found, now, scaled, fresh=None, note=None):
    lines = ([note] if note else []) + [
        f"target {target:g} ms; the table predicts {lp.format_cost(found['predicted'])} ms for the found network "
        f"({found['error_percent']:+.2f}%)",
        f"measured end to end now: {from_target(now, target)}"]
    if scaled is not None:
        lines.append(f"measured, at the machine's speed when the table was built: {from_target(scaled, target)}")
    if fresh is not None:
        measured, fresh_scaled, line = fresh
        lines.append(f"alone in fresh processes started with {line}: {from_target(measured, target)}")
        if fresh_scaled is not None:
            lines.append(f"  the same, at the machine's speed when the table was built: "
                         f"{from_target(fresh_scaled, target)}")
    for line in lines[1:] if note else lines:  # the note was printed when the loop started
        print(line)
    return lines


def check_target_plausible(target):
    """A target no network on any device costs is refused before the table,
    which alone says what is reachable, is built for minutes."""
    if not (target > 0 and target != float("inf")):
        raise UserError("--target_latency must be a positive number of ms")
    if not lp.MIN_NETWORK_COST <= target <= lp.MAX_ENTRY:
        raise UserError(f"--target_latency {target:g} ms is not a latency any network has (no network costs less "
                        f"than {lp.MIN_NETWORK_COST:g} ms or more than {lp.MAX_ENTRY:g} ms); give the target in ms")


def check_target(table, target):
    """A latency table timed on a device here, and a target it can reach."""
    if table in lp.COUNT_METRICS:
        raise UserError(f"--lut {table}: the loop times the found network here, so it needs a latency table "
                        "measured on this machine; leave --lut out to build one")
    if not table.endswith(".json"):  # the MLP predictor, or another file: it would be read as JSON
        raise UserError(f"--lut {table}: the loop needs a latency table (.json) measured on this machine; leave "
                        "--lut out to build one")
    predictor = lp.table_predictor(table)
    device = predictor.metadata["device"]
    if predictor.metric != "latency" or device.get("type") not in ("cpu", "cuda"):
        raise UserError(f"--lut {table}: the loop times the found network here, so it needs a latency table "
                        f"measured on this machine's CPU or GPU, not {device.get('name')} "
                        f"({predictor.metric}); leave --lut out to build one")
    if device["type"] == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--lut {table} was measured on a CUDA GPU ({device.get('name')}), and this machine has none "
                        "to time the found network on; run the loop where that GPU is, or leave --lut out to build "
                        "a table here")
    low, high = predictor.feasible_range()
    if not low <= target <= high:
        raise UserError(f"--target_latency {target:g} ms is outside what the table {table} can reach "
                        f"({lp.describe_range(low, high, 'ms', target)}); pick a target in that range")


def split_build_options(text):
    """--build_options as the shell would split it (quotes kept together)."""
    try:
        return shlex.split(text)
    except ValueError as error:
        raise UserError(f"--build_options {text!r}: {error}; quote it as one string, e.g. "
                        "--build_options \"--runtime onnxruntime\"") from None


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Build a table on this machine, search for a target on it, time the network found.",
        epilog="Options after -- go to the search, e.g. -- --dataset /path/to/imagenet --epochs 90.")
    parser.add_argument("--target_latency", type=float, required=True, help="the target, in ms on this machine")
    parser.add_argument("--out", default=os.path.join("runs", "closed-loop"), help="folder for the table, the "
                        "search and the report (default: runs/closed-loop)")
    parser.add_argument("--lut", default=None, help="use this table instead of building one")
    parser.add_argument("--build_options", default="", help="extra options for `latency_build.py build`, "
                        "in one string, e.g. \"--runtime onnxruntime\"")
    parser.add_argument("--rounds", type=int, default=LOOP_ROUNDS,
                        help=f"timed rounds for the found network (default: {LOOP_ROUNDS})")
    parser.add_argument("--fresh_processes", type=int, default=LOOP_PROCESSES,
                        help="fresh processes the found network is timed in alone, under the table's condition, "
                             f"as a user's script runs it (CPU tables; 0: skip; default: {LOOP_PROCESSES})")
    parser.add_argument("search_options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(args):
    retraining.stop_children_on_sigterm()  # SIGTERM ends the loop and the step it runs (run_step stops it)
    continued_by_rerun()
    check_target_plausible(args.target_latency)
    if not 1 <= args.rounds <= latency_timing.MAX_REPEATS:
        raise UserError(f"--rounds must be in [1, {latency_timing.MAX_REPEATS:,}]")
    if not 0 <= args.fresh_processes <= MAX_FRESH_PROCESSES:  # each a few seconds: 1,000 take over an hour
        raise UserError(f"--fresh_processes must be in [0, {MAX_FRESH_PROCESSES:,}]")
    search_options = args.search_options[1:] if args.search_options[:1] == ["--"] else args.search_options
    build_options = split_build_options(args.build_options)
    # Checked with the steps' own parsers now, not when each step starts.
    search_sets, build_sets = ("save", "lut", "target_latency", "resume"), ("out",)
    search_settings = forwarded_settings(search_imagenet.get_args_parser(), search_options,
                                         "the search options after --", sets_itself=search_sets, owner="closed_loop.py")
    build_settings = forwarded_settings(latency_build.get_args_parser(), build_options, "--build_options",
                                        head=["build"], sets_itself=build_sets, owner="closed_loop.py")
    if args.lut is not None and build_options:
        raise UserError("--build_options are for the table the loop builds, and with --lut it builds none; drop "
                        "one of them")
    if args.lut is not None:  # a bad table or target is refused before anything is written
        check_target(args.lut, args.target_latency)
    out = os.path.abspath(args.out)  # named absolutely in its steps' logs and report
    created = not os.path.exists(out)
    with tool_folder(out, "closed_loop.py"):  # left empty by a failure, it is removed
        # Its steps are reused on a rerun, so only for the settings that made them.
        check_run_plan(out, run_plan(args, build_settings, search_settings), "closed_loop.py")
        try:
            table, found, note = build_and_search(args, out, build_options, search_options)
        except (UserError, KeyboardInterrupt, Terminated):
            if created and set(os.listdir(out)) <= {"plan.json"}:
                shutil.rmtree(out)  # a failed first step (the build, or the search on --lut) leaves nothing behind
            raise
        print(f"== timing the found network end to end ({args.rounds} rounds)", flush=True)
        now, scaled = measure_found(table, found["arch_config"], args.rounds)
        fresh = measure_found_in_fresh_processes(table, found["arch_config"], args.fresh_processes)
        lines = report(args.target_latency, found, now, scaled, fresh, note)
        report_path = os.path.join(out, "report.txt")
        with atomic_write(report_path) as file:
            file.write("\n".join(lines + [f"architecture: {found['arch_config']}", f"table: {table}"]) + "\n")
        print(f"wrote {report_path}")


def run_plan(args, build_settings, search_settings):
    """The settings that make the loop's steps; a rerun into the same --out
    continues them only if these are the same. The steps' options count as
    the settings they parse to (the same options in another order are the
    same run), and the table's costs count too: one recalibrated in place
    keeps its path."""
    return {"target_latency": args.target_latency,
            "lut": setting_value("lut", args.lut),
            "lut_costs": None if args.lut is None else lp.load_predictor(args.lut).fingerprint,
            "build_options": build_settings, "search_options": search_settings}


def build_and_search(args, out, build_options, search_options):
    """The table (--lut, or built here), then the search on it; returns the
    table's path, the search's result and the note on where the table was
    measured."""
    if args.lut is not None:
        table = os.path.abspath(args.lut)
    else:
        table = build_table(out, build_options)
        check_target(table, args.target_latency)
    note = other_machine_note(table)
    if note:
        print(note, flush=True)  # now, not only after the search
    return table, search(table, args.target_latency, out, search_options), note


if __name__ == "__main__":
    run_cli(main, get_args_parser())
