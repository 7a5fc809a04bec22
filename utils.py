"""What the LightNAS scripts share: user-error handling, metrics, logging,
seeding and atomic checkpoints.

Scripts end with `run_cli(main, get_args_parser())`, so bad input (a
`UserError` raised anywhere) prints one line and exits with status 2:

    $ python3 evaluate.py --model LightNet-99ms ...
    error: --model: unknown network 'LightNet-99ms'; registered: LightNet-20ms, ...
"""

import logging
import os
import random
import sys
import tempfile

import numpy as np
import torch

USER_ERROR_EXIT_CODE = 2  # the same status argparse uses for bad arguments


class UserError(Exception):
    """Bad input from the user: reported as one line, never a traceback."""


def run_cli(main, parser, argv=None):
    """Parse arguments, run `main(args)`, and turn a UserError into one
    `error: ...` line on stderr and exit status 2."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


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


def correct_counts(logits, targets, topk=(1, 5)):
    """Number of samples whose target is among the top-k logits, per k
    (k is capped at the number of classes)."""
    max_k = min(max(topk), logits.size(1))
    top_predictions = logits.topk(max_k, dim=1).indices
    hits = top_predictions.eq(targets.unsqueeze(1))
    return [int(hits[:, : min(k, max_k)].any(dim=1).sum()) for k in topk]


def accuracy(logits, targets, topk=(1, 5)):
    """Top-k accuracy in percent, per k."""
    batch_size = targets.size(0)
    return [100.0 * hits / batch_size for hits in correct_counts(logits, targets, topk)]


# ------------------------------------------------------------ logging, seed


def create_logger(save_dir=None, name="lightnas"):
    """A logger printing to stdout and, given `save_dir`, appending to
    `save_dir/log.txt`."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(message)s", "%m/%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if save_dir is not None:
        handlers.append(logging.FileHandler(os.path.join(save_dir, "log.txt")))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


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


def save_checkpoint(state, path):
    """Write `state` to `path` atomically: a crash mid-write leaves the old
    file (or none), never a truncated one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth.tar")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


def load_checkpoint(path, what="checkpoint"):
    """Load a checkpoint safely (tensors and plain containers only); a
    missing or unreadable file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{what} {path} could not be loaded ({reason})") from None


def strip_module_prefix(state_dict):
    """Remove the `module.` prefix that DataParallel/DDP wrappers add (the
    released LightNet checkpoints carry it)."""
    prefix = "module."
    if all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)
