"""srmcr command line: ``python main.py fit --config configs/tiny.yaml`` (LightningCLI).

SR-MCR (``SRMCRModule`` on ``ImageQuestionDataModule``) is the default; a config that names another
``class_path`` swaps it in: ``configs/tiny_warmup.yaml`` runs the supervised warm-up instead.

Mistakes that are the user's to fix (``srmcr.errors.UserError``: a setting, a missing file, data
without a good record, a checkpoint that cannot be read, a folder that cannot be written) end in
one line, ``error: <message>``, and exit status 1, like git and pip; ``SRMCR_DEBUG=1`` shows their
traceback. Any other exception is a bug and keeps its traceback. A run stopped by SIGTERM or
Ctrl-C saves a checkpoint and ``adapter/`` and exits with 143 or 130 (``callbacks.stop``).
"""

import argparse
import importlib
import logging
import os
import re
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# bitsandbytes looks up an optional hub kernel at import on CPUs with AVX512-BF16 (through the
# `kernels` package, which transformers >= 5.25 installs, and which notes that offline mode skips
# its trust check); on failure it uses its own CPU kernels, so both messages only confuse.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# Lightning 2.6 builds the pytree leaf spec that torch 2.13 deprecates, at every fit.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        category=FutureWarning)


class _NoAdvert(logging.Filter):
    """Lightning's tip to install its cloud logger, printed by every Trainer: an advert."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "try installing [litlogger]" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdvert())

from jsonargparse import Namespace, set_parsing_settings  # noqa: E402
from lightning.fabric.plugins import TorchCheckpointIO  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from callbacks.checkpoint_io import (  # noqa: E402
    AtomicCheckpointIO,
    check_ckpt_path,
    check_writable,
    latest_run,
    resume_point,
)
from callbacks.preflight import PreflightReport  # noqa: E402
from callbacks.stop import EXIT_STATUS, Stopped, stopping_on_signals  # noqa: E402
from datamodules.image_question import ImageQuestionDataModule  # noqa: E402
from srmcr.errors import ConfigError, UserError  # noqa: E402
from srmcr.module import SRMCRModule  # noqa: E402
from tools import memory  # noqa: E402
from tools.cli_mistakes import check_config_files, parser_mistake, plain_key  # noqa: E402

# A logger without save_dir (the shipped configs) gets this default, resolved once the config is
# parsed (_default_save_dir): jsonargparse validates the logger's required save_dir before then.
DEFAULT_SAVE_DIR = "<trainer.default_root_dir>/lightning_logs"


class SRMCRCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        self.parsers: list[LightningArgumentParser] = []  # the main one and each subcommand's
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # Parser mistakes raise (not print the usage and exit 2): parse_arguments words them.
        parser = super().init_parser(**{"exit_on_error": False, **kwargs})
        self.parsers.append(parser)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Defaults, so configs give SR-MCR's init args without a class_path. Their docs:
        # python main.py fit --model.help SRMCRModule (and --data.help ImageQuestionDataModule).
        parser.set_defaults({"model": {"class_path": _class_path(SRMCRModule)},
                             "data": {"class_path": _class_path(ImageQuestionDataModule)},
                             "trainer.logger": {"class_path": _class_path(TensorBoardLogger),
                                                "init_args": {"save_dir": DEFAULT_SAVE_DIR}}})

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; a mistake in the command line or a config file is a ``ConfigError`` of one line
        that names the key (and, for an unknown one, the nearest valid keys)."""
        try:
            if isinstance(args, dict | Namespace):
                self.config = parser.parse_object(args)
            else:  # not LightningCLI's own: it warns when args are given with sys.argv set
                check_config_files(args or [])
                self.config = parser.parse_args(args)
        except ArgumentError as error:
            if (cause := _user_error(error)) is not None:  # a class's own check, while parsing
                raise cause from error
            commands = [*self.subcommands(), "preflight"]
            raise ConfigError(parser_mistake(str(error), self.known_keys, commands)) from error
        if command := self.config.get("subcommand"):  # before LightningCLI reads the checkpoint
            check_ckpt_path(self.config[command].get("ckpt_path"))

    def known_keys(self) -> list[str]:
        """Every key the subcommands accept, without jsonargparse's ``init_args`` level."""
        keys = {k for p in self.parsers for k in p.get_defaults().keys()}
        return sorted({plain_key(k) for k in keys} - {"config"})

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        _default_save_dir(config["trainer"])
        if config.get("ckpt_path") == "last":
            _resume_last(config)
        if self.subcommand is not None:  # the pre-flight writes nothing
            check_writable(_output_folder(config["trainer"]))
        if config["trainer"].get("enable_progress_bar") is False:
            _drop_progress_bars(config["trainer"])

    def after_instantiate_classes(self) -> None:
        # Every class has checked its own values; no weights are loaded yet (configure_model).
        if self.subcommand == "fit" and isinstance(self.model, SRMCRModule):
            config = self.config[self.subcommand]
            planned = memory.check_fits(config.as_dict(), *memory.machine_budget(
                config["trainer"].get("accelerator")))
            if planned is not None and not planned.settings.merge_lora:  # fits only unmerged
                self.model.sampling.merge_lora = False
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # not one the config chose
            strategy.checkpoint_io = AtomicCheckpointIO()

    def _run_subcommand(self, subcommand: str) -> None:
        with stopping_on_signals(self.trainer):
            super()._run_subcommand(subcommand)


def _drop_progress_bars(trainer: Namespace) -> None:
    """``--trainer.enable_progress_bar=false`` turns the configs' step bar off too (Lightning
    refuses a progress-bar callback beside that flag)."""
    from lightning.pytorch.callbacks import ProgressBar

    def is_bar(callback) -> bool:
        path = callback.get("class_path") if isinstance(callback, Namespace) else None
        if not isinstance(path, str) or "." not in path:
            return False
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        return isinstance(cls, type) and issubclass(cls, ProgressBar)

    callbacks = trainer.get("callbacks")
    if isinstance(callbacks, list):
        trainer.callbacks = [c for c in callbacks if not is_bar(c)]


def _logger_args(trainer: Namespace) -> Iterator[Namespace]:
    """The ``init_args`` of each logger the config names (one, or a list)."""
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(logger, "init_args", None)
        if isinstance(args, Namespace):
            yield args


def _default_save_dir(trainer: Namespace) -> None:
    """A logger without ``save_dir`` logs where Lightning's own default logger would: under
    ``<trainer.default_root_dir>/lightning_logs``, in a folder of its name if it has one
    (``lightning_logs/tiny/version_0``); its checkpoints and the adapter follow the logger's
    folder. An explicit ``save_dir`` wins."""
    root = Path(trainer.get("default_root_dir") or ".")
    for args in _logger_args(trainer):
        if args.get("save_dir") == DEFAULT_SAVE_DIR:
            unnamed = args.get("name") in (None, "", "lightning_logs")
            args.save_dir = str(root if unnamed else root / "lightning_logs")


def _output_folder(trainer: Namespace) -> Path:
    """The folder the run writes under: its logger's (its run folder once ``--ckpt_path last``
    has chosen one), else the trainer's root."""
    for args in _logger_args(trainer):
        if args.get("save_dir"):
            run = Path(args.save_dir)
            if args.get("version") is not None:
                run = run / (args.get("name") or "lightning_logs") / str(args.version)
            return run
    return Path(trainer.get("default_root_dir") or ".")


def _resume_last(config) -> None:
    """``--ckpt_path last`` resumes the newest run and keeps logging into its folder, from its
    ``last.ckpt`` or, when that cannot be read, its newest checkpoint that can (with a warning)."""
    trainer = config["trainer"]
    logger = trainer.get("logger")
    if getattr(logger, "init_args", None) is not None and "save_dir" in logger.init_args:
        args = logger.init_args
        runs = Path(args.save_dir) / (args.get("name") or "lightning_logs")
        run = latest_run(runs)
        args.version = run.name  # TensorBoard continues the same curves
    else:
        run = latest_run(Path(trainer.get("default_root_dir") or ".") / "lightning_logs")
    config["ckpt_path"] = str(resume_point(run / "checkpoints"))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _user_error(error: BaseException) -> UserError | None:
    """The ``UserError`` behind ``error``: jsonargparse wraps those raised while it instantiates
    the classes (a dataclass's ``__post_init__``) in its own ValueError, keeping them as causes."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _one_line(error: UserError) -> str:
    """Its message on one line; raised in a DataLoader worker, the message holds the worker's
    traceback, whose last line is the original ``<module>.<Class>: <message>``."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    if len(lines) > 1 and "Original Traceback" in lines[1]:
        return re.sub(r"^[\w.]+: ", "", lines[-1])
    return " ".join(line.strip() for line in lines)


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """A ``UserError`` ends the command as ``error: <message>`` on stderr with exit status 1; any
    other exception (a bug) keeps its traceback, and so does everything when ``debug``. A stop by
    signal prints its one line and exits with its status (``callbacks.stop``)."""
    try:
        yield
    except Stopped as stop:
        print(stop, file=sys.stderr)
        raise SystemExit(stop.status) from None
    except KeyboardInterrupt:  # before the run started
        print("stopped by SIGINT before the run started: nothing saved", file=sys.stderr)
        raise SystemExit(EXIT_STATUS["SIGINT"]) from None
    except Exception as error:
        cause = _user_error(error)
        if cause is None or debug:
            raise
        print(f"error: {_one_line(cause)}", file=sys.stderr)
        raise SystemExit(1) from None


def run_cli(args: list[str] | None) -> LightningCLI:
    """fit / validate / test / predict through LightningCLI, and ``preflight``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # config docs in --help
    hf_logging.disable_progress_bar()  # per-shard bars of a few-MB model are noise
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] == ["preflight"]:
        return preflight(args[1:])
    return SRMCRCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                    subclass_mode_data=True, args=args, save_config_kwargs={"overwrite": True})


def preflight(args: list[str]) -> LightningCLI:
    """``main.py preflight -c <config> --data.val <labelled.jsonl> [--save FILE]``: will
    label-free training help this model on this data? One validation pass that samples
    ``sampling.val_group_size`` completions of every labelled question and prints greedy
    accuracy, mean@G, maj@G, the within-group AUC of the reward and of every cue with 95%
    intervals, and a verdict (``callbacks.preflight.PreflightReport``). Nothing is trained or
    written, except the collected signals with ``--save``."""
    parser = argparse.ArgumentParser(prog="python main.py preflight", add_help=False)
    parser.add_argument("--save", type=Path, help="write the collected signals (torch.save)")
    own, rest = parser.parse_known_args(args)
    report = PreflightReport(own.save)
    # The config's loggers and callbacks are not needed.
    cli = SRMCRCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                   subclass_mode_data=True, run=False, save_config_callback=None, args=[
                       *rest, "--trainer.logger=false", "--trainer.callbacks=[]",
                       "--trainer.enable_checkpointing=false"])
    if not getattr(cli.datamodule, "specs", {}).get("val"):
        raise ConfigError("preflight needs labelled validation data: --data.val <labelled.jsonl> "
                          "(records with an \"answer\")")
    if getattr(cli.model, "sampling", None) is not None:
        cli.model.sampling.val_sample_batches = None  # every batch, whatever training samples
        if cli.model.val_group_size == 0:
            raise ConfigError("preflight samples G completions per question: set "
                              "--model.sampling.val_group_size to 2 or more (0 turns it off)")
    cli.trainer.callbacks.append(report)
    with stopping_on_signals(cli.trainer):
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli


def main(args: list[str] | None = None) -> LightningCLI:
    """The command line (``args`` default to ``sys.argv[1:]``); the only reader of the
    environment: ``SRMCR_DEBUG=1`` shows the traceback of user errors too."""
    with user_errors(debug=os.environ.get("SRMCR_DEBUG", "0") not in ("", "0")):
        return run_cli(args)


if __name__ == "__main__":
    main()
