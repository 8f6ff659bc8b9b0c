#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""MagNet referring image segmentation in the browser: a Gradio page, and the Hugging Face Space's `app_file`.

    pip install -e ".[app]"
    python app.py [--model DIR_OR_HUB_ID] [--host 127.0.0.1] [--port 7860] [--device cpu]

An image and an expression give the overlay and the mask (both at the image's own size) and the score (the mean
mask probability). Without `--model` the embedded magnet-tiny demo model is used, and the page says so. The API
endpoint is `/segment`: (image, text) -> (overlay image, mask image, score), e.g. with gradio_client:
`Client(url).predict(handle_file("scene.png"), "the red circle", api_name="/segment")`.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from magnet_hf.commands.arguments import checked_number
from magnet_hf.demo.segmentation import (
    DEMO_MODEL_NOTE,
    DEMO_SCENE_SEED,
    DemoModelMissingError,
    SegmentationCommandError,
    load_segmenter,
)
from magnet_hf.demo.synthetic_demo import pick_demo_scenes

#: Largest upload accepted; bigger files are refused by the server before they reach the model.
MAX_UPLOAD_SIZE = "20mb"
EXAMPLE_SCENES = 3
MAX_EXPRESSION_CHARACTERS = 500


def write_examples(image_size: int, folder: Path, scenes: int = EXAMPLE_SCENES) -> list[list[str]]:
    """`[image path, expression]` examples from unseen synthetic scenes (the demo's seed), saved as PNGs in `folder`."""
    examples = []
    for index, scene, choice in pick_demo_scenes(DEMO_SCENE_SEED, 0, max(image_size, 64), scenes, 2 * scenes):
        path = folder / f"scene{index:04d}.png"
        scene.image.save(path)
        examples += [[str(path), text] for _, text, _ in choice]
    return examples


def make_segment_function(segmenter):
    """The `/segment` endpoint: (image, text) -> (overlay, mask, score); bad input becomes a message on the page."""
    import gradio as gr

    from magnet_hf.image_processing_magnet import MagNetImageError, load_image_as_rgb
    from magnet_hf.demo.overlay import overlay_mask

    def segment(image, text):
        # Gradio's own decoding is off for this endpoint (preprocess=False: it would turn an unreadable upload into a
        # message about its internal data model), so the upload arrives as its cached file, decoded here.
        shown_name = None
        if isinstance(image, dict):
            image, shown_name = image.get("path"), image.get("orig_name")
        if image is None:
            raise gr.Error("Upload an image first.")
        if not isinstance(text, str) or not text.strip():
            raise gr.Error("Type an expression that names one object, e.g. 'the small red circle'.")
        if len(text) > MAX_EXPRESSION_CHARACTERS:
            raise gr.Error(f"The expression is {len(text)} characters long; keep it under {MAX_EXPRESSION_CHARACTERS}.")
        expression = " ".join(text.split())
        try:
            rgb = load_image_as_rgb(image)
            result = segmenter(rgb, text=expression)[0]
        except (MagNetImageError, ValueError, TypeError, OSError) as error:
            message = str(error)
            if shown_name and isinstance(image, str):  # the user knows the upload by its name, not the server's copy
                message = message.replace(image, shown_name)
            raise gr.Error(f"Could not segment this input: {message}") from None
        overlay = overlay_mask(rgb, result["mask"], f"{expression} ({result['score']:.2f})")
        return overlay, result["mask"], round(float(result["score"]), 4)

    return segment


def build_app(model: str | None = None, device: str | None = None, examples_folder: Path | None = None):
    """
    The Gradio page over `model` (a saved MagNet folder or Hub id; `None` for the embedded demo model).

    Raises:
        SegmentationCommandError, DemoModelMissingError: `model` cannot be loaded.
    """
    import gradio as gr

    segmenter = load_segmenter(model, device=device)
    size = segmenter.image_processor.size
    image_size = int(size["height"] if isinstance(size, dict) else size.height)
    if examples_folder is None:
        examples_folder = Path(tempfile.mkdtemp(prefix="magnet-app-examples-"))
        atexit.register(shutil.rmtree, examples_folder, ignore_errors=True)
    examples = write_examples(image_size, examples_folder)
    if model is None:
        model_note = (
            f"**Model:** {DEMO_MODEL_NOTE}; it says nothing useful about photographs. Start the app with "
            "`--model` and a converted released checkpoint for real images."
        )
    else:
        model_note = f"**Model:** `{model}`."

    with gr.Blocks(title="MagNet referring image segmentation", analytics_enabled=False) as app:
        gr.Markdown(
            "# MagNet: referring image segmentation\n"
            "Upload an image, describe one object in it and press **Segment**: the mask of the object the expression "
            "refers to comes back at the image's size, with its score (the mean mask probability).\n\n" + model_note,
            elem_id="model-note",
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="pil", image_mode="RGB", sources=["upload", "clipboard"], elem_id="image")
                text = gr.Textbox(label="Expression", placeholder="the small red circle", max_lines=2, elem_id="expression")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="overlay")
                mask = gr.Image(label="Mask", type="pil", format="png", image_mode="L", interactive=False, elem_id="mask")
                score = gr.Number(label="Score", precision=4, interactive=False, elem_id="score")
        gr.Examples(examples, inputs=[image, text], cache_examples=False, label="Synthetic scenes (unseen by the demo model)")
        segment = make_segment_function(segmenter)
        for trigger, visibility in ((button.click, "public"), (text.submit, "private")):
            trigger(
                segment,
                inputs=[image, text],
                outputs=[overlay, mask, score],
                preprocess=False,
                api_name="segment" if visibility == "public" else None,
                api_visibility=visibility,
            )
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Serve MagNet referring image segmentation as a Gradio page (API endpoint /segment)."
    )
    parser.add_argument("--model", help="saved MagNet folder or Hub id (default: the embedded demo model)")
    # Spaces tell the app where to listen through these variables.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on")
    parser.add_argument(
        "--port", type=checked_number(int, minimum=1), default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="port (default 7860)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: the first GPU if any)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Starts the server and blocks until it is stopped; returns 2 with a one-line `error:` for bad arguments."""
    args = build_parser().parse_args(argv)
    if args.port > 65535:
        print(f"error: --port {args.port} is not a TCP port (1-65535).", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('error: the app needs Gradio; install the app extra: pip install -e ".[app]"', file=sys.stderr)
        return 2
    try:
        app = build_app(args.model, device=args.device)
    except (SegmentationCommandError, DemoModelMissingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        app.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size=MAX_UPLOAD_SIZE)
    except OSError as error:  # the port is taken or the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
