"""magnet_hf: MagNet (Mask Grounding for Referring Image Segmentation) for Hugging Face transformers."""

__version__ = "0.1.0"
