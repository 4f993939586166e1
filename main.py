"""srmcr command line: ``python main.py fit --config configs/tiny.yaml`` (LightningCLI).

SR-MCR (``SRMCRModule`` on ``ImageQuestionDataModule``) is the default; a config that names another
``class_path`` swaps it in: ``configs/tiny_warmup.yaml`` runs the supervised warm-up instead.

Mistakes that are the user's to fix (``srmcr.errors.UserError``: a setting, a missing file, data
without a good record) end in one line, ``error: <message>``, and exit status 1, like git and pip;
``SRMCR_DEBUG=1`` shows their traceback. Any other exception is a bug and keeps its traceback.
"""

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional hub kernel is missing;
# its own CPU kernels are used instead, so the warning only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from jsonargparse import Namespace, set_parsing_settings  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from callbacks.preflight import PreflightReport  # noqa: E402
from datamodules.image_question import ImageQuestionDataModule  # noqa: E402
from srmcr.errors import ConfigError, MissingFileError, UserError  # noqa: E402
from srmcr.module import SRMCRModule  # noqa: E402


def latest_run(runs: Path) -> Path:
    """The newest ``version_*`` folder under ``runs`` that has ``checkpoints/last.ckpt``."""
    found = sorted((p.parent.parent for p in runs.glob("version_*/checkpoints/last.ckpt")),
                   key=lambda p: int(p.name.removeprefix("version_")) if
                   p.name.removeprefix("version_").isdigit() else -1)
    if not found:
        raise MissingFileError(f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt "
                               "to resume from; pass a checkpoint path instead")
    return found[-1]


class SRMCRCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Defaults, so configs give SR-MCR's init args without a class_path. Their docs:
        # python main.py fit --model.help SRMCRModule (and --data.help ImageQuestionDataModule).
        parser.set_defaults({"model": {"class_path": _class_path(SRMCRModule)},
                             "data": {"class_path": _class_path(ImageQuestionDataModule)}})

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, give the logger its default ``save_dir`` (which it requires), then validate."""
        if isinstance(args, dict | Namespace):
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(args, _skip_validation=True)
        subcommand = self.config.get("subcommand")
        if subcommand:
            _default_save_dir(self.config[subcommand]["trainer"])
        try:
            parser.validate(self.config)
        except (TypeError, KeyError) as error:  # as parse_args reports them: usage + error line
            parser.error(str(error), error)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is not None and config.get("ckpt_path") == "last":
            _resume_last(config)
        if config is not None and config["trainer"].get("enable_progress_bar") is False:
            _drop_progress_bars(config["trainer"])


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


def _default_save_dir(trainer: Namespace) -> None:
    """A logger without ``save_dir`` (the shipped configs) logs under
    ``<trainer.default_root_dir>/lightning_logs``, as Lightning's own default logger does; its
    checkpoints and the adapter follow the logger's folder. An explicit ``save_dir`` wins."""
    root = Path(trainer.get("default_root_dir") or ".") / "lightning_logs"
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(logger, "init_args", None)
        if isinstance(args, Namespace) and "save_dir" in args and args.save_dir is None:
            args.save_dir = str(root)


def _resume_last(config) -> None:
    """``--ckpt_path last`` resumes the newest run and keeps logging into its folder."""
    trainer = config["trainer"]
    logger = trainer.get("logger")
    if getattr(logger, "init_args", None) is not None and "save_dir" in logger.init_args:
        args = logger.init_args
        runs = Path(args.save_dir) / (args.get("name") or "lightning_logs")
        run = latest_run(runs)
        args.version = run.name  # TensorBoard continues the same curves
    else:
        run = latest_run(Path(trainer.get("default_root_dir") or ".") / "lightning_logs")
    config["ckpt_path"] = str(run / "checkpoints" / "last.ckpt")


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
    other exception (a bug) keeps its traceback, and so does everything when ``debug``."""
    try:
        yield
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
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli


def main(args: list[str] | None = None) -> LightningCLI:
    """The command line (``args`` default to ``sys.argv[1:]``); the only reader of the
    environment: ``SRMCR_DEBUG=1`` shows the traceback of user errors too."""
    with user_errors(debug=os.environ.get("SRMCR_DEBUG", "0") not in ("", "0")):
        return run_cli(args)


if __name__ == "__main__":
    main()
