"""srmcr command line: ``python main.py fit --config configs/tiny.yaml`` (LightningCLI)."""

from lightning.pytorch.cli import LightningCLI
from transformers.utils import logging as hf_logging

from datamodules.image_question import ImageQuestionDataModule
from srmcr.module import SRMCRModule


def main() -> None:
    hf_logging.disable_progress_bar()  # per-shard bars of a few-MB model are noise
    LightningCLI(SRMCRModule, ImageQuestionDataModule, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
