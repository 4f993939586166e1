"""srmcr command line: ``python main.py fit --config configs/tiny.yaml`` (LightningCLI)."""

import logging

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional hub kernel is missing;
# its own CPU kernels are used instead, so the warning only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI
from transformers.utils import logging as hf_logging

from datamodules.image_question import ImageQuestionDataModule
from srmcr.module import SRMCRModule


def main(args: list[str] | None = None) -> LightningCLI:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # config docs in --help
    hf_logging.disable_progress_bar()  # per-shard bars of a few-MB model are noise
    return LightningCLI(SRMCRModule, ImageQuestionDataModule, args=args,
                        save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
