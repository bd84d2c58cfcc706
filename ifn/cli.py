"""The ``ifn`` command: LightningCLI (``fit``/``validate``/``test``/``predict``) plus ``facemodel``.

``ifn facemodel convert ict <zip-or-folder> -o <file>.npz`` imports ICT-FaceKit;
``ifn facemodel info <file-or-name>`` prints a face model's summary as JSON (see
:mod:`ifn.facemodel.cli`, which also converts BFM and FLAME and renders sheets).
Everything else is handed to LightningCLI (see :mod:`ifn.lightning_cli`).

Errors that are the user's to fix — a wrong option or config key (with the closest valid
one), a value refused when the classes are built (negative batch size, unknown backbone,
missing face-model file), a damaged or invalid face model, a missing, unreadable or corrupt
checkpoint, or one trained with another face model or other model settings — are printed
as one line on stderr, ``ifn: error: <file or option>: <problem>``, with exit status 2 and
no traceback.

Debug switch: with the environment variable ``IFN_DEBUG=1`` those errors are re-raised
instead, with their full traceback (and parser errors with jsonargparse's whole message)::

    IFN_DEBUG=1 ifn test --config configs/paper.yaml --ckpt_path broken.ckpt
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ifn.errors import UsageError, debug_enabled, one_line

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ifn`` console script.

    Errors that are the user's to fix (:class:`~ifn.errors.UsageError`) are printed as one
    line on stderr, ``ifn: error: …``, with exit status 2, instead of a traceback; with
    ``IFN_DEBUG=1`` they are re-raised.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "facemodel":
            from ifn.facemodel.cli import main as facemodel_main

            return facemodel_main(args[1:])
        if args and args[0] == "reconstruct":
            from ifn.reconstruct.cli import main as reconstruct_main

            return reconstruct_main(args[1:])
        if args and args[0] == "export":
            from ifn.models.export import main as export_main

            return export_main(args[1:])
        from ifn.lightning_cli import run_lightning_cli

        run_lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except UsageError as err:
        if debug_enabled():
            raise
        print(f"ifn: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
