"""srmcr command line: ``python main.py fit --config configs/tiny.yaml`` (LightningCLI).

SR-MCR (``SRMCRModule`` on ``ImageQuestionDataModule``) is the default; a config that names another
``class_path`` swaps it in: ``configs/tiny_warmup.yaml`` runs the supervised warm-up instead.
"""

import logging
from pathlib import Path

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional hub kernel is missing;
# its own CPU kernels are used instead, so the warning only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from jsonargparse import set_parsing_settings  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from datamodules.image_question import ImageQuestionDataModule  # noqa: E402
from datamodules.traces import warm_model  # noqa: E402
from srmcr.module import SRMCRModule  # noqa: E402
from srmcr.policy import register_builder  # noqa: E402


def latest_run(runs: Path) -> Path:
    """The newest ``version_*`` folder under ``runs`` that has ``checkpoints/last.ckpt``."""
    found = sorted((p.parent.parent for p in runs.glob("version_*/checkpoints/last.ckpt")),
                   key=lambda p: int(p.name.removeprefix("version_")) if
                   p.name.removeprefix("version_").isdigit() else -1)
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt "
                                "to resume from; pass a checkpoint path instead")
    return found[-1]


class SRMCRCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Defaults, so configs give SR-MCR's init args without a class_path. Their docs:
        # python main.py fit --model.help SRMCRModule (and --data.help ImageQuestionDataModule).
        parser.set_defaults({"model": {"class_path": _class_path(SRMCRModule)},
                             "data": {"class_path": _class_path(ImageQuestionDataModule)}})

    def before_instantiate_classes(self) -> None:
        """``--ckpt_path last`` resumes the newest run and keeps logging into its folder."""
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None or config.get("ckpt_path") != "last":
            return
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


def main(args: list[str] | None = None) -> LightningCLI:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # config docs in --help
    hf_logging.disable_progress_bar()  # per-shard bars of a few-MB model are noise
    register_builder("warm", warm_model)  # policy.model warm:<size>: built once, then cached
    return SRMCRCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                    subclass_mode_data=True, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
