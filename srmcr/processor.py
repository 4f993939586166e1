"""The Qwen2.5-VL processor this project loads: images and text, no video processor."""

from __future__ import annotations

from transformers import Qwen2Tokenizer
from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil


class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor (which needs torchvision).

    Load with ``ImageOnlyQwenProcessor.from_pretrained``: ``AutoProcessor`` on such a folder
    silently returns only the tokenizer.
    """

    # ProcessorMixin derives its sub-processors from this signature: no video_processor here.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None,
                                       **kwargs):
        tokenizer = Qwen2Tokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(pretrained_model_name_or_path,
                                                                   **kwargs)
        return [image_processor, tokenizer]
