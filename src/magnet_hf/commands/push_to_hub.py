# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/push_to_hub.py`: a MagNet folder published on the Hub, or written as the folder a push would upload
(`magnet_hf.hub.publishing`)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import exit_status
from .arguments import build_parser, option, parse_dataclasses


@dataclasses.dataclass
class PushArguments:
    model: str = option(help="saved MagNet folder (model + processor)")
    repo: str = option(help="Hub repository id, owner/name")
    card: str | None = option(
        None, "model card (default: the model folder's README.md, else a basic card with the metrics of its "
        "eval_results.json); see model_cards/",
    )  # fmt: skip
    private: bool = option(False, "create the repository as private")
    token: str | None = option(None, "Hub token (default: the logged-in user's)")
    local_dir: str | None = option(None, "write what would be uploaded to this new folder; upload nothing")
    overwrite: bool = option(False, "replace an existing --local-dir")
    verbose: bool = option(False, "show every progress bar of transformers")


def parser():
    return build_parser(
        PushArguments,
        prog="push_to_hub.py",
        description="Publish a MagNet folder on the Hub: the model, its processor, the remote code, the "
        "referring-image-segmentation pipeline and the model card, in one commit. With --local-dir, write exactly "
        "that folder instead of uploading.",
    )


def _push(args: PushArguments) -> int:
    from ..hub.publishing import HubPublishError, basic_card_notice, build_hub_folder, push_folder_to_hub, validate_repo_id

    validate_repo_id(args.repo)
    notice = basic_card_notice(args.model, args.card) if Path(args.model).expanduser().is_dir() else None
    if args.local_dir:
        folder = build_hub_folder(args.model, args.local_dir, card=args.card, overwrite=args.overwrite, repo_id=args.repo)
        if notice:
            print(notice)
        print(f"Wrote the files for {args.repo} to {folder} ({len(list(folder.iterdir()))} files); nothing uploaded.")
        return exit_status.OK
    try:
        url = push_folder_to_hub(args.model, args.repo, card=args.card, private=args.private, token=args.token)
    except HubPublishError:
        raise
    except Exception as error:  # network, authentication and permission errors come in many types
        exit_status.error(f"uploading to {args.repo} failed: {error}")
        return exit_status.UPLOAD_FAILED
    if notice:
        print(notice)
    print(f"Pushed {args.model} to {args.repo}: {url}")
    return exit_status.OK


@exit_status.guard_resources
def main(argv: Sequence[str] | None = None) -> int:
    """Runs the push command; returns the exit status (`exit_status`: 0 success, 2 bad input, 3 upload failed)."""
    from ..hub.publishing import HubPublishError
    from ..progress import command_progress

    (args,) = parse_dataclasses(parser(), [PushArguments], argv)
    try:
        with command_progress(args.verbose):
            return _push(args)
    except HubPublishError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
